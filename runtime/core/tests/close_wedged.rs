//! A store whose flush can never finish still closes within its bound.
//!
//! sled 0.34.7 keeps the log buffer a write had reserved when the write's
//! blob file cannot be created (here: the blobs directory turned into a
//! file; in the benches: the data directory removed before the store
//! closed), and every flush after it waits forever, holding sled's
//! process-wide lock. That is why this test has a binary of its own.

mod common;

use common::within;
use projector_core::store::{Error, Store};
use std::time::{Duration, Instant};

#[test]
fn a_store_whose_flush_never_finishes_closes_within_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let code = store.tree("plugin-code").expect("code tree");
    // Over 128 KiB: sled writes it to a file of its own.
    code.insert("v1", vec![1; 200_000]).expect("a blob");
    store.flush().expect("flushed");
    let blobs = dir.path().join("blobs");
    std::fs::remove_dir_all(&blobs).expect("no blobs directory");
    std::fs::write(&blobs, b"not a directory").expect("a file instead");
    assert!(code.insert("v2", vec![2; 200_000]).is_err());

    let bound = Duration::from_secs(2);
    let closed = within("closing the wedged store", Duration::from_secs(20), || {
        let started = Instant::now();
        let closed = store.close_within(bound);
        (closed, started.elapsed())
    });
    assert!(
        matches!(&closed.0, Err(Error::Unflushed { what, .. }) if what == "closing"),
        "{:?}",
        closed.0
    );
    // The materializer's stop and the flush, each within the bound.
    assert!(
        closed.1 < 2 * bound + Duration::from_secs(1),
        "{:?}",
        closed.1
    );
    // Left open, not dropped: the last handle of a tree goes at once, and
    // the database stays held until the process ends.
    within(
        "dropping a tree of the wedged store",
        Duration::from_secs(20),
        || drop(code),
    );
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
}
