//! The version rules of seed 000 through the real Wasm inbox plugin, the
//! engine and sled: invalidation on out-of-order events, duplicates,
//! lazy dismissal, and snapshots that older events cannot disturb.

use projector_guest::rules::Status;
use projector_tests::{envelope, open_app, records};
use serde_json::json;

const SOURCE: &str = "test";

fn message(id: &str, version: u64, conv: &str, sender: &str, to: &str) -> Vec<u8> {
    envelope(
        id,
        "MessageSent",
        "s1",
        version,
        1000 + version as i64,
        json!({"site_id": "s1", "conversation_id": conv, "sender_id": sender, "participants": [sender, to]}),
    )
}

fn read(id: &str, version: u64, conv: &str, user: &str) -> Vec<u8> {
    envelope(
        id,
        "ConversationRead",
        "s1",
        version,
        1000 + version as i64,
        json!({"site_id": "s1", "conversation_id": conv, "user_id": user}),
    )
}

/// The owner's view on site s1; it must exist.
fn owner_view(engine: &projector_core::engine::Engine) -> projector_core::engine::ReadView {
    engine
        .read("inbox-unread", "owner:s1", 0)
        .expect("read")
        .expect("view")
}

/// Store the owner's view on s1 from a legacy answer at `version`.
fn snapshot_owner(engine: &projector_core::engine::Engine, version: u64, convs: &[(&str, i64)]) {
    engine
        .snapshot("inbox-unread", "owner:s1", &snapshot_answer(version, convs))
        .expect("snapshot");
}

fn snapshot_answer(version: u64, convs: &[(&str, i64)]) -> String {
    let list: Vec<_> = convs
        .iter()
        .map(|(id, t)| json!({"id": id, "last_message_at": t}))
        .collect();
    json!({"conversations": list, "version": version}).to_string()
}

#[test]
fn message_after_a_newer_read_invalidates_the_view_and_later_events_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["inbox-unread"], "");
    let engine = &app.engine;
    // The owner's view exists (a snapshot at version 0, nothing unread).
    snapshot_owner(engine, 0, &[]);

    // Seed 000, challenge 4: MessageSent (1) failed and went to retry;
    // ConversationRead (2) is applied first; then MessageSent (1) is back.
    engine
        .process(SOURCE, 0, &records(0, vec![read("e2", 2, "c1", "owner")]))
        .expect("batch");
    let v = owner_view(engine);
    assert_eq!(v.status, Status::Valid);
    assert_eq!(v.versions.get("inbox"), Some(2));

    let summary = engine
        .process(
            SOURCE,
            0,
            &records(1, vec![message("e1", 1, "c1", "visitor", "owner")]),
        )
        .expect("batch");
    assert_eq!(summary.total().invalidated, 1);
    let v = owner_view(engine);
    assert_eq!(v.status, Status::Invalid);
    assert_eq!(v.json(), None, "an Invalid view is not served");

    // Events for an Invalid view are ignored, however new.
    let summary = engine
        .process(
            SOURCE,
            0,
            &records(2, vec![message("e3", 3, "c2", "visitor", "owner")]),
        )
        .expect("batch");
    // One key is Invalid (ignored), the other absent (dismissed: lazy).
    let c = summary.total();
    assert_eq!((c.applied, c.skipped), (0, 2));
    let v = owner_view(engine);
    assert_eq!(v.status, Status::Invalid);
    assert_eq!(v.versions.get("inbox"), Some(2));

    // The next snapshot (the read path's repair) makes it Valid again.
    snapshot_owner(engine, 3, &[("c2", 1003)]);
    let v = owner_view(engine);
    assert_eq!(v.status, Status::Valid);
    assert_eq!(
        v.json(),
        Some(json!({"count": 1, "conversations": [{"id": "c2", "last_message_at": 1003}]}))
    );
}

