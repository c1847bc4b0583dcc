//! The fold, on a native plugin and a temporary store: no `.wasm` needed.

use super::*;
use projector_host::native::NativePlugin;

fn open(dir: &std::path::Path) -> Engine {
    open_with(dir, None)
}

/// An engine with its one plugin, "inbox", under `policy` if given.
fn open_with(dir: &std::path::Path, policy: Option<Policy>) -> Engine {
    open_committing(dir, policy, Duration::ZERO)
}

/// [`open_with`], committing at most every `interval`.
fn open_committing(dir: &std::path::Path, policy: Option<Policy>, interval: Duration) -> Engine {
    let store = Store::open(dir).expect("store");
    let mut engine = Engine::new(store, Format::Auto, 1, interval);
    if let Some(policy) = policy {
        engine.set_policy("inbox", policy);
    }
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
    sent_at(id, version, conv, sender, to, T0)
}

/// 2026-01-01T00:00:00Z, the time of `sent`'s events.
const T0: i64 = 1_767_225_600_000;

fn sent_at(id: &str, version: u64, conv: &str, sender: &str, to: &str, time_ms: i64) -> String {
    serde_json::json!({
        "id": id, "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": version, "time": time_ms,
        "payload": {"site_id": "s1", "conversation_id": conv,
                    "sender_id": sender, "participants": [sender, to]},
    })
    .to_string()
}

fn unread(engine: &Engine, key: &str) -> Vec<String> {
    unread_at(engine, key, 0)
}

fn unread_at(engine: &Engine, key: &str, at_ms: i64) -> Vec<String> {
    let view = engine
        .read("inbox", key, at_ms)
        .expect("read")
        .expect("a view");
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

/// A view with a time to live reads as absent from the millisecond it
/// expires, an event after that starts a new view, and the sweep deletes
/// what expired, page by page.
#[test]
fn an_expired_view_is_absent_at_once_restarted_by_a_new_event_and_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = Policy {
        retry: RetryConfig::default(),
        breaker: BreakerConfig::default(),
        ttl_ms: Some(60_000),
        history: None,
        record_fetches: None,
    };
    let engine = open_with(dir.path(), Some(policy));
    let p = engine.projection("inbox").expect("loaded");
    assert_eq!(p.ttl_ms(), Some(60_000));
    engine
        .process("log", 0, &[record(0, &sent("e1", 1, "c1", "u1", "u2"))])
        .expect("process");
    let read = |at: i64| engine.read("inbox", "u2:s1", at).expect("read");
    assert!(read(T0 + 59_999).is_some(), "one ms before expiry");
    assert!(read(T0 + 60_000).is_none(), "expired at T0 + ttl");
    assert!(read(T0 + 60_001).is_none());
    assert_eq!(p.expired_reads(), 2);
    // Nothing expired yet at T0 + 30 s: the sweep deletes nothing.
    let sweep = engine.sweep_expired(T0 + 30_000, 10).expect("sweep");
    assert_eq!(
        sweep,
        Sweep {
            deleted: 0,
            passed: true
        }
    );

    // A message 61 s later: u2's old view had expired, so only c2 is unread.
    let later = sent_at("e2", 2, "c2", "u3", "u2", T0 + 61_000);
    engine
        .process("log", 0, &[record(1, &later)])
        .expect("process");
    assert!(engine
        .read("inbox", "u2:s1", T0 + 61_000)
        .expect("read")
        .is_some());
    assert_eq!(unread_at(&engine, "u2:s1", T0 + 61_000), ["c2"]);

    // Swept a page of one view at a time: u1's view (from T0) goes, u2's
    // and u3's (from T0 + 61 s) stay.
    let now = T0 + 62_000;
    let mut steps = Vec::new();
    loop {
        let sweep = engine.sweep_expired(now, 1).expect("sweep");
        steps.push(sweep.deleted);
        if sweep.passed {
            break;
        }
    }
    // Three views, a page of one each, then an empty page ends the pass.
    assert_eq!(steps, [1, 0, 0, 0]);
    assert_eq!(p.expired_swept(), 1);
    let stored = |key: &str| engine.store().view("inbox", key).expect("view");
    assert!(stored("u1:s1").is_none(), "swept");
    assert!(stored("u2:s1").is_some());
    assert!(stored("u3:s1").is_some());
}

