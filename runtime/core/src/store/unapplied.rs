//! Views committed as one record per commit, applied to their own keys
//! off the critical path.
//!
//! A commit writes the views it changed as **one** value, `w 0 seq`, in
//! the same atomic batch as the offsets, counters and the rest, so its
//! cost hardly depends on how many views changed. The record's views then
//! wait here, in memory, newest per key, until the materializer thread
//! applies them to the views' keys (`v 0 ns 0 key`) in chunks small enough
//! that sled's write lock is held for milliseconds, and removes the
//! records once every view in them is applied. When it falls behind, the
//! views of many records are merged (the newest per key wins) and each key
//! is written once.
//!
//! Reads look here before the tree. After a crash, [`recover`] applies
//! the records left over, oldest first, before the store is handed out.
//! When too many views wait, a commit waits for the materializer (the
//! pipeline slows down instead of memory growing).

use super::waiting::Index;
use super::{Error, Result, ViewRecord};
use projector_common::sync::Recover;
use rustc_hash::FxHashMap;
use sled::IVec;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Views applied per sled batch by the materializer. A batch holds
/// sled's global lock (10–20 ms for 4096 views); batches of 256 cost
/// more in all (sled's per-batch work: 38–41 % of the CPU in the kernel
/// against 15 %), and per-key inserts far more.
const CHUNK: usize = 4096;

/// Views per sled batch under a memory budget: sled keeps every copy of
/// a leaf a batch replaced until the batch ends, so a batch of 4096 held
/// about 45 MB more at its peak than batches of 512 (a replay of 900 000
/// inbox events, 128 MiB budget), at the same speed.
pub(super) const BUDGET_CHUNK: usize = 512;

/// Views that may wait before a commit waits for the materializer.
pub(super) const MAX_UNAPPLIED_VIEWS: usize = 500_000;

/// Key of the record of commit `seq`.
pub(super) fn record_key(seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'w';
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Where a view sits in a record's bytes: its key, and its value (`None`:
/// the view was removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Slot {
    key: (usize, usize),
    value: Option<(usize, usize)>,
}

/// The views of one commit, encoded as they are put: for each, a
/// big-endian u32 key length, the key, then `1`, a u32 value length and
/// the value (postcard), or `0` for a removal.
#[derive(Default)]
pub(crate) struct ViewRecordBuf {
    pub(super) bytes: Vec<u8>,
    pub(super) slots: Vec<Slot>,
}

impl ViewRecordBuf {
    /// A record with room for `bytes` bytes and `views` views.
    pub(super) fn with_capacity(bytes: usize, views: usize) -> Self {
        ViewRecordBuf {
            bytes: Vec::with_capacity(bytes),
            slots: Vec::with_capacity(views),
        }
    }

    /// Add the view of `key` (its full store key); `None` removes it.
    pub(super) fn put(&mut self, key: &[u8], record: Option<&ViewRecord>) {
        let b = &mut self.bytes;
        b.extend_from_slice(&(key.len() as u32).to_be_bytes());
        let key_at = b.len();
        b.extend_from_slice(key);
        let value = record.map(|record| {
            b.push(1);
            let len_at = b.len();
            b.extend_from_slice(&[0; 4]);
            let bytes = std::mem::take(b);
            *b = super::encode_view(record, bytes);
            let len = b.len() - len_at - 4;
            b[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
            (len_at + 4, len)
        });
        if value.is_none() {
            b.push(0);
        }
        self.slots.push(Slot {
            key: (key_at, key.len()),
            value,
        });
    }

    /// Put a view already in its stored form (`None`: removed).
    pub(super) fn put_encoded(&mut self, key: &[u8], stored: Option<&[u8]>) {
        let b = &mut self.bytes;
        b.extend_from_slice(&(key.len() as u32).to_be_bytes());
        let key_at = b.len();
        b.extend_from_slice(key);
        let value = stored.map(|v| {
            b.push(1);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            let at = b.len();
            b.extend_from_slice(v);
            (at, v.len())
        });
        if value.is_none() {
            b.push(0);
        }
        self.slots.push(Slot {
            key: (key_at, key.len()),
            value,
        });
    }

    /// Whether no view was put.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The slots of a stored record.
pub(super) fn parse(record: &[u8]) -> Result<Vec<Slot>> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: "view record".into(),
        reason: reason.into(),
    };
    let mut slots = Vec::new();
    let mut at = 0;
    let len_at = |at: usize| -> Result<usize> {
        record
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_be_bytes(b) as usize)
            .ok_or_else(|| corrupt("truncated length"))
    };
    while at < record.len() {
        let klen = len_at(at)?;
        let key = (at + 4, klen);
        at += 4 + klen;
        let value = match record.get(at) {
            Some(1) => {
                let vlen = len_at(at + 1)?;
                at += 5 + vlen;
                Some((at - vlen, vlen))
            }
            Some(0) => {
                at += 1;
                None
            }
            _ => return Err(corrupt("bad tag")),
        };
        if at > record.len() {
            return Err(corrupt("truncated view"));
        }
        slots.push(Slot { key, value });
    }
    Ok(slots)
}

