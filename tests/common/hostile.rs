//! The hostile fixture's traffic for deploy tests: events counted per
//! key, and the count and build a view shows.

use serde_json::json;

/// Event `i`: one of 500 keys (`k{i % 500}`), version `i + 1`.
pub fn event(i: u64) -> String {
    json!({"id": format!("e{i}"), "type": "count", "source": "test",
           "key": format!("k{}", i % 500), "version": i + 1, "time": 1_000 + i, "payload": {}})
    .to_string()
}

/// A view of the hostile plugin: its count and the build that rendered it.
pub fn count(app: &projector::app::App, key: &str) -> (u64, String) {
    let v = app
        .engine
        .read("hostile", key, 0)
        .expect("read")
        .and_then(|v| v.json())
        .expect("a view");
    (
        v["count"].as_u64().expect("count"),
        v["version"].as_str().expect("version").to_string(),
    )
}

/// Records the hostile plugin applied over the embedded log's partitions.
pub fn applied(app: &projector::app::App, partitions: u32) -> u64 {
    (0..partitions)
        .map(|p| app.engine.applied("hostile", "log", p).expect("applied"))
        .sum()
}

/// The hostile plugin's registry entry.
pub fn entry(app: &projector::app::App) -> projector_deploy::Entry {
    app.deployer
        .registry
        .entry("hostile")
        .expect("entry")
        .expect("some")
}

/// `projector run` in `dir` on the hostile plugin alone, its API on a
/// free loopback port, after ingesting one `print` event (key `k`).
pub fn run_printing(dir: &std::path::Path) -> crate::Projector {
    crate::write_config(dir, &["hostile"], "[http]\nlisten = \"127.0.0.1:0\"\n");
    let print =
        r#"{"id":"p1","type":"print","source":"t","key":"k","version":1,"time":1,"payload":{}}"#;
    std::fs::write(dir.join("events.ndjson"), format!("{print}\n")).expect("events");
    crate::Launch::in_dir(dir, &["run", "--ingest", "events.ndjson"]).start()
}