/// A snapshot never replaces a Valid view at or past its versions; it
/// does replace an older one, and any view marked Invalid.
#[test]
fn a_snapshot_keeps_a_newer_view_and_replaces_an_older_or_invalid_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .process("log", 0, &[record(0, &sent("e1", 5, "c1", "u1", "u2"))])
        .expect("process");
    let answer = |version: u64, conv: &str| {
        serde_json::json!({"conversations": [{"id": conv, "last_message_at": T0}], "version": version})
            .to_string()
    };
    let snap = |version, conv| {
        engine
            .snapshot("inbox", "u2:s1", &answer(version, conv))
            .expect("snapshot")
    };
    assert_eq!(snap(3, "old"), Snapshot::KeptNewer);
    assert_eq!(snap(5, "same"), Snapshot::KeptNewer);
    assert_eq!(unread(&engine, "u2:s1"), ["c1"]);
    assert_eq!(snap(9, "newer"), Snapshot::Stored);
    assert_eq!(unread(&engine, "u2:s1"), ["newer"]);

    assert!(engine.invalidate("inbox", "u2:s1").expect("invalidate"));
    let view = engine
        .read("inbox", "u2:s1", 0)
        .expect("read")
        .expect("view");
    assert_eq!((view.status, view.body.is_none()), (Status::Invalid, true));
    assert_eq!(
        snap(1, "healed"),
        Snapshot::Stored,
        "an Invalid view is replaced"
    );
    assert_eq!(unread(&engine, "u2:s1"), ["healed"]);
    assert!(!engine.invalidate("inbox", "nobody:s1").expect("invalidate"));
}

/// Views placed by the user part of the key: `u2…` on partition 1, every
/// other on 0; the changelog's records kept as they are spooled.
struct Placed;

impl Changelog for Placed {
    fn partition(&self, _: &str, key: &str) -> Option<u32> {
        Some(u32::from(key.starts_with("u2")))
    }

    fn owns(&self, _: u32) -> bool {
        true
    }

    fn view(
        &self,
        _: &str,
        partition: u32,
        key: &str,
        view: Option<&ViewRecord>,
        position: u64,
    ) -> Option<OutboxRecord> {
        Some(OutboxRecord {
            seq: 0,
            topic: "changelog".into(),
            partition: Some(partition as i32),
            key: Some(key.as_bytes().to_vec()),
            payload: view.map(crate::store::changelog_value),
            headers: vec![("position".into(), position.to_string())],
        })
    }

    fn offsets(&self, _: &str, partition: u32, offsets: &[(String, u64)]) -> Option<OutboxRecord> {
        Some(OutboxRecord {
            seq: 0,
            topic: "changelog".into(),
            partition: Some(partition as i32),
            key: Some(Vec::new()),
            payload: Some(serde_json::to_vec(offsets).expect("json")),
            headers: Vec::new(),
        })
    }
}

#[test]
fn an_event_naming_a_view_of_another_partition_is_dead_lettered_misrouted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_changelog(Some(Arc::new(Placed)));
    // u1 → u2: the view u2:s1 lives on partition 1, the event came on 0.
    let summary = engine
        .process("log", 0, &[record(0, &sent("e1", 1, "c1", "u1", "u2"))])
        .expect("process");
    assert_eq!(summary.total().dead_lettered, 1, "{summary:?}");
    engine.commit().expect("commit");
    let letters: Vec<DeadLetter> = engine
        .store()
        .dead_letters()
        .collect::<std::result::Result<_, _>>()
        .expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "misrouted");
    assert!(
        letters[0].error.contains("partition 1"),
        "{}",
        letters[0].error
    );
    assert!(engine.read("inbox", "u2:s1", 0).expect("read").is_none());
    // On its own partition it applies.
    let summary = engine
        .process("log", 1, &[record(0, &sent("e2", 2, "c1", "u2", "u2"))])
        .expect("process");
    assert_eq!(summary.total().dead_lettered, 0, "{summary:?}");
}

