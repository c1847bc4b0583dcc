//! The store's commits through the view records and the materializer.

use super::unapplied::ViewRecordBuf;
use super::*;

fn record(n: u64) -> ViewRecord {
    ViewRecord {
        view: View::from_snapshot(n.to_be_bytes().to_vec(), Default::default()),
        updated_ms: n as i64,
    }
}

fn commit_views(store: &Store, ns: &str, views: &[(&str, Option<u64>)], offset: u64) {
    let mut w = store.writer();
    for (k, n) in views {
        match n {
            Some(n) => w.put_view(ns, k, &record(*n)),
            None => w.remove_view(ns, k),
        }
    }
    w.set_offset(ns, "s", 0, offset);
    store.commit(w).expect("commit");
}

fn records_left(store: &Store) -> usize {
    store.state.scan_prefix([b'w', 0]).count()
}

#[test]
fn a_committed_view_reads_back_at_once_and_lands_on_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    commit_views(&store, "p", &[("a", Some(1)), ("b", Some(2))], 10);
    assert_eq!(store.view("p", "a").expect("read"), Some(record(1)));
    assert_eq!(store.offset("p", "s", 0).expect("offset"), Some(10));
    // After the newer commit, the newest wins whether applied or not.
    commit_views(&store, "p", &[("a", Some(3)), ("b", None)], 11);
    assert_eq!(store.view("p", "a").expect("read"), Some(record(3)));
    assert_eq!(store.view("p", "b").expect("read"), None);
    // A scan waits for the materializer: every view on its key, no record left.
    let all: Vec<_> = store.views("p").collect::<Result<_>>().expect("scan");
    assert_eq!(all, vec![("a".to_string(), record(3))]);
    assert_eq!(records_left(&store), 0);
    assert_eq!(store.materializer_stats().waiting, 0);
    let raw = store.state.get(view_key_of("p", "a")).expect("get");
    assert_eq!(raw.map(|v| decode_view(&v).expect("view")), Some(record(3)));
}

#[test]
fn records_a_crash_left_are_applied_oldest_first_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("store");
        commit_views(&store, "p", &[("a", Some(1)), ("c", Some(1))], 1);
        store.views("p").for_each(drop);
        // Two commits the materializer never saw, as if it was killed
        // before applying them: the older sets `a` and `b`, the newer
        // changes `a` and removes `c`.
        let mut older = ViewRecordBuf::default();
        older.put(&view_key_of("p", "a"), Some(&record(2)));
        older.put(&view_key_of("p", "b"), Some(&record(2)));
        let mut newer = ViewRecordBuf::default();
        newer.put(&view_key_of("p", "a"), Some(&record(3)));
        newer.put(&view_key_of("p", "c"), None);
        store
            .state
            .insert(record_key(40), older.bytes)
            .expect("older");
        store
            .state
            .insert(record_key(41), newer.bytes)
            .expect("newer");
        store.flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        records_left(&store),
        0,
        "applied and removed before open returns"
    );
    assert_eq!(store.view("p", "a").expect("a"), Some(record(3)));
    assert_eq!(store.view("p", "b").expect("b"), Some(record(2)));
    assert_eq!(store.view("p", "c").expect("c"), None);
    // The next commit's record comes after the recovered ones.
    commit_views(&store, "p", &[("d", Some(4))], 2);
    assert_eq!(store.view("p", "d").expect("d"), Some(record(4)));
}

#[test]
fn many_commits_of_few_keys_are_merged_and_a_deleted_namespace_stays_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("store");
        for n in 0..200u64 {
            let keys = [("x", Some(n)), ("y", Some(n + 1))];
            commit_views(&store, "gen", &keys, n);
            commit_views(&store, "live", &keys, n);
        }
        assert_eq!(store.view("live", "x").expect("x"), Some(record(199)));
        store.delete_ns("gen").expect("delete");
        assert_eq!(store.view("gen", "x").expect("x"), None);
        let s = store.materializer_stats();
        assert_eq!(s.applied + s.merged + s.waiting, 800, "{s:?}");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.views("gen").count(), 0);
    assert_eq!(store.view("live", "y").expect("y"), Some(record(200)));
    assert_eq!(store.offset("gen", "s", 0).expect("offset"), None);
}

/// A view's remembered versions survive the store; a view written before
/// they existed (its serde form alone) still reads, with none.
#[test]
fn recent_versions_round_trip_and_old_views_still_read() {
    let mut view = View::empty();
    view.state = Some(vec![7]);
    for (source, version) in [("a", 3), ("b", 10), ("a", 5), ("a", 9), ("b", 11)] {
        view.applied(source, version);
    }
    assert_eq!(view.recent.0.len(), 3);
    let record = ViewRecord {
        view,
        updated_ms: 42,
    };
    let bytes = encode_view(&record, Vec::new());
    assert_eq!(decode_view(&bytes).expect("decode"), record);

    let old = postcard::to_allocvec(&(&record.view, record.updated_ms)).expect("encode");
    let read = decode_view(&old).expect("an old view reads");
    assert!(read.view.recent.0.is_empty());
    assert_eq!(read.view.versions, record.view.versions);

    let mut bad = old.clone();
    bad.extend(postcard::to_allocvec(&vec![(9u32, 0u64)]).expect("encode"));
    assert!(matches!(decode_view(&bad), Err(Error::Corrupt { .. })));
}

#[test]
fn a_new_store_takes_the_log_segments_asked_and_one_that_exists_keeps_its_own() {
    let older = tempfile::tempdir().expect("tempdir");
    {
        // A store as sled's defaults made it.
        let db = sled::Config::new().path(older.path()).open().expect("sled");
        db.open_tree("state")
            .and_then(|t| t.insert(b"x", b"1"))
            .expect("insert");
        db.flush().expect("flush");
    }
    assert_eq!(open::existing_segment_size(older.path()), Some(512 << 10));
    let store = Store::open_tuned(older.path(), 1 << 20, 4 << 20).expect("opens with its own");
    assert_eq!(
        store.state.get(b"x").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    drop(store);
    assert_eq!(open::existing_segment_size(older.path()), Some(512 << 10));

    let fresh = tempfile::tempdir().expect("tempdir");
    assert_eq!(open::existing_segment_size(fresh.path()), None);
    let store = Store::open_tuned(fresh.path(), 1 << 20, 4 << 20).expect("store");
    commit_views(&store, "p", &[("a", Some(1))], 1);
    drop(store);
    assert_eq!(open::existing_segment_size(fresh.path()), Some(4 << 20));
    let store = Store::open(fresh.path()).expect("reopens at the default");
    assert_eq!(store.view("p", "a").expect("read"), Some(record(1)));
}

#[test]
fn a_store_this_process_is_still_letting_go_of_opens_once_it_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new().path(dir.path()).open().expect("sled");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(db);
    });
    let store = Store::open(dir.path()).expect("opens once the lock is let go");
    release.join().expect("released");
    commit_views(&store, "p", &[("a", Some(1))], 1);
    assert_eq!(store.view("p", "a").expect("read"), Some(record(1)));
}
