//! The HTTP read API against a real legacy source of truth (a normalized
//! in-memory inbox served on 127.0.0.1:0), with the inbox plugin.

use projector_tests::legacy::Legacy;
use projector_tests::{rendered, Served};
use reqwest::Method;
use serde_json::{json, Value};

const PLUGIN: &str = "inbox-unread";

fn served(legacy: &Legacy) -> Served {
    Served::start(&[PLUGIN], &legacy.source_config())
}

fn view_path(key: &str) -> String {
    format!("/v1/views/{PLUGIN}/{key}")
}

/// Read `key` after `token`, in `mode` or as the rollout decides.
fn read(s: &Served, key: &str, token: &str, mode: Option<&str>) -> Value {
    let mut path = format!("{}?token={token}", view_path(key));
    if let Some(m) = mode {
        path.push_str(&format!("&mode={m}"));
    }
    let (status, body) = s.get(&path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// A small inbox history: `users` users on two sites, each in a few
/// conversations with messages, reads and an archive. Returns the events.
fn history(legacy: &Legacy, users: usize, round: usize) -> Vec<String> {
    let mut events = Vec::new();
    for u in 0..users {
        let site = format!("s{}", u % 2);
        let user = format!("u{u}");
        let friend = format!("u{}", (u + 1) % users);
        let conv = format!("c{u}-{}", round % 3);
        events.push(legacy.send(&site, &conv, &friend, &[&user, &friend]));
        if (u + round).is_multiple_of(3) {
            events.push(legacy.read(&conv, &user));
        }
        if (u + round).is_multiple_of(5) {
            events.push(legacy.send(&site, &conv, &user, &[&user, &friend]));
        }
        if (u + round).is_multiple_of(7) {
            events.push(legacy.archive(&conv, true));
        }
        if (u + round).is_multiple_of(11) {
            events.push(legacy.archive(&conv, false));
        }
    }
    events
}

fn key_of(u: usize) -> String {
    format!("u{u}:s{}", u % 2)
}

fn hit_ratio(s: &Served) -> f64 {
    s.metric("projector_hit_ratio", &format!("plugin=\"{PLUGIN}\""))
}

fn counted(s: &Served, name: &str, labels: &str) -> f64 {
    s.metric(name, &format!("plugin=\"{PLUGIN}\",{labels}"))
}

#[test]
fn a_rollout_through_compare_return_source_to_projection_raises_the_hit_ratio() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let users = 60;
    let mut token = s.ingest(&history(&legacy, users, 0));

    // 0%: every read goes to the source; the projection is not consulted.
    s.rollout(PLUGIN, json!({"default": "source"}));
    for u in 0..users {
        let body = read(&s, &key_of(u), &token, None);
        assert_eq!(body["mode"], "source");
        assert_eq!(body["served_by"], "source");
    }
    assert_eq!(
        counted(&s, "projector_view_lookups_total", "result=\"hit\""),
        0.0
    );

    let mut ratios = Vec::new();
    let mut round = 1;
    for percent in [25.0, 50.0, 100.0] {
        s.rollout(
            PLUGIN,
            json!({"default": "source",
                   "rules": [{"percent": percent, "mode": "compare-return-source"}]}),
        );
        // Two passes, with new traffic between them: the first populates
        // the newly included users, the second finds their views.
        for _ in 0..2 {
            token = s.ingest(&history(&legacy, users, round));
            round += 1;
            for u in 0..users {
                let body = read(&s, &key_of(u), &token, None);
                assert_eq!(body["served_by"], "source");
                assert_eq!(rendered(&body["answer"]), legacy.unread_of(&key_of(u)));
                if let Some(c) = body.get("comparison") {
                    assert_eq!(c["equal"], true, "{}: {c}", key_of(u));
                }
            }
        }
        ratios.push(hit_ratio(&s));
    }
    assert_eq!(
        counted(&s, "projector_comparisons_total", "result=\"mismatch\""),
        0.0
    );
    assert!(counted(&s, "projector_comparisons_total", "result=\"equal\"") > 0.0);

    // Full rollout: the projection answers every read.
    s.rollout(PLUGIN, json!({"default": "projection"}));
    let source_queries = legacy.queries();
    for pass in 0..2 {
        token = s.ingest(&history(&legacy, users, round + pass));
        for u in 0..users {
            let body = read(&s, &key_of(u), &token, None);
            assert_eq!(body["mode"], "projection");
            assert_eq!(body["served_by"], "projection", "{}", key_of(u));
            assert_eq!(rendered(&body["answer"]), legacy.unread_of(&key_of(u)));
            assert_eq!(body["view"]["status"], "valid");
        }
    }
    assert_eq!(
        legacy.queries(),
        source_queries,
        "no read reached the source"
    );
    ratios.push(hit_ratio(&s));
    assert!(
        ratios.windows(2).all(|w| w[1] >= w[0]) && ratios[0] < ratios[ratios.len() - 1],
        "hit ratio over the rollout: {ratios:?}"
    );
    assert!(ratios[ratios.len() - 1] > 0.6, "{ratios:?}");
    let snapshots = s.metric("projector_snapshots_total", &format!("plugin=\"{PLUGIN}\""));
    assert_eq!(snapshots, users as f64, "one snapshot per user");
}

#[test]
fn an_invalid_view_is_repaired_by_the_next_read() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let token = s.ingest(&[legacy.send("s1", "c1", "bob", &["alice", "bob"])]);
    let key = "alice:s1";
    let first = read(&s, key, &token, Some("projection"));
    assert_eq!(first["served_by"], "source", "a lazy view starts absent");
    assert_eq!(first["populated"]["stored"], true);
    assert_eq!(first["view"]["status"], "valid");

    // Two later changes; the first one's event arrives late (a retried
    // one): older than what the view applied, so the view turns Invalid.
    let second = legacy.send("s1", "c2", "bob", &["alice", "bob"]);
    let third = legacy.send("s1", "c3", "bob", &["alice", "bob"]);
    s.ingest(&[third]);
    let token = s.ingest(&[second]);
    // Wait for it through another key, so that nothing repairs `key` yet.
    read(&s, "nobody:s9", &token, Some("compare-return-source"));
    let stored = s
        .app
        .engine
        .read(PLUGIN, key, 0)
        .expect("read")
        .expect("view");
    assert_eq!(stored.status, projector_guest::rules::Status::Invalid);

    let repaired = read(&s, key, &token, Some("projection"));
    assert_eq!(repaired["served_by"], "source");
    assert_eq!(repaired["populated"]["stored"], true);
    assert_eq!(repaired["view"]["status"], "valid");
    assert_eq!(rendered(&repaired["answer"]), legacy.unread_of(key));
    let after = read(&s, key, &token, Some("projection"));
    assert_eq!(after["served_by"], "projection");
    assert_eq!(rendered(&after["answer"]), legacy.unread_of(key));
    assert_eq!(
        counted(&s, "projector_fallbacks_total", "reason=\"invalid\""),
        1.0
    );
}