#[test]
fn a_commit_spools_each_changed_view_and_its_offsets_and_a_restore_takes_them_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_changelog(Some(Arc::new(Placed)));
    engine
        .process(
            "log",
            0,
            &[
                record(0, &sent("e1", 1, "c1", "u3", "u1")),
                record(1, &sent("e2", 2, "c2", "u3", "u1")),
            ],
        )
        .expect("process");
    engine.commit().expect("commit");
    let spooled = engine
        .store()
        .outbox(None, &Default::default(), 100)
        .expect("outbox");
    // u1:s1 and u3:s1 changed, then the offsets of partition 0.
    let keys: Vec<String> = spooled
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap_or_default()).expect("utf8"))
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(keys.last().map(String::as_str), Some(""), "{keys:?}");
    let offsets: Vec<(String, u64)> =
        serde_json::from_slice(spooled[2].payload.as_ref().expect("value")).expect("offsets");
    assert_eq!(offsets, [("log".to_string(), 2)]);
    assert!(spooled[..2]
        .iter()
        .all(|r| r.headers == [("position".to_string(), "2".to_string())]));
    // A commit that changes nothing spools nothing.
    engine.commit().expect("commit");
    assert_eq!(engine.store().outbox_count(), 3);

    // Another store takes the views and offsets back.
    let other = tempfile::tempdir().expect("tempdir");
    let restored = open(other.path());
    let keys: Vec<String> = spooled[..2]
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap_or_default()).expect("utf8"))
        .collect();
    let views: Vec<(&str, Option<&[u8]>)> = keys
        .iter()
        .zip(&spooled[..2])
        .map(|(k, r)| (k.as_str(), r.payload.as_deref()))
        .collect();
    restored.restore_views("inbox", &views).expect("views");
    // A value of another encoding is refused.
    assert!(restored
        .restore_views("inbox", &[("u9:s1", Some(&[9, 1, 2][..]))])
        .is_err());
    restored
        .restored("inbox", &[(0, offsets.clone())])
        .expect("offsets");
    assert_eq!(unread(&restored, "u1:s1"), ["c2", "c1"]);
    assert_eq!(restored.resume_offset("log", 0).expect("offset"), 2);
    assert_eq!(
        restored.partition_offsets("inbox", 0).expect("offsets"),
        offsets
    );
    // The next event applies on top, once.
    let summary = restored
        .process("log", 0, &[record(2, &sent("e3", 3, "c3", "u3", "u1"))])
        .expect("process");
    assert_eq!(summary.total().applied, 2, "{summary:?}");
    assert_eq!(unread(&restored, "u1:s1"), ["c3", "c2", "c1"]);
}

#[test]
fn a_switch_of_generations_rewrites_the_changelog_with_the_serving_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_changelog(Some(Arc::new(Placed)));
    let batch = [
        record(0, &sent("e1", 1, "c1", "u3", "u1")),
        record(1, &sent("e2", 2, "c2", "u3", "u1")),
    ];
    engine.process("log", 0, &batch).expect("process");
    engine.commit().expect("commit");
    let before = engine.store().outbox_count();
    // A second generation of the same code, built from the start.
    let code = engine.projection("inbox").expect("live").code().clone();
    let next = engine
        .new_generation_in(code, Some(Population::Eager), "inbox~2".into())
        .expect("generation");
    engine.build(&next, "log", 0, &batch).expect("build");
    engine
        .follow(&next, &[("log".into(), 0)], |_, _, _, _| Ok(Vec::new()))
        .expect("follow");
    engine.switch(&next).expect("switch");
    let spooled = engine
        .store()
        .outbox(None, &Default::default(), 100)
        .expect("outbox");
    let new: Vec<&OutboxRecord> = spooled[before..].iter().collect();
    // Both views of the new generation, then the offsets of partition 0.
    let keys: Vec<String> = new
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap_or_default()).expect("utf8"))
        .collect();
    assert_eq!(keys, ["u1:s1", "u3:s1", ""], "{keys:?}");
    assert!(new[..2].iter().all(|r| r.payload.is_some()));
}

