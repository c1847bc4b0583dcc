//! The fold, on a native plugin and a temporary store: no `.wasm` needed.

use super::*;
use projector_host::native::NativePlugin;

fn open(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir).expect("store");
    let engine = Engine::new(store, Format::Auto, 1, Duration::ZERO);
    let code: SharedCode = Arc::new(
        NativePlugin::<inbox_unread::InboxUnread>::new(
            "inbox",
            &serde_json::json!({}),
            plugin::Limits::default(),
        )
        .expect("the native plugin starts"),
    );
    engine.add(code, Some(Population::Eager)).expect("add");
    engine
}

fn record(offset: u64, value: &str) -> Record {
    Record::wire(0, offset, None, value.as_bytes().to_vec())
}

fn sent(id: &str, version: u64, conv: &str, sender: &str, to: &str) -> String {
    serde_json::json!({
        "id": id, "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": version, "time": "2026-01-01T00:00:00Z",
        "payload": {"site_id": "s1", "conversation_id": conv,
                    "sender_id": sender, "participants": [sender, to]},
    })
    .to_string()
}

fn unread(engine: &Engine, key: &str) -> Vec<String> {
    let view = engine.read("inbox", key, 0).expect("read").expect("a view");
    assert_eq!(view.status, Status::Valid, "{key}");
    let body = view.json().expect("a body");
    body["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| c["id"].as_str().expect("an id").to_string())
        .collect()
}

#[test]
fn a_batch_folds_per_key_in_order_and_commits_with_its_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let batch = [
        record(0, &sent("e1", 1, "c1", "u1", "u2")),
        record(1, &sent("e2", 2, "c2", "u3", "u2")),
        record(2, "{not an event"),
    ];
    let summary = engine.process("log", 0, &batch).expect("process");
    assert_eq!(summary.records, 3);
    assert_eq!(summary.decode_errors, 1);
    let c = summary.total();
    assert_eq!((c.received, c.dead_lettered), (4, 0), "{c:?}");
    // Newest first: c2 was sent after c1.
    assert_eq!(unread(&engine, "u2:s1"), ["c2", "c1"]);
    assert_eq!(unread(&engine, "u1:s1"), Vec::<String>::new());
    assert_eq!(engine.resume_offset("log", 0).expect("offset"), 3);
    assert_eq!(engine.store().dead_letters().count(), 1, "the bad record");
    drop(engine);

    // Reopened: the views and the offset were committed together.
    let engine = open(dir.path());
    assert_eq!(unread(&engine, "u2:s1"), ["c2", "c1"]);
    assert_eq!(engine.resume_offset("log", 0).expect("offset"), 3);
}

#[test]
fn a_record_applied_again_is_skipped_and_an_old_batch_is_not_reapplied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let first = [record(0, &sent("e1", 5, "c1", "u1", "u2"))];
    engine.process("log", 0, &first).expect("process");
    // The same event redelivered at a later offset: same version, skipped.
    let again = [record(1, &sent("e1", 5, "c1", "u1", "u2"))];
    let c = engine.process("log", 0, &again).expect("process").total();
    assert_eq!((c.applied, c.skipped), (0, 2), "{c:?}");
    // A batch below the stored offset is not applied at all.
    let c = engine.process("log", 0, &first).expect("process").total();
    assert_eq!(c.received, 0, "{c:?}");
    assert_eq!(unread(&engine, "u2:s1"), ["c1"]);
    let counters = engine.projection("inbox").expect("loaded").counters();
    assert_eq!(counters.applied, 2, "{counters:?}");
}

/// Events re-sent after newer ones (a producer's retry, a client's second
/// POST) leave every view Valid and unchanged, across a restart too; an
/// event that was never applied and is older than the view still
/// invalidates it.
#[test]
fn a_redelivered_older_event_is_skipped_a_truly_older_one_invalidates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let events = [
        sent("e1", 10, "c1", "u1", "u2"),
        sent("e2", 20, "c2", "u3", "u2"),
        sent("e3", 30, "c3", "u4", "u2"),
    ];
    let first: Vec<Record> = (0..).zip(&events).map(|(o, e)| record(o, e)).collect();
    engine.process("log", 0, &first).expect("process");
    let before = engine
        .read("inbox", "u2:s1", 0)
        .expect("read")
        .expect("view");
    drop(engine);
    let engine = open(dir.path());

    // All three again, at later offsets: each delivery a duplicate.
    let again: Vec<Record> = (3..).zip(&events).map(|(o, e)| record(o, e)).collect();
    let c = engine.process("log", 0, &again).expect("process").total();
    assert_eq!((c.applied, c.skipped, c.invalidated), (0, 6, 0), "{c:?}");
    let after = engine
        .read("inbox", "u2:s1", 0)
        .expect("read")
        .expect("view");
    assert_eq!(after.status, Status::Valid);
    assert_eq!(after.versions, before.versions);
    assert_eq!(after.json(), before.json());
    assert_eq!(unread(&engine, "u2:s1"), ["c3", "c2", "c1"]);

    // Version 15 was never applied: disorder, the view is Invalid.
    let older = [record(6, &sent("e9", 15, "c9", "u5", "u2"))];
    let c = engine.process("log", 0, &older).expect("process").total();
    assert_eq!(c.invalidated, 1, "{c:?}");
    let view = engine
        .read("inbox", "u2:s1", 0)
        .expect("read")
        .expect("view");
    assert_eq!(view.status, Status::Invalid);
}