#[derive(Default)]
struct Queue {
    /// Records written and not yet removed, oldest first.
    seqs: VecDeque<u64>,
    /// The next commit's seq.
    next: u64,
    /// Bytes of the records written and not yet removed, and each one's.
    bytes: usize,
    sizes: FxHashMap<u64, usize>,
    /// Why the materializer stopped, if it failed.
    failed: Option<String>,
    stop: bool,
    /// The materializer's thread has ended (set as it unwinds too).
    ended: bool,
}

/// What the materializer has done since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaterializerStats {
    /// Views written to their keys.
    pub applied: u64,
    /// Views not written because a newer one of the same key came first.
    pub merged: u64,
    /// Seconds spent applying.
    pub seconds: f64,
    /// Views waiting now.
    pub waiting: u64,
    /// Bytes of the commit records they wait in.
    pub waiting_bytes: u64,
    /// Commits that waited for the materializer to make room.
    pub stalls: u64,
}

/// The views committed and not yet applied, shared by the store and its
/// materializer thread.
pub(super) struct Unapplied {
    tree: sled::Tree,
    index: Index,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Serializes commits (a seq is taken and its record added in order).
    pub(super) commit: Mutex<()>,
    put: AtomicU64,
    applied: AtomicU64,
    nanos: AtomicU64,
    stalls: AtomicU64,
    /// Bytes of records that may wait before a commit waits for the
    /// materializer (`usize::MAX`: only the count of views bounds them).
    max_bytes: std::sync::atomic::AtomicUsize,
    /// Views applied per sled batch.
    chunk: std::sync::atomic::AtomicUsize,
}