/// [`Placed`], owning partition 0 only.
struct OwnsZero;

impl Changelog for OwnsZero {
    fn partition(&self, plugin: &str, key: &str) -> Option<u32> {
        Placed.partition(plugin, key)
    }

    fn owns(&self, partition: u32) -> bool {
        partition == 0
    }

    fn view(
        &self,
        plugin: &str,
        partition: u32,
        key: &str,
        view: Option<&ViewRecord>,
        position: u64,
    ) -> Option<OutboxRecord> {
        Placed.view(plugin, partition, key, view, position)
    }

    fn offsets(
        &self,
        plugin: &str,
        partition: u32,
        offsets: &[(String, u64)],
    ) -> Option<OutboxRecord> {
        Placed.offsets(plugin, partition, offsets)
    }
}

#[test]
fn only_the_owner_of_a_partition_writes_its_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_changelog(Some(Arc::new(OwnsZero)));
    // Views u2a:s1 and u2b:s1 live on partition 1, not owned here.
    engine
        .process("log", 1, &[record(0, &sent("e1", 1, "c1", "u2a", "u2b"))])
        .expect("process");
    engine.commit().expect("commit");
    assert_eq!(engine.store().outbox_count(), 0);
    // Partition 0's views and offsets are spooled.
    engine
        .process("log", 0, &[record(0, &sent("e2", 2, "c2", "u3", "u1"))])
        .expect("process");
    engine.commit().expect("commit");
    assert_eq!(engine.store().outbox_count(), 3);
}

#[test]
fn a_shadow_lacking_records_of_a_partition_leaves_the_live_path_until_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let p0 = [
        record(0, &sent("e1", 1, "c1", "u3", "u1")),
        record(1, &sent("e2", 2, "c2", "u3", "u1")),
    ];
    engine.process("log", 0, &p0).expect("process");
    let code = engine.projection("inbox").expect("live").code().clone();
    let next = engine
        .new_generation_in(code, Some(Population::Eager), "inbox~2".into())
        .expect("generation");
    engine.build(&next, "log", 0, &p0).expect("build");
    engine
        .follow(&next, &[("log".into(), 0)], |_, _, _, _| Ok(Vec::new()))
        .expect("follow");
    // Offsets that skip a few (compaction, transaction markers) are no gap.
    engine
        .process("log", 0, &[record(5, &sent("e3", 3, "c3", "u3", "u1"))])
        .expect("process");
    assert!(!next.is_building() && !next.take_behind());
    let shadow_has = |key: &str| engine.store().view(next.ns(), key).expect("view").is_some();
    assert!(shadow_has("u1:s1"));

    // Partition 1 moved here while the shadow was built: the live path
    // resumes where its restore left it, past everything the shadow has.
    engine
        .restored("inbox", &[(1, vec![("log".to_string(), 2)])])
        .expect("restored");
    let p1 = [
        record(0, &sent("e10", 10, "c9", "u5", "u6")),
        record(1, &sent("e11", 11, "c9", "u5", "u6")),
        record(2, &sent("e12", 12, "c8", "u5", "u7")),
    ];
    engine.process("log", 1, &p1[2..]).expect("process");
    assert!(next.is_building() && next.take_behind());
    assert!(!next.take_behind(), "one caller catches it up");
    engine.commit().expect("commit");
    assert!(!shadow_has("u7:s1"), "no view of a partition with a hole");
    // Off the live path meanwhile: a batch of partition 0 waits for the catch-up.
    engine
        .process("log", 0, &[record(6, &sent("e4", 4, "c4", "u3", "u2"))])
        .expect("process");

    // Caught up from its own offsets, it follows again.
    let mut asked = Vec::new();
    engine
        .follow(
            &next,
            &[("log".into(), 0), ("log".into(), 1)],
            |_, p, from, to| {
                asked.push((p, from, to));
                Ok(match p {
                    0 => vec![record(6, &sent("e4", 4, "c4", "u3", "u2"))],
                    _ => p1.to_vec(),
                })
            },
        )
        .expect("follow");
    assert_eq!(asked, [(0, 6, 7), (1, 0, 3)]);
    assert!(!next.is_building());
    engine.commit().expect("commit");
    for key in ["u6:s1", "u7:s1", "u2:s1"] {
        assert!(shadow_has(key), "{key}");
    }
}