#[test]
fn a_source_outage_gives_a_clear_error_and_leaves_the_view_alone() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let token = s.ingest(&[
        legacy.send("s1", "c1", "bob", &["alice", "bob"]),
        legacy.send("s1", "c2", "carol", &["dave", "carol"]),
    ]);
    read(&s, "alice:s1", &token, Some("projection"));
    legacy.set_down(true);

    // Absent view, source down: 503 naming the source; still absent.
    let (status, body) = s.get(&format!("{}?mode=projection", view_path("dave:s1")));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "source_unavailable");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("/unread?user=dave&site=s1"), "{message}");
    assert!(message.contains("503"), "{message}");
    assert!(s
        .app
        .engine
        .read(PLUGIN, "dave:s1", 0)
        .expect("read")
        .is_none());

    // Source-mode reads fail the same way.
    let (status, body) = s.get(&format!("{}?mode=source", view_path("alice:s1")));
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("source_unavailable"))
    );

    // A Valid view still answers; the comparison is skipped, not failed.
    let (status, body) = s.get(&format!(
        "{}?mode=compare-return-projection",
        view_path("alice:s1")
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["served_by"], "projection");
    assert!(body["comparison"]["skipped"].is_string(), "{body}");
    assert_eq!(rendered(&body["answer"]), legacy.unread_of("alice:s1"));
    assert!(
        s.metric(
            "projector_source_errors_total",
            &format!("plugin=\"{PLUGIN}\"")
        ) >= 3.0
    );

    legacy.set_down(false);
    let body = read(&s, "dave:s1", &token, Some("projection"));
    assert_eq!(body["populated"]["stored"], true);
}

