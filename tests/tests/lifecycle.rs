//! A view's life and its rollout, as the seeds ran them: views that expire
//! (`ttl_ms`), backfill and bulk verify against the source of truth,
//! rollout rules on request attributes, and the audit of who applied what.

use projector_tests::Served;
use serde_json::json;
use std::time::{Duration, Instant};

const INBOX: &str = "inbox-unread";

/// A message from `sender` to `to` on site s1, at `time_ms`.
fn sent(id: u64, conv: &str, sender: &str, to: &str, time_ms: i64) -> String {
    json!({
        "id": format!("e{id}"), "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": id, "time": time_ms,
        "payload": {"site_id": "s1", "conversation_id": conv,
                    "sender_id": sender, "participants": [sender, to]},
    })
    .to_string()
}

/// Wait (30 s at most) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_view_past_its_ttl_is_not_served_a_millisecond_after_and_is_swept() {
    let ttl = 2_000;
    let s = Served::start(
        &[INBOX],
        &format!(
            "[engine]\nsweep_interval_ms = 100\n\
             [plugins.inbox-unread]\npopulation = \"eager\"\nttl_ms = {ttl}\n"
        ),
    );
    let (status, plugins) = s.get("/v1/plugins");
    assert_eq!(status, 200);
    assert_eq!(plugins["plugins"][0]["ttl_ms"], ttl);
    let t = projector_core::now_ms();
    let token = s.ingest(&[sent(1, "c1", "u1", "u2", t), sent(2, "c2", "u3", "u2", t)]);
    let (status, view) = s.get(&format!("/v1/views/{INBOX}/u2:s1?token={token}"));
    assert_eq!(status, 200, "{view}");
    let updated = view["view"]["updated_ms"].as_i64().expect("updated_ms");
    assert_eq!(updated, t);

    // Read at the last millisecond of its life, then at its first after.
    let at = |ms: i64| s.get(&format!("/v1/views/{INBOX}/u2:s1?at_ms={ms}"));
    let (status, body) = at(updated + ttl - 1);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["answer"]["conversations"].as_array().map(Vec::len),
        Some(2)
    );
    let (status, body) = at(updated + ttl + 1);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "view_not_found");
    let labels = format!("plugin=\"{INBOX}\"");
    assert_eq!(s.metric("projector_expired_reads_total", &labels), 1.0);

    // The sweep deletes all three views (u1, u2, u3) once they expire.
    eventually("the sweep", || {
        s.metric("projector_views_expired_total", &labels) >= 3.0
    });
    assert_eq!(s.metric("projector_views_expired_total", &labels), 3.0);
    let left = s.app.engine.store().views(INBOX).count();
    assert_eq!(left, 0, "every view swept");
    let (status, _) = s.get(&format!("/v1/views/{INBOX}/u2:s1"));
    assert_eq!(status, 404);
}