/// The dead letters of `engine`'s store, committed.
fn letters(engine: &Engine) -> Vec<DeadLetter> {
    engine.commit().expect("commit");
    engine
        .store()
        .dead_letters()
        .collect::<std::result::Result<_, _>>()
        .expect("letters")
}

#[test]
fn a_redriven_dead_letter_goes_back_through_the_serving_version_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_changelog(Some(Arc::new(Placed)));
    engine
        .process("log", 0, &[record(0, &sent("e1", 1, "c1", "u1", "u2"))])
        .expect("process");
    let before = letters(&engine);
    assert_eq!(before.len(), 1, "{before:?}");
    let id = engine
        .projection("inbox")
        .expect("inbox")
        .code()
        .id()
        .to_string();
    assert_eq!(
        before[0].version.as_deref(),
        Some(id.as_str()),
        "its version"
    );
    // The cause is gone (no partitioning now): the letter is sent back.
    engine.set_changelog(None);
    for other in [
        Redrive {
            version: Some("ffff".into()),
            ..Redrive::all("inbox", 10)
        },
        Redrive {
            key: Some("u9:s1".into()),
            ..Redrive::all("inbox", 10)
        },
        Redrive {
            seqs: Some([before[0].seq + 1].into()),
            ..Redrive::all("inbox", 10)
        },
    ] {
        let none = engine.redrive(&other).expect("redrive");
        assert_eq!(none.redriven, 0, "{other:?} chose none");
    }
    let done = engine
        .redrive(&Redrive {
            version: Some(id[..8].into()),
            seqs: Some([before[0].seq].into()),
            ..Redrive::all("inbox", 10)
        })
        .expect("redrive");
    assert_eq!((done.redriven, done.seqs.clone()), (1, vec![before[0].seq]));
    assert_eq!(done.version, id);
    assert!(letters(&engine).is_empty(), "it left the dead letters");
    assert_eq!(
        engine.store().retry_count(),
        1,
        "it waits in the retry queue"
    );
    assert_eq!(engine.retry_due(now_ms()).expect("retry"), 1);
    assert_eq!(unread(&engine, "u2:s1"), ["c1"]);
    assert_eq!(engine.store().retry_count(), 0);
    assert!(letters(&engine).is_empty());
    // Nothing is left to send back.
    assert_eq!(
        engine
            .redrive(&Redrive::all("inbox", 10))
            .expect("again")
            .redriven,
        0
    );
    assert!(matches!(
        engine.redrive(&Redrive::all("nope", 10)),
        Err(Error::UnknownPlugin(_))
    ));
}

#[test]
fn a_redriven_letter_without_an_event_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let event = Record::wire(0, 7, None, sent("e1", 1, "c1", "u1", "u2").into_bytes())
        .decode(Format::Auto)
        .expect("an event");
    let mut writer = engine.store().writer();
    let letter = |key: Option<&str>, event: Option<Event>| DeadLetter {
        seq: 0,
        plugin: Some("inbox".into()),
        version: None,
        stage: "keys".into(),
        reason: "trap".into(),
        error: "boom".into(),
        source: "log".into(),
        partition: 0,
        offset: 7,
        key: key.map(Into::into),
        event,
        raw: None,
        at_ms: 0,
    };
    writer
        .dead_letter(letter(None, Some(event)))
        .expect("letter");
    writer.dead_letter(letter(None, None)).expect("letter");
    engine.store().commit(writer).expect("write");
    let done = engine.redrive(&Redrive::all("inbox", 10)).expect("redrive");
    assert_eq!(done.redriven, 1, "{done:?}");
    assert_eq!(done.skipped.len(), 1, "{done:?}");
    assert_eq!(engine.retry_due(now_ms()).expect("retry"), 1);
    assert_eq!(unread(&engine, "u2:s1"), ["c1"]);
    assert_eq!(letters(&engine).len(), 1, "the letter with no event stays");
}

