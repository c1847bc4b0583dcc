//! Dead letters an operator can act on: listed by plugin, version and
//! key; sent back through a fixed version (a redrive), counted and noted
//! in the plugin's history; and a shadow that dead-letters more than the
//! serving version held from promotion until forced.

use projector_deploy::ShadowMethod;
use projector_tests::hostile::event;
use projector_tests::{component, eventually, Served};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// An event of the hostile fixture of type `kind` for key `key`.
fn typed(i: u64, kind: &str, key: &str) -> String {
    json!({"id": format!("x{i}"), "type": kind, "source": "test", "key": key,
           "version": 1_000_000 + i, "time": 1_000 + i, "payload": {}})
    .to_string()
}

fn letters(s: &Served, query: &str) -> Vec<Value> {
    let (status, body) = s.get(&format!("/v1/admin/dead-letters?{query}"));
    assert_eq!(status, 200, "{body}");
    body["dead_letters"].as_array().expect("a list").clone()
}

/// The count the hostile view of `key` shows, through the read API.
fn count(s: &Served, key: &str) -> Option<u64> {
    let (status, body) = s.get(&format!("/v1/views/hostile/{key}"));
    (status == 200).then(|| {
        body["answer"]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("a count: {body}"))
    })
}

#[test]
fn dead_letters_are_listed_by_version_and_sent_back_through_a_fixed_one() {
    let s = Served::start(&["hostile"], "");
    let v1 = s
        .app
        .engine
        .projection("hostile")
        .expect("hostile")
        .code()
        .id()
        .to_string();
    let mut events: Vec<String> = (0..50).map(event).collect();
    events.extend((0..3).map(|i| typed(i, "v1-fails", &format!("fixed{i}"))));
    events.push(typed(9, "fail", "always"));
    let token = s.ingest(&events);
    let (status, _) = s.get(&format!("/v1/views/hostile/k1?token={token}&wait_ms=30000"));
    assert_eq!(status, 200);
    eventually("four dead letters", WAIT, || {
        letters(&s, "plugin=hostile").len() == 4
    });

    // Listed by version (a prefix of it) and by key; each names its version.
    let all = letters(&s, &format!("plugin=hostile&version={}", &v1[..8]));
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().all(|l| l["version"] == json!(v1)), "{all:?}");
    assert_eq!(letters(&s, "version=ffff0000").len(), 0);
    let one = letters(&s, "plugin=hostile&key=fixed1");
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["reason"], "plugin-error", "{one:?}");
    let (status, body) = s.get("/v1/admin/dead-letters?version=xyz");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_query")),
        "{body}"
    );

    // v2 fixes v1-fails: the letters go back through it.
    let (v2_bytes, v2) = component("hostile-v2");
    s.app
        .deployer
        .deploy("hostile", &v2_bytes, "test", true)
        .expect("replace with v2");
    let (status, body) = s.send(
        Method::POST,
        "/v1/admin/dead-letters/redrive",
        json!({"plugin": "nope"}).to_string().as_str(),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_plugin")),
        "{body}"
    );
    let (status, body) = s.send(
        Method::POST,
        "/v1/admin/dead-letters/redrive",
        json!({"plugin": "hostile", "versoin": "x"})
            .to_string()
            .as_str(),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_redrive")),
        "{body}"
    );
    let (status, done) = s.send(
        Method::POST,
        "/v1/admin/dead-letters/redrive",
        json!({"plugin": "hostile", "version": &v1[..12]})
            .to_string()
            .as_str(),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["redriven"], 4, "{done}");
    assert_eq!(done["version"], json!(v2), "{done}");
    eventually("the fixed events applied", WAIT, || {
        (0..3).all(|i| count(&s, &format!("fixed{i}")) == Some(1))
    });
    // `fail` fails in v2 too: it comes back, as v2's letter.
    eventually("the failing one back", WAIT, || {
        letters(&s, "plugin=hostile").len() == 1
    });
    let back = letters(&s, "plugin=hostile");
    assert_eq!(back[0]["key"], "always", "{back:?}");
    assert_eq!(back[0]["version"], json!(v2), "{back:?}");
    assert_eq!(count(&s, "always"), None);

    // Counted, and noted in the plugin's history.
    assert_eq!(
        s.metric(
            "projector_dead_letters_redriven_total",
            "plugin=\"hostile\""
        ),
        4.0
    );
    let (_, reg) = s.get("/v1/admin/plugins");
    let entry = reg["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["plugin"] == "hostile")
        .expect("hostile")
        .clone();
    let last = entry["history"]
        .as_array()
        .expect("history")
        .last()
        .cloned();
    let last = last.expect("a history");
    assert_eq!(last["action"], "redrive", "{entry}");
    assert_eq!(last["id"], json!(v2), "{entry}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("4 dead letters sent back through")),
        "{last}"
    );
}

#[test]
fn a_shadow_that_dead_letters_more_is_held_until_forced() {
    let s = Served::start(&["hostile"], "");
    let token = s.ingest(&(0..200).map(event).collect::<Vec<_>>());
    let (status, _) = s.get(&format!("/v1/views/hostile/k1?token={token}&wait_ms=30000"));
    assert_eq!(status, 200);

    // The broken build traps on every event it is given.
    let (broken, _) = component("hostile-broken");
    s.app
        .deployer
        .deploy_shadow("hostile", &broken, "test", ShadowMethod::Rebuild, false)
        .expect("shadow");
    eventually("the shadow following", WAIT, || {
        s.app
            .deployer
            .shadow("hostile")
            .is_some_and(|st| st.phase == "following")
    });
    let st = s.app.deployer.shadow("hostile").expect("a shadow");
    let why = st.held.expect("held");
    assert!(why.contains("of its deliveries (200 of 200)"), "{why}");
    let path = "/v1/admin/plugins/hostile/promote";
    let (status, body) = s.post(path, "");
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("promotion_held")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("dead-letters 100.000 %")),
        "{body}"
    );
    let (_, overview) = s.get("/v1/admin/overview");
    assert!(
        overview.to_string().contains("\"held\":\"it dead-letters"),
        "{overview}"
    );
    let (status, body) = s.post(&format!("{path}?force=true"), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "promoted", "{body}");
}