#[test]
fn a_mismatch_is_recorded_with_its_differences() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let token = s.ingest(&[
        legacy.send("s1", "c1", "bob", &["alice", "bob"]),
        legacy.send("s1", "c2", "carol", &["alice", "carol"]),
    ]);
    read(&s, "alice:s1", &token, Some("projection"));
    // The source changes and its event is lost: the views now disagree.
    let _lost = legacy.send("s1", "c3", "erin", &["alice", "erin"]);
    let body = read(&s, "alice:s1", &token, Some("compare-return-source"));
    assert_eq!(body["comparison"]["equal"], false);
    assert_eq!(body["served_by"], "source");
    assert_eq!(rendered(&body["answer"]), legacy.unread_of("alice:s1"));

    let (status, list) = s.get(&format!("/v1/admin/mismatches/{PLUGIN}"));
    assert_eq!(status, 200);
    let m = &list["mismatches"][0];
    assert_eq!(m["key"], "alice:s1");
    assert_eq!(m["mode"], "compare-return-source");
    let d = &m["differences"][0];
    assert_eq!(d["path"], "/conversations/c3");
    assert_eq!(d["reason"], "missing");
    assert!(d["projection"].is_null() && d["source"].is_string(), "{d}");
    assert_eq!(rendered(&m["source"]).len(), 3);
    assert_eq!(rendered(&m["projection"]).len(), 2);
    assert_eq!(
        counted(&s, "projector_mismatches_total", "reason=\"missing\""),
        1.0
    );
    assert_eq!(
        counted(&s, "projector_comparisons_total", "result=\"mismatch\""),
        1.0
    );
}

#[test]
fn a_token_read_sees_its_write_and_times_out_on_a_position_not_reached() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let t0 = s.ingest(&[legacy.send("s1", "c1", "bob", &["alice", "bob"])]);
    read(&s, "alice:s1", &t0, Some("projection"));
    for i in 0..20 {
        let token = s.ingest(&[legacy.send("s1", &format!("c{i}"), "bob", &["alice", "bob"])]);
        let body = read(&s, "alice:s1", &token, Some("projection"));
        assert_eq!(body["served_by"], "projection");
        assert_eq!(
            rendered(&body["answer"]),
            legacy.unread_of("alice:s1"),
            "the read after write {i} sees it"
        );
    }
    assert!(
        counted(
            &s,
            "projector_consistency_waits_total",
            "result=\"reached\""
        ) >= 20.0
    );
    // Staleness: every partition applied up to the end of the log, and the
    // age of the view's last change: its snapshot, taken in this test (the
    // later events carry older event times).
    let body = read(&s, "alice:s1", &t0, Some("projection"));
    let st = &body["staleness"];
    assert_eq!(
        (st["source"].as_str(), st["lag"].as_u64()),
        (Some("log"), Some(0))
    );
    assert_eq!(st["partitions"].as_array().map(Vec::len), Some(4));
    let p = st["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["end"].as_u64() > Some(0)))
        .expect("a written partition");
    assert_eq!(p["applied"], p["end"]);
    let age = st["last_event_age_ms"].as_i64().expect("age");
    assert!((0..60_000).contains(&age), "{age}");

    let started = std::time::Instant::now();
    let (status, body) = s.get(&format!(
        "{}?token=log@0:1000000&wait_ms=300&mode=projection",
        view_path("alice:s1")
    ));
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "position_not_reached");
    assert_eq!(body["wanted"], "log@0:1000000");
    assert!(body["applied_next_offsets"]["0"].is_u64(), "{body}");
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "{waited:?}"
    );
    assert_eq!(
        counted(
            &s,
            "projector_consistency_waits_total",
            "result=\"timeout\""
        ),
        1.0
    );
}