/// With a history kept, a view reads as of each commit's time and
/// position; its changes are listed; a restore puts entries back.
#[test]
fn a_views_history_answers_as_of_a_time_and_a_position_and_is_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = Policy {
        retry: RetryConfig::default(),
        breaker: BreakerConfig::default(),
        ttl_ms: None,
        record_fetches: None,
        history: Some(HistoryBounds {
            versions: 10,
            ms: 86_400_000,
        }),
    };
    let engine = open_with(dir.path(), Some(policy));
    let convs = |p: &Past| -> Vec<String> {
        let answer = p.view.as_ref().and_then(|v| v.json()).expect("an answer");
        answer["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect()
    };
    let mut marks = Vec::new();
    for (i, conv) in ["c1", "c2", "c3"].iter().enumerate() {
        let e = sent(&format!("e{i}"), i as u64 + 1, conv, "u1", "u2");
        engine
            .process("log", 0, &[record(i as u64, &e)])
            .expect("process");
        engine.commit().expect("commit");
        marks.push(now_ms());
        std::thread::sleep(Duration::from_millis(3));
    }
    for (i, at) in marks.iter().enumerate() {
        let by_time = engine
            .view_as_of("inbox", "u2:s1", &AsOf::Time(*at), 0)
            .expect("as of")
            .expect("a view then");
        assert_eq!(convs(&by_time).len(), i + 1, "at {at}");
        // The position after offset i: the same change.
        let position = AsOf::Position(vec![("log".into(), 0, i as u64 + 1)]);
        let by_position = engine
            .view_as_of("inbox", "u2:s1", &position, 0)
            .expect("as of")
            .expect("a view then");
        assert_eq!(convs(&by_position), convs(&by_time));
        assert_eq!(by_position.offsets, [("log".to_string(), 0, i as u64 + 1)]);
    }
    assert!(engine
        .view_as_of("inbox", "u2:s1", &AsOf::Time(marks[0] - 10_000), 0)
        .expect("as of")
        .is_none());
    let all = engine.view_history("inbox", "u2:s1", 0).expect("history");
    assert_eq!(
        all.iter().map(|p| convs(p).len()).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // Restored elsewhere: the entries in their stored form come back.
    let entries = engine.store().history("inbox", "u2:s1").expect("entries");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = open_with(other_dir.path(), Some(policy));
    let stored: Vec<(u64, Vec<u8>)> = entries
        .iter()
        .map(|(seq, e)| (*seq, crate::store::encode_history(e)))
        .collect();
    let refs: Vec<(&str, u64, Option<&[u8]>)> = stored
        .iter()
        .map(|(seq, b)| ("u2:s1", *seq, Some(b.as_slice())))
        .collect();
    other.restore_history("inbox", &refs).expect("restore");
    let back = other
        .view_as_of("inbox", "u2:s1", &AsOf::Time(marks[1]), 0)
        .expect("as of")
        .expect("restored");
    assert_eq!(convs(&back).len(), 2);
}

#[test]
fn under_a_budget_views_changed_since_a_commit_are_committed_before_they_pass_the_unapplied_share()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = open_committing(dir.path(), None, Duration::from_secs(3600));
    engine.set_memory_budget(memory::MemoryBudget::mb(memory::MIN_MEMORY_MB));
    let share = engine.memory_budget().expect("a budget").unapplied() as usize;
    let p = engine.all()[0].clone();
    let (mut offset, mut most) = (0, 0);
    // Every event a new view: past the share long before an hour's interval.
    for _ in 0..100 {
        let batch: Vec<Record> = (0..500)
            .map(|_| {
                offset += 1;
                let to = format!("user-{offset}");
                record(offset, &sent(&format!("e{offset}"), 1, "c1", "u0", &to))
            })
            .collect();
        engine.process("log", 0, &batch).expect("process");
        most = most.max(p.dirty.lock().recover().bytes);
    }
    let commits = engine.commit_stats().commits;
    assert!(commits >= 2, "{commits} commits, {most} bytes");
    assert!(
        most <= share,
        "{most} bytes of changed views left past {share}"
    );
    assert_eq!(unread(&engine, "user-50000:s1"), ["c1"]);
}