#[test]
fn duplicates_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\npopulation = \"eager\"\n",
    );
    let engine = &app.engine;
    let m = message("e1", 1, "c1", "visitor", "owner");
    let summary = engine
        .process(SOURCE, 0, &records(0, vec![m.clone(), m.clone()]))
        .expect("batch");
    // Two view keys (sender and recipient), each applied once and skipped once.
    let c = summary.total();
    assert_eq!((c.applied, c.skipped), (2, 2));
    // The same event again in a later batch (a redelivery) is skipped too.
    let c = engine
        .process(SOURCE, 0, &records(2, vec![m]))
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.skipped), (0, 2));
    let v = owner_view(engine);
    assert_eq!(
        v.json(),
        Some(json!({"count": 1, "conversations": [{"id": "c1", "last_message_at": 1001}]}))
    );
}

#[test]
fn lazy_population_dismisses_events_for_absent_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["inbox-unread"], "");
    let engine = &app.engine;
    let c = engine
        .process(
            SOURCE,
            0,
            &records(0, vec![message("e1", 1, "c1", "visitor", "owner")]),
        )
        .expect("batch")
        .total();
    assert_eq!((c.received, c.applied, c.skipped), (2, 0, 2));
    assert!(engine
        .read("inbox-unread", "owner:s1", 0)
        .expect("read")
        .is_none());
    assert!(engine
        .read("inbox-unread", "visitor:s1", 0)
        .expect("read")
        .is_none());
}

#[test]
fn a_snapshot_is_not_disturbed_by_older_events_and_follows_newer_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["inbox-unread"], "");
    let engine = &app.engine;
    snapshot_owner(engine, 10, &[("c1", 1005)]);
    let before = owner_view(engine);

    // Events at or below the snapshot's version are already in it.
    let older = vec![
        read("e5", 5, "c1", "owner"),
        message("e10", 10, "c9", "visitor", "owner"),
    ];
    let c = engine
        .process(SOURCE, 0, &records(0, older))
        .expect("batch")
        .total();
    assert_eq!(c.invalidated, 0);
    let after = owner_view(engine);
    assert_eq!(after, before);
    assert_eq!(after.status, Status::Valid);

    // A newer event is applied on top of the snapshot.
    engine
        .process(
            SOURCE,
            0,
            &records(2, vec![message("e11", 11, "c2", "visitor", "owner")]),
        )
        .expect("batch");
    let v = owner_view(engine);
    assert_eq!(
        v.json(),
        Some(json!({"count": 2, "conversations": [
            {"id": "c2", "last_message_at": 1011}, {"id": "c1", "last_message_at": 1005}]}))
    );
}

#[test]
fn a_replayed_batch_is_not_applied_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\npopulation = \"eager\"\n",
    );
    let engine = &app.engine;
    let batch = records(
        0,
        vec![
            message("e1", 1, "c1", "visitor", "owner"),
            read("e2", 2, "c1", "owner"),
        ],
    );
    let first = engine.process(SOURCE, 0, &batch).expect("batch").total();
    assert_eq!(first.received, 3);
    // The source redelivers the same offsets (e.g. after a crash): nothing happens.
    let again = engine.process(SOURCE, 0, &batch).expect("batch").total();
    assert_eq!(again.received, 0);
    assert_eq!(engine.resume_offset(SOURCE, 0).expect("offset"), 2);
}

#[test]
fn a_rendered_answer_is_reused_until_its_view_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\npopulation = \"eager\"\n",
    );
    let engine = &app.engine;
    let first = message("e1", 1, "c1", "visitor", "owner");
    engine
        .process(SOURCE, 0, &records(0, vec![first]))
        .expect("batch");
    // The inbox's render ignores the read time: one render serves both.
    let a = owner_view(engine).body.expect("valid");
    let b = engine
        .read("inbox-unread", "owner:s1", 999_999)
        .expect("read")
        .and_then(|v| v.body)
        .expect("valid");
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "the second read renders again"
    );
    // A change to the view is seen by the very next read.
    let second = message("e2", 2, "c2", "visitor", "owner");
    engine
        .process(SOURCE, 0, &records(1, vec![second]))
        .expect("batch");
    let c = owner_view(engine);
    assert_eq!(
        c.json(),
        Some(json!({"count": 2, "conversations": [
            {"id": "c2", "last_message_at": 1002}, {"id": "c1", "last_message_at": 1001}]}))
    );
}