impl Unapplied {
    /// The newest waiting value of `key`: `Some(None)` if it was removed,
    /// `None` if nothing waits for it.
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.index.get(key)
    }

    /// Bound the bytes of records waiting (`usize::MAX`: no bound but
    /// the count of views).
    pub(super) fn set_max_bytes(&self, bytes: usize) {
        self.max_bytes.store(bytes.max(1), Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// Apply `views` per sled batch.
    pub(super) fn set_chunk(&self, views: usize) {
        self.chunk.store(views.max(1), Ordering::Relaxed);
    }

    /// Wait until fewer than `MAX_UNAPPLIED_VIEWS` views, and fewer bytes
    /// of records than the bound, wait.
    pub(super) fn wait_for_room(&self) -> Result<()> {
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        // The index's size changes before the queue's lock is taken to
        // tell of it, so a wait here does not miss the change.
        let full = |q: &Queue| self.index.len() >= MAX_UNAPPLIED_VIEWS || q.bytes >= max_bytes;
        let mut q = self.queue.lock().recover();
        if full(&q) {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
        while full(&q) && q.failed.is_none() {
            q = self.changed.wait(q).recover();
        }
        match &q.failed {
            Some(e) => Err(materializer_failed(e)),
            None => Ok(()),
        }
    }

    /// The seq of the next commit.
    pub(super) fn next_seq(&self) -> u64 {
        let mut q = self.queue.lock().recover();
        q.next += 1;
        q.next - 1
    }

    /// Make the views of committed record `seq` visible and hand them to
    /// the materializer.
    pub(super) fn add(&self, seq: u64, record: &IVec, slots: &[Slot]) {
        self.index.add(
            seq,
            slots.iter().map(|s| {
                let key = &record[s.key.0..s.key.0 + s.key.1];
                (
                    key.into(),
                    s.value.map(|(at, len)| record.subslice(at, len)),
                )
            }),
        );
        self.put.fetch_add(slots.len() as u64, Ordering::Relaxed);
        // The seq is queued once all its views are in the index: the
        // materializer applies a commit's views whole.
        let mut q = self.queue.lock().recover();
        q.seqs.push_back(seq);
        q.bytes += record.len();
        q.sizes.insert(seq, record.len());
        drop(q);
        self.changed.notify_all();
    }

    /// Wait until every record committed so far is applied.
    pub(super) fn settle(&self) -> Result<()> {
        let mut q = self.queue.lock().recover();
        let Some(&target) = q.seqs.back() else {
            return Ok(());
        };
        while q.seqs.front().is_some_and(|s| *s <= target) && q.failed.is_none() {
            q = self.changed.wait(q).recover();
        }
        match &q.failed {
            Some(e) => Err(materializer_failed(e)),
            None => Ok(()),
        }
    }

    pub(super) fn stats(&self) -> MaterializerStats {
        let applied = self.applied.load(Ordering::Relaxed);
        let (waiting, waiting_bytes) = {
            let q = self.queue.lock().recover();
            (self.index.len() as u64, q.bytes as u64)
        };
        MaterializerStats {
            applied,
            merged: self
                .put
                .load(Ordering::Relaxed)
                .saturating_sub(applied + waiting),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            waiting,
            waiting_bytes,
            stalls: self.stalls.load(Ordering::Relaxed),
        }
    }

    /// Wait until the materializer's thread has ended, or `deadline`;
    /// whether it ended.
    fn wait_ended(&self, deadline: Instant) -> bool {
        let mut q = self.queue.lock().recover();
        while !q.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self.changed.wait_timeout(q, left).recover().0;
        }
        true
    }

    /// Apply what waits, round after round, until asked to stop and
    /// nothing waits any more.
    fn run(&self) {
        let delay = test_delay();
        loop {
            let through = {
                let mut q = self.queue.lock().recover();
                while q.seqs.is_empty() && !q.stop {
                    q = self.changed.wait(q).recover();
                }
                if let Some(delay) = delay {
                    // Fault injection: stay behind (until asked to stop).
                    let until = Instant::now() + delay;
                    while !q.stop && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        q = self.changed.wait_timeout(q, left).recover().0;
                    }
                }
                match q.seqs.back() {
                    Some(s) => *s,
                    None => return,
                }
            };
            if let Err(e) = self.round(through) {
                tracing::error!("store: applying committed views failed: {e}");
                self.queue.lock().recover().failed = Some(e.to_string());
                self.changed.notify_all();
                return;
            }
        }
    }

    /// Apply every view of records up to `through`, then remove them.
    fn round(&self, through: u64) -> Result<()> {
        let started = Instant::now();
        let mut work = self.index.through(through);
        // In key order: sled inserts neighbours cheaply.
        work.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for chunk in work.chunks(self.chunk.load(Ordering::Relaxed)) {
            apply(&self.tree, chunk.iter().map(|(k, v)| (&**k, v.as_ref())))?;
            // Applied: reads may go to the tree for these keys now, unless
            // a newer commit put them again meanwhile.
            self.index.applied(chunk.iter().map(|(k, _)| &**k), through);
            self.applied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            // Taken and let go so that a commit waiting for room sees the
            // new size (it checks it under this lock).
            drop(self.queue.lock().recover());
            self.changed.notify_all();
        }
        let mut q = self.queue.lock().recover();
        let done: Vec<u64> = q.seqs.iter().copied().filter(|s| *s <= through).collect();
        drop(q);
        let mut batch = sled::Batch::default();
        for seq in &done {
            batch.remove(&record_key(*seq));
        }
        self.tree.apply_batch(batch)?;
        q = self.queue.lock().recover();
        q.seqs.retain(|s| *s > through);
        for seq in &done {
            let size = q.sizes.remove(seq).unwrap_or(0);
            q.bytes -= size;
        }
        drop(q);
        self.changed.notify_all();
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// `PROJECTOR_MATERIALIZER_DELAY_MS`: a fault injection for the crash
/// tests, which kill the runtime while views wait to be applied. Each
/// round waits that long first.
fn test_delay() -> Option<std::time::Duration> {
    let ms = std::env::var("PROJECTOR_MATERIALIZER_DELAY_MS").ok()?;
    let ms: u64 = ms.parse().ok()?;
    tracing::warn!("store: the materializer waits {ms} ms before each round (fault injection)");
    Some(std::time::Duration::from_millis(ms))
}

fn materializer_failed(e: &str) -> Error {
    Error::Corrupt {
        what: "view records".into(),
        reason: format!("the materializer stopped: {e}"),
    }
}

/// Write views to their keys in one sled batch.
fn apply<'a>(
    tree: &sled::Tree,
    views: impl Iterator<Item = (&'a [u8], Option<&'a IVec>)>,
) -> Result<()> {
    let mut batch = sled::Batch::default();
    for (k, v) in views {
        match v {
            Some(v) => batch.insert(k, v.clone()),
            None => batch.remove(k),
        }
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Apply the records a crash left in `tree`, oldest first (the newest
/// view of each key wins), remove them, and make it durable. Returns the
/// seq the next commit takes.
fn recover(tree: &sled::Tree) -> Result<u64> {
    let mut newest: HashMap<Box<[u8]>, Option<IVec>> = HashMap::new();
    let mut records = Vec::new();
    let mut next = 0;
    for item in tree.scan_prefix([b'w', 0]) {
        let (k, record) = item?;
        let seq = k
            .get(2..10)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::Corrupt {
                what: "view record key".into(),
                reason: format!("{} bytes", k.len()),
            })?;
        for s in parse(&record)? {
            let key = &record[s.key.0..s.key.0 + s.key.1];
            let value = s.value.map(|(at, len)| record.subslice(at, len));
            newest.insert(key.into(), value);
        }
        records.push(k);
        next = seq + 1;
    }
    if records.is_empty() {
        return Ok(0);
    }
    let mut views: Vec<_> = newest.into_iter().collect();
    views.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    tracing::info!(
        records = records.len(),
        views = views.len(),
        "store: applying views committed before the last stop"
    );
    for chunk in views.chunks(CHUNK) {
        apply(tree, chunk.iter().map(|(k, v)| (&**k, v.as_ref())))?;
    }
    let mut batch = sled::Batch::default();
    for k in records {
        batch.remove(k);
    }
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(next)
}

/// The materializer of a store: started on open, stopped (after applying
/// everything that waits) when the store closes (`super::close`).
pub(super) struct Materializer {
    pub(super) shared: Arc<Unapplied>,
    thread: Option<JoinHandle<()>>,
}

impl Materializer {
    /// Apply what a crash left in `tree`, then start the thread.
    pub(super) fn start(tree: sled::Tree) -> Result<Self> {
        let next = recover(&tree)?;
        let shared = Arc::new(Unapplied {
            tree,
            index: Index::default(),
            queue: Mutex::new(Queue {
                next,
                ..Queue::default()
            }),
            changed: Condvar::new(),
            commit: Mutex::new(()),
            put: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            max_bytes: std::sync::atomic::AtomicUsize::new(usize::MAX),
            chunk: std::sync::atomic::AtomicUsize::new(CHUNK),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("projector-materializer".into())
                .spawn(move || {
                    let _ended = Ended(&shared);
                    shared.run();
                })
                .map_err(|e| Error::Corrupt {
                    what: "materializer".into(),
                    reason: format!("cannot start its thread: {e}"),
                })?
        };
        Ok(Materializer {
            shared,
            thread: Some(thread),
        })
    }

    /// Ask the thread to stop once nothing waits, and join it unless it
    /// is still at work at `deadline` (its sled batches can wait on
    /// sled's process-wide lock, held by a flush that never finishes);
    /// whether it ended. What it leaves waits in its records, applied
    /// when the store opens again.
    pub(super) fn stop(&mut self, deadline: Instant) -> bool {
        self.shared.queue.lock().recover().stop = true;
        self.shared.changed.notify_all();
        let Some(thread) = self.thread.take() else {
            return true;
        };
        if !self.shared.wait_ended(deadline) {
            // Left to end by itself: joining could wait forever.
            return false;
        }
        if thread.join().is_err() {
            tracing::error!("store: the materializer's thread panicked");
        }
        true
    }
}

/// Marks the materializer's thread ended when it returns or unwinds.
struct Ended<'a>(&'a Unapplied);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.queue.lock().recover().ended = true;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_guest::rules::View;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_parse_to_slots_inside_them_or_a_typed_error(
            bytes in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            if let Ok(slots) = parse(&bytes) {
                for s in slots {
                    prop_assert!(s.key.0 + s.key.1 <= bytes.len());
                    if let Some((at, len)) = s.value {
                        prop_assert!(at + len <= bytes.len());
                    }
                }
            }
        }
    }

    fn record(n: u64) -> ViewRecord {
        ViewRecord {
            view: View::from_snapshot(n.to_be_bytes().to_vec(), Default::default()),
            updated_ms: n as i64,
        }
    }

    #[test]
    fn a_record_parses_back_to_the_slots_it_was_built_with() {
        let mut buf = ViewRecordBuf::default();
        buf.put(b"v\0ns\0a", Some(&record(1)));
        buf.put(b"v\0ns\0b", None);
        buf.put(b"v\0ns\0", Some(&record(u64::MAX >> 1)));
        assert_eq!(parse(&buf.bytes).expect("parses"), buf.slots);
        for cut in 1..buf.bytes.len() {
            // Every truncation is refused or parses to fewer views, never panics.
            if let Ok(slots) = parse(&buf.bytes[..cut]) {
                assert!(slots.len() < 3);
            }
        }
    }
}