#[test]
fn percentage_rules_are_sticky_per_user_over_http() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    s.rollout(
        PLUGIN,
        json!({"default": "source", "rules": [
            {"users": ["vip"], "mode": "projection"},
            {"groups": ["beta"], "mode": "compare-return-projection"},
            {"percent": 30, "mode": "compare-return-source"}]}),
    );
    let mode_of = |user: &str, groups: Option<&str>| -> String {
        let mut request = s
            .client
            .get(format!("{}{}", s.base, view_path(&format!("{user}:s1"))));
        if let Some(g) = groups {
            request = request.header("x-groups", g);
        }
        let body: Value = serde_json::from_str(&request.send().expect("GET").text().expect("body"))
            .expect("json");
        body["mode"].as_str().expect("mode").to_string()
    };
    let users = 400;
    let first: Vec<String> = (0..users)
        .map(|u| mode_of(&format!("p{u}"), None))
        .collect();
    let again: Vec<String> = (0..users)
        .map(|u| mode_of(&format!("p{u}"), None))
        .collect();
    assert_eq!(first, again, "each user keeps its mode");
    let share = first
        .iter()
        .filter(|m| *m == "compare-return-source")
        .count() as f64
        / users as f64;
    assert!((0.22..=0.38).contains(&share), "30% rule chose {share}");
    assert_eq!(mode_of("vip", Some("beta")), "projection");
    assert_eq!(mode_of("p1", Some("x, beta")), "compare-return-projection");

    // The rollout survives as set, and DELETE returns to the config's.
    let (_, current) = s.get(&format!("/v1/admin/rollout/{PLUGIN}"));
    assert_eq!(current["from"], "runtime");
    assert_eq!(current["rollout"]["rules"][2]["percent"], 30.0);
    let (status, reset) = s.send(Method::DELETE, &format!("/v1/admin/rollout/{PLUGIN}"), "");
    assert_eq!(status, 200);
    assert_eq!(reset["from"], "config");
    assert_eq!(reset["rollout"]["default"], "source");
}

