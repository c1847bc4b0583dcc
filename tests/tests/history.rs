//! Views as they were: a served runtime keeping the hostile plugin's
//! history, events in rounds with a version change in the middle; a read
//! `as_of` the time after each round, and `as_of_position` each round's
//! token, gives exactly the independent fold of the events up to that
//! round, with the version that made it; `/history` lists the changes; the
//! sweep prunes them to their bounds.

use projector_tests::{component, Served};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEYS: u64 = 10;

/// Events `from..to` (type `count`), one key after the other.
fn events(from: u64, to: u64) -> Vec<String> {
    (from..to)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "count", "source": "test",
                   "key": format!("k{}", i % KEYS), "version": i + 1, "time": 1_000 + i,
                   "payload": {}})
            .to_string()
        })
        .collect()
}

/// Each key's count after events `0..n`.
fn fold(n: u64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        *out.entry(format!("k{}", i % KEYS)).or_default() += 1;
    }
    out
}

/// Ingest `events`, wait until applied and committed; the token.
fn round(s: &Served, events: &[String]) -> String {
    let token = s.ingest(events);
    let (status, body) = s.get(&format!("/v1/views/hostile/k0?token={token}"));
    assert_eq!(status, 200, "{body}");
    // Committed (the commit interval is 100 ms).
    std::thread::sleep(Duration::from_millis(300));
    token
}

fn now_ms() -> i64 {
    projector_core::now_ms()
}

#[test]
fn as_of_reads_give_the_fold_up_to_each_time_and_position_across_a_version_change() {
    let s = Served::start(
        &["hostile"],
        "[plugins.hostile]\nhistory = { versions = 50, ms = 604800000 }\n",
    );
    let v1 = s
        .app
        .engine
        .projection("hostile")
        .expect("hostile")
        .code()
        .id()
        .to_string();
    let (same_bytes, same) = component("hostile-same");
    let before = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    // Five rounds of 40 events; the version changes before the fourth.
    let mut marks = Vec::new();
    for r in 0..5u64 {
        if r == 3 {
            let (status, body) =
                s.post("/v1/admin/plugins/hostile?replace=true", same_bytes.clone());
            assert_eq!(status, 200, "{body}");
        }
        let token = round(&s, &events(r * 40, (r + 1) * 40));
        marks.push((
            now_ms(),
            token,
            (r + 1) * 40,
            if r < 3 { &v1 } else { &same },
        ));
        std::thread::sleep(Duration::from_millis(20));
    }
    for (at, token, n, version) in &marks {
        let model = fold(*n);
        for (key, count) in &model {
            for query in [format!("as_of={at}"), format!("as_of_position={token}")] {
                let (status, body) = s.get(&format!("/v1/views/hostile/{key}?{query}"));
                assert_eq!(status, 200, "{key} {query}: {body}");
                assert_eq!(
                    body["answer"]["count"],
                    json!(count),
                    "{key} {query}: {body}"
                );
                assert!(
                    version.starts_with(body["version"].as_str().unwrap_or("-")),
                    "{key} {query}: made by {version}: {body}"
                );
                let offsets = body["offsets"].as_array().expect("offsets");
                assert!(!offsets.is_empty(), "{body}");
            }
        }
    }
    // Before the first event: no view then.
    let (status, body) = s.get(&format!("/v1/views/hostile/k0?as_of={before}"));
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("view_not_found")),
        "{body}"
    );
    // The history of one view: a change per round, counting up.
    let (status, body) = s.get("/v1/views/hostile/k3/history");
    assert_eq!(status, 200, "{body}");
    let counts: Vec<u64> = body["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["answer"]["count"].as_u64())
        .collect();
    assert_eq!(counts, [4, 8, 12, 16, 20], "{body}");
    assert_eq!(body["kept"], json!({"versions": 50, "ms": 604800000u64}));
    // A bad position, and a plugin keeping none.
    assert_eq!(s.get("/v1/views/hostile/k0?as_of_position=nonsense").0, 400);
}

#[test]
fn a_plugin_without_history_says_so_and_the_sweep_prunes_to_the_bounds() {
    let off = Served::start(&["hostile"], "");
    off.ingest(&events(0, 10));
    let (status, body) = off.get(&format!("/v1/views/hostile/k0?as_of={}", now_ms()));
    assert_eq!(
        (status, &body["error"]),
        (409, &json!("history_off")),
        "{body}"
    );
    drop(off);

    let s = Served::start(
        &["hostile"],
        "[engine]\nsweep_interval_ms = 50\n[plugins.hostile]\nhistory = { versions = 2, ms = 604800000 }\n",
    );
    for r in 0..4 {
        round(&s, &events(r * 10, (r + 1) * 10));
    }
    let changes = |s: &Served| -> Vec<Value> {
        s.get("/v1/views/hostile/k1/history").1["changes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while changes(&s).len() > 2 {
        assert!(Instant::now() < deadline, "never pruned: {:?}", changes(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    let kept: Vec<u64> = changes(&s)
        .iter()
        .filter_map(|c| c["answer"]["count"].as_u64())
        .collect();
    assert_eq!(kept, [3, 4], "the newest two");
}
