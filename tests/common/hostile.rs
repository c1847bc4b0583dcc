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