#[test]
fn every_bad_request_gets_a_4xx_that_names_the_problem() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let cases: Vec<(Method, String, &str, u16, &str, &str)> = vec![
        (Method::GET, "/v1/views/nope/a:b".into(), "", 404, "unknown_plugin", "nope"),
        (Method::GET, view_path("a%01b"), "", 400, "bad_key", "control character"),
        (Method::GET, view_path(&"k".repeat(600)), "", 400, "bad_key", "600 bytes"),
        (Method::GET, view_path("nocolon"), "", 400, "bad_key", "expected \\\":\\\""),
        (Method::GET, format!("{}?token=garbage", view_path("a:b")), "", 400, "bad_token", "no `@`"),
        (Method::GET, format!("{}?token=log@0:x", view_path("a:b")), "", 400, "bad_token", "offset"),
        (Method::GET, format!("{}?token=kafka@0:1", view_path("a:b")), "", 400, "bad_token", "kafka"),
        (Method::GET, format!("{}?token=log@99:1", view_path("a:b")), "", 400, "bad_token", "partition 99"),
        (Method::GET, format!("{}?mode=fast", view_path("a:b")), "", 400, "bad_mode", "fast"),
        (Method::GET, format!("{}?colour=red", view_path("a:b")), "", 400, "bad_query", "colour"),
        (Method::GET, format!("{}?wait_ms=999999", view_path("a:b")), "", 400, "bad_query", "wait_ms"),
        (Method::PUT, format!("/v1/admin/rollout/{PLUGIN}"),
            r#"{"rules":[{"percent":150,"mode":"projection"}]}"#, 400, "bad_rollout", "rules[0].percent"),
        (Method::PUT, format!("/v1/admin/rollout/{PLUGIN}"),
            r#"{"rules":[{"mode":"projection"}]}"#, 400, "bad_rollout", "at least one"),
        (Method::PUT, format!("/v1/admin/rollout/{PLUGIN}"),
            r#"{"rules":[{"match":[{"query":"t","values":["x"],"pattern":"y"}],"mode":"projection"}]}"#,
            400, "bad_rollout", "rules[0].match[0]: expected values or pattern, not both"),
        (Method::PUT, format!("/v1/admin/rollout/{PLUGIN}"),
            r#"{"default":"sideways"}"#, 400, "bad_rollout", "sideways"),
        (Method::PUT, format!("/v1/admin/rollout/{PLUGIN}"),
            r#"{"defualt":"source"}"#, 400, "bad_rollout", "defualt"),
        (Method::PUT, "/v1/admin/rollout/nope".into(), r#"{}"#, 404, "unknown_plugin", "nope"),
        (Method::GET, "/v1/admin/mismatches/nope".into(), "", 404, "unknown_plugin", "nope"),
        (Method::GET, format!("/v1/admin/mismatches/{PLUGIN}?limit=99999999"), "", 400, "bad_query", "limit"),
        (Method::POST, format!("/v1/admin/plugins/{PLUGIN}/compare"), "", 409, "no_shadow", "no shadow"),
        (Method::POST, format!("/v1/admin/plugins/{PLUGIN}/promote"), "", 409, "no_shadow", "no shadow"),
        (Method::POST, format!("/v1/admin/plugins/{PLUGIN}/compare?sample=0"), "", 400, "bad_query", "sample"),
        (Method::POST, format!("/v1/admin/plugins/{PLUGIN}/compare?colour=red"), "", 400, "bad_query", "colour"),
        (Method::POST, "/v1/events".into(), "", 400, "bad_event", "no events"),
        (Method::POST, "/v1/events".into(),
            "{\"id\":\"1\",\"type\":\"T\",\"source\":\"s\",\"key\":\"k\",\"version\":1,\"payload\":{}}\n{\"id\":\"2\"}",
            400, "bad_event", "event 2 (of 2)"),
        (Method::GET, "/v1/nothing".into(), "", 404, "not_found", "openapi"),
        (Method::DELETE, "/v1/events".into(), "", 405, "method_not_allowed", "method"),
    ];
    for (method, path, body, status, code, says) in cases {
        let (got, answer) = s.send(method.clone(), &path, body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(answer["error"], code, "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        let says = says.replace("\\\"", "\"");
        assert!(
            message.contains(&says),
            "{method} {path}: {message:?} lacks {says:?}"
        );
    }
    // Nothing of the rejected batch was appended.
    let (_, plugins) = s.get("/v1/plugins");
    assert_eq!(plugins["plugins"][0]["events"]["received"], 0);
    assert_eq!(s.metric("projector_ingested_total", ""), 0.0);
}

#[test]
fn health_metrics_and_the_openapi_document_are_served() {
    let legacy = Legacy::start();
    // A service configured for enrichment, a record of fetched answers
    // and a memory budget, so their metrics show too.
    let s = Served::start(
        &[PLUGIN],
        &format!(
            "[engine]\nmemory_mb = 256\n{}[plugins.{PLUGIN}]\nrecord_fetches = true\n[services.legacy]\nurl = \"http://127.0.0.1:9\"\n",
            legacy.source_config()
        ),
    );
    assert_eq!(s.get("/healthz"), (200, json!({"status": "live"})));
    let (status, ready) = s.get("/readyz");
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));

    // Traffic that moves every metric: a populating compare, an equal
    // one, a fallback, a mismatch, a source error.
    let token = s.ingest(&[legacy.send("s1", "c1", "bob", &["alice", "bob"])]);
    read(&s, "alice:s1", &token, Some("compare-return-source"));
    read(&s, "alice:s1", &token, Some("compare-return-source"));
    read(&s, "carol:s1", &token, Some("projection"));
    // Every partition applied: caught up, with its lag.
    let (status, ready) = s.get("/readyz?require=caught_up");
    assert_eq!(
        (status, &ready["caught_up"]),
        (200, &json!(true)),
        "{ready}"
    );
    let parts = ready["partitions"].as_array().expect("partitions");
    assert!(!parts.is_empty(), "{ready}");
    for p in parts {
        assert_eq!(
            (&p["lag"], &p["caught_up"]),
            (&json!(0), &json!(true)),
            "{p}"
        );
    }
    assert_eq!(s.get("/readyz?require=everything").0, 400);
    let _lost = legacy.send("s1", "c2", "bob", &["alice", "bob"]);
    read(&s, "alice:s1", &token, Some("compare-return-source"));
    legacy.set_down(true);
    assert_eq!(
        s.get(&format!("{}?mode=source", view_path("dave:s1"))).0,
        503
    );
    legacy.set_down(false);
    // The snapshot stored by the populating compare was committed.
    assert!(s.metric("projector_commits_total", "") >= 1.0);
    assert!(s.metric("projector_committed_views_total", "") >= 1.0);
    // Every metric documented in runtime/api/src/metrics.rs is exposed.
    projector_tests::assert_documented_metrics(&s, "//! | `", 12);

    // Every documented path answers (not the unknown-route fallback), and
    // the document served is the one in the repository.
    let (status, served_doc) = s.get("/openapi.json");
    assert_eq!(status, 200);
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(projector_tests::root().join("runtime/api/openapi.json"))
            .expect("openapi.json"),
    )
    .expect("valid JSON");
    assert_eq!(served_doc, file);
    for (path, ops) in file["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{plugin}", PLUGIN)
            .replace("{key}", "alice:s1")
            .replace("{file}", "app.js");
        for method in ops.as_object().expect("ops").keys() {
            let Some(method) = projector_tests::http_method(method) else {
                continue;
            };
            let (_, answer) = s.send(method.clone(), &concrete, "{}");
            assert_ne!(answer["error"], "not_found", "{method} {concrete}");
            assert_ne!(answer["error"], "method_not_allowed", "{method} {concrete}");
        }
    }
}

/// Past `[http] max_in_flight` a request is answered at once with 503 and
/// `Retry-After`; health and metrics still answer, and the room comes back
/// when the request in flight ends.
#[test]
fn a_request_past_max_in_flight_is_shed_with_retry_after() {
    let s = Served::start(&[PLUGIN], "max_in_flight = 1\n");
    let path = format!("{}?mode=projection", view_path("a:s1"));
    // The one slot is held by a read waiting for a position never reached.
    let slow = {
        let client = s.client.clone();
        let url = format!(
            "{}{}?token=log@0:1000000&wait_ms=1500&mode=projection",
            s.base,
            view_path("a:s1")
        );
        std::thread::spawn(move || loop {
            // Shed itself when a probe below held the slot: try again.
            let started = std::time::Instant::now();
            let r = client.get(&url).send().expect("slow read");
            if r.status() != 503 {
                break (
                    r.status().as_u16(),
                    started.elapsed(),
                    r.text().unwrap_or_default(),
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let shed = loop {
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .send()
            .expect("GET");
        if r.status() == 503 {
            break r;
        }
        let status = r.status();
        if std::time::Instant::now() >= deadline {
            let text = r.text().unwrap_or_default();
            panic!(
                "never shed: {status} {text}; the slow read: {:?}",
                slow.join()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        shed.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = serde_json::from_str(&shed.text().expect("body")).expect("JSON error");
    assert_eq!(body["error"], "overloaded", "{body}");
    assert_eq!(s.get("/healthz").0, 200, "health is never shed");
    assert!(s.metric("projector_http_shed_total", "") >= 1.0);
    let (waited, _, _) = slow.join().expect("slow read");
    assert_eq!(waited, 504, "the slow read ran to its own end");
    assert_ne!(s.get(&path).0, 503, "room again once it ended");
}

/// A client that trickles its request body is answered 408 `slow_client`
/// once `[http] body_timeout_ms` passes, and its connection is closed; the
/// server goes on serving others.
#[test]
fn a_body_slower_than_body_timeout_ms_is_answered_408() {
    use std::io::{Read, Write};
    let s = Served::start(&[PLUGIN], "body_timeout_ms = 300\n");
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    let started = std::time::Instant::now();
    tcp.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"id\":",
    )
    .expect("write the start");
    // Never send the rest: read until the server closes.
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .expect("the server answers and closes");
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slow_client"), "{answer}");
    assert!(
        elapsed < std::time::Duration::from_secs(8),
        "took {elapsed:?}"
    );
    let (status, _) = s.get("/healthz");
    assert_eq!(status, 200);
    // A body that arrives in time is served as before.
    let (status, body) = s.send(Method::POST, "/v1/events", "");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_event")),
        "{body}"
    );
}

/// The operator numbers over time: a sample a second per plugin, with
/// events/s, lag, hit ratio and mismatch rate, for the console's charts.
#[test]
fn the_history_keeps_a_sample_a_second_per_plugin() {
    let s = Served::start(
        &[PLUGIN],
        "[plugins.inbox-unread]\npopulation = \"eager\"\n",
    );
    let events = projector_tests::inbox_events(projector_tests::InboxShape {
        sites: 2,
        users: 10,
        events: 200,
        seed: 5,
    });
    let token = s.ingest(&events);
    let (status, _) = s.get(&format!("/v1/views/{PLUGIN}/u1:s1?token={token}"));
    assert!(status == 200 || status == 404);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (status, h) = s.get(&format!("/v1/admin/history?plugin={PLUGIN}"));
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["every_ms"], 1000);
    let samples = h["plugins"][PLUGIN].as_array().expect("samples");
    assert!(samples.len() >= 2, "{h}");
    let applied: f64 = samples
        .iter()
        .map(|x| x["applied_per_s"].as_f64().expect("rate"))
        .sum();
    assert!(applied > 0.0, "{h}");
    assert_eq!(samples.last().expect("a sample")["lag"], 0, "{h}");
    let (status, _) = s.get("/v1/admin/history?plugin=nope");
    assert_eq!(status, 404);
}

/// `/metrics` answers Prometheus text 0.0.4 unless `Accept` asks for
/// OpenMetrics; both carry the same samples, each read by its own parser.
#[test]
fn metrics_negotiate_prometheus_text_and_openmetrics_with_the_same_samples() {
    let legacy = Legacy::start();
    let s = served(&legacy);
    let token = s.ingest(&[legacy.send("s1", "c1", "bob", &["alice", "bob"])]);
    read(&s, "alice:s1", &token, Some("compare-return-source"));
    read(&s, "carol:s1", &token, Some("projection"));
    let scrape = |accept: Option<&str>| {
        let mut request = s.client.get(format!("{}/metrics", s.base));
        if let Some(a) = accept {
            request = request.header("accept", a);
        }
        let response = request.send().expect("metrics");
        let kind = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        (kind, response.text().expect("text"))
    };
    // What Prometheus sends when it prefers OpenMetrics.
    let asked = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    // Values move in the background (commits, lag): scrape until two
    // OpenMetrics answers around the text one agree.
    let (text, openmetrics) = (0..20)
        .find_map(|_| {
            let (om_kind, before) = scrape(Some(asked));
            let (text_kind, text) = scrape(None);
            let (_, after) = scrape(Some(asked));
            assert!(
                om_kind.starts_with("application/openmetrics-text; version=1.0.0"),
                "{om_kind}"
            );
            assert!(
                text_kind.starts_with("text/plain; version=0.0.4"),
                "{text_kind}"
            );
            (before == after).then_some((text, after))
        })
        .expect("a quiet moment to scrape");
    let from_text = prometheus_samples(&text);
    let from_openmetrics = openmetrics_samples(&openmetrics);
    assert!(from_text.len() >= 20, "{text}");
    assert!(
        from_text.contains_key(&(
            "projector_reads_total".into(),
            format!("mode=\"projection\",plugin=\"{PLUGIN}\",served_by=\"source\"")
        )),
        "{text}"
    );
    assert_eq!(from_text, from_openmetrics);
}

type Samples = std::collections::BTreeMap<(String, String), f64>;

/// `labels` sorted as `k="v",...`, with `le` (if any) as a number.
fn label_key(labels: impl Iterator<Item = (String, String)>) -> String {
    let mut labels: Vec<String> = labels
        .map(|(k, v)| match k.as_str() {
            "le" => format!("le=\"{}\"", v.parse::<f64>().expect("le")),
            _ => format!("{k}=\"{v}\""),
        })
        .collect();
    labels.sort();
    labels.join(",")
}

/// The samples of a Prometheus text exposition, read by `prometheus-parse`:
/// every counter is typed as one (its family named as its samples).
fn prometheus_samples(text: &str) -> Samples {
    use prometheus_parse::{Scrape, Value};
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let mut samples = Samples::new();
    for sample in scrape.samples {
        let labels = || sample.labels.iter().map(|(k, v)| (k.clone(), v.clone()));
        let value = match &sample.value {
            Value::Counter(v) | Value::Gauge(v) => *v,
            Value::Untyped(v) => {
                // Only a histogram's sum and count are not typed by their own line.
                let base = sample
                    .metric
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    text.contains(&format!("# TYPE {base} histogram")),
                    "{}",
                    sample.metric
                );
                *v
            }
            Value::Histogram(buckets) => {
                for b in buckets {
                    let le = ("le".to_string(), b.less_than.to_string());
                    let key = label_key(labels().chain(std::iter::once(le)));
                    samples.insert((format!("{}_bucket", sample.metric), key), b.count);
                }
                continue;
            }
            Value::Summary(_) => panic!("no summaries: {}", sample.metric),
        };
        if sample.metric.ends_with("_total") {
            assert!(
                matches!(sample.value, Value::Counter(_)),
                "{}",
                sample.metric
            );
        }
        samples.insert((sample.metric.clone(), label_key(labels())), value);
    }
    samples
}

/// The samples of an OpenMetrics exposition: it ends with `# EOF`, every
/// sample belongs to a declared family, and a counter's samples are named
/// `<family>_total`.
fn openmetrics_samples(text: &str) -> Samples {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut types = std::collections::HashMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = |suffix: &str, kind: &str| {
            name.strip_suffix(suffix)
                .is_some_and(|f| types.get(f).is_some_and(|k| k == kind))
        };
        assert!(
            family("_total", "counter")
                || types.get(name).is_some_and(|k| k == "gauge")
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| family(s, "histogram")),
            "{line}: no family declares it"
        );
        let pairs = labels.split(',').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_string(), v.trim_matches('"').to_string())
        });
        let value: f64 = value.parse().expect("value");
        samples.insert((name.to_string(), label_key(pairs)), value);
    }
    samples
}
