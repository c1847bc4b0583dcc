//! The embedded durable event log: sled-backed, partitioned by a stable
//! hash of the event key, with dense ordered offsets per partition.
//!
//! Appends are validated (every record must decode) and flushed before
//! they are acknowledged, so an acknowledged event survives a crash. The
//! partition count is fixed when the log is created; opening it with
//! another count is an error rather than a silent re-partitioning.
//!
//! Records are stored in segments: one sled value per partition and
//! append call, keyed by the offset of its first record, holding the
//! records length-prefixed. A large append costs one sled write per
//! partition, and a read walks a few values instead of one per record.
//!
//! Layout 3 stores each record as its decoded event in the runtime's own
//! binary form ([`projector_core::stored`]): an event is parsed once, at
//! append, and the engine reads it back without parsing JSON. A log of
//! layout 2 (records as they were posted) keeps that layout and works as
//! before.
//!
//! Appends are idempotent by event: the log remembers the (source, id) of
//! the last records of each partition (its dedup window, [`RecentIds`],
//! rebuilt from those records when the log opens). An event posted again
//! (what a client does when its first POST timed out) is answered with the
//! position it already has and is not appended twice.

use crate::dedup::RecentIds;

use projector_common::sync::Recover;
use projector_core::envelope::{self, DecodeError, Format};
use projector_core::store::Store;
use projector_core::{stored, Encoding, Record};
use rustc_hash::FxHashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The source id of the embedded log.
pub const LOG_SOURCE: &str = "log";

/// Why the embedded log failed to open, append or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed to open the log's tree.
    #[error(transparent)]
    Store(#[from] projector_core::store::Error),
    /// sled failed to read or write the log.
    #[error("log: {0}")]
    Sled(#[from] sled::Error),
    /// A record of an append is not an event; nothing was appended.
    #[error("log: record {index} of the append is not an event: {error}")]
    Decode {
        /// Position of the record in the append, from 0.
        index: usize,
        /// Why it did not decode.
        error: DecodeError,
    },
    /// The log was created with another partition count than the config's.
    #[error("log: created with {stored} partitions, configured with {configured}")]
    Partitions {
        /// Partitions the log was created with.
        stored: u32,
        /// Partitions the config asks for.
        configured: u32,
    },
    /// The configured partition count is not between 1 and 4096.
    #[error("log: partitions must be between 1 and 4096, got {0}")]
    BadPartitions(u32),
    /// A stored segment, or the layout marker, does not read back.
    #[error("log: corrupt segment: {0}")]
    Corrupt(String),
    /// The log was written in an older layout; it must be re-ingested into a new `data_dir`.
    #[error("log: {0}")]
    Format(String),
}

fn first_offset(key: &[u8]) -> u64 {
    key.get(5..13)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The records of a segment: each a big-endian u32 length, then the bytes.
fn segment_records(segment: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut out = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::Corrupt(format!("{} trailing bytes", rest.len())))?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(Error::Corrupt(format!(
                "record of {len} bytes with {} left",
                tail.len()
            )));
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(out)
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Partition the record went to, by the hash of its event key.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Where each record of the append is, in order: a duplicate's is
    /// where it was appended first.
    pub positions: Vec<Position>,
    /// Records already in the log (same source and id), not appended again.
    pub duplicates: usize,
}

/// The embedded durable event log, in the store's `log` tree.
pub struct EmbeddedLog {
    tree: sled::Tree,
    /// The store the tree is in: flushed through it (bounded).
    store: Store,
    partitions: u32,
    format: Format,
    /// How records are stored: as posted (layout 2) or decoded (layout 3).
    encoding: Encoding,
    /// Where each partition ends; the lock also orders appends.
    ends: Mutex<Ends>,
    appended: Condvar,
}

struct Ends {
    /// Next offset per partition.
    next: Vec<u64>,
    /// The ids of the last records, for idempotent appends.
    ids: RecentIds,
}

/// Records per partition whose ids an append is checked against, by default.
pub const DEFAULT_DEDUP_WINDOW: u64 = 65_536;

const META_PARTITIONS: &[u8] = b"meta/partitions";
/// Layout version of the records: 2 is segments of records as posted, 3
/// segments of decoded events.
const META_FORMAT: &[u8] = b"meta/format";
const FORMAT: u32 = 3;
const FORMAT_WIRE: u32 = 2;

/// Where retention left a partition's first record (`meta/start/<p>`):
/// its end, once every segment is gone.
fn start_key(partition: u32) -> Vec<u8> {
    let mut k = b"meta/start/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn segment_key(partition: u32, offset: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'r';
    k[1..5].copy_from_slice(&partition.to_be_bytes());
    k[5..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// FNV-1a: a hash that stays the same across builds and platforms, so a
/// key keeps its partition.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    fnv1a_partition(key.as_bytes(), partitions)
}

/// [`partition_of`] of any bytes.
pub(crate) fn fnv1a_partition(key: &[u8], partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

impl EmbeddedLog {
    /// Open (or create) the log in `store`; appends must decode as `format`.
    /// Fails on another partition count.
    pub fn open(store: &Store, partitions: u32, format: Format) -> Result<Self, Error> {
        if !(1..=4096).contains(&partitions) {
            return Err(Error::BadPartitions(partitions));
        }
        let tree = store.tree("log")?;
        match tree.get(META_PARTITIONS)? {
            Some(v) => {
                let stored = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                if stored != partitions {
                    return Err(Error::Partitions {
                        stored,
                        configured: partitions,
                    });
                }
            }
            None => {
                tree.insert(META_PARTITIONS, &partitions.to_be_bytes())?;
            }
        }
        let encoding = match tree.get(META_FORMAT)? {
            Some(v) if v.as_ref() == FORMAT.to_be_bytes() => Encoding::Stored,
            Some(v) if v.as_ref() == FORMAT_WIRE.to_be_bytes() => Encoding::Wire,
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "unknown log format {v:?}; expected {FORMAT_WIRE} or {FORMAT}"
                )))
            }
            None if tree.scan_prefix(b"r").next().is_some() => {
                return Err(Error::Format(
                    "the log was written in an older format; re-ingest it into a new data_dir"
                        .into(),
                ));
            }
            None => {
                tree.insert(META_FORMAT, &FORMAT.to_be_bytes())?;
                Encoding::Stored
            }
        };
        let mut next = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let last = tree
                .range(segment_key(p, 0)..=segment_key(p, u64::MAX))
                .next_back()
                .transpose()?;
            let end = match last {
                Some((k, v)) => first_offset(&k) + segment_records(&v)?.len() as u64,
                None => 0,
            };
            // Retention that removed every segment left none to count from.
            let start = match tree.get(start_key(p))? {
                Some(v) => u64::from_be_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| Error::Corrupt(format!("start of partition {p}")))?,
                ),
                None => 0,
            };
            next.push(end.max(start));
        }
        let log = EmbeddedLog {
            store: store.clone(),
            tree,
            partitions,
            format,
            encoding,
            ends: Mutex::new(Ends {
                next,
                ids: RecentIds::new(partitions, 0),
            }),
            appended: Condvar::new(),
        };
        log.remember_ids(DEFAULT_DEDUP_WINDOW as usize)?;
        Ok(log)
    }

    /// Remember the ids of the last `records` of each partition (0: none,
    /// appends are not checked for duplicates).
    pub fn with_dedup_window(self, records: u64) -> Result<Self, Error> {
        self.remember_ids(usize::try_from(records).unwrap_or(usize::MAX))?;
        Ok(self)
    }

    /// Rebuild the id window from the last `window` records of each partition.
    fn remember_ids(&self, window: usize) -> Result<(), Error> {
        let mut ends = self.ends.lock().recover();
        if ends.ids.window() == window && window > 0 {
            return Ok(());
        }
        let mut ids = RecentIds::new(self.partitions, window);
        for p in 0..self.partitions {
            let end = ends.next[p as usize];
            let from = end.saturating_sub(window as u64);
            for r in self.read(p, from, window)? {
                // A record that does not decode was never appended by this log.
                if let Ok(event) = r.decode(self.format) {
                    if !event.id.is_empty() {
                        let hash = ids.hash(&event.source, &event.id);
                        ids.insert(
                            hash,
                            Position {
                                partition: p,
                                offset: r.offset,
                            },
                        );
                    }
                }
            }
        }
        ends.ids = ids;
        Ok(())
    }

    /// Whether the record at `pos` has this source and id (a remembered
    /// hash is a candidate until checked).
    fn holds(&self, pos: Position, source: &str, id: &str) -> Result<bool, Error> {
        let records = self.read(pos.partition, pos.offset, 1)?;
        Ok(records.first().is_some_and(|r| {
            r.offset == pos.offset
                && r.decode(self.format)
                    .is_ok_and(|e| e.source == source && e.id == id)
        }))
    }

    /// Number of partitions, fixed when the log was created.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Append records durably. Every record must decode; otherwise nothing
    /// is appended and the error names the first bad one. Each is stored
    /// decoded (layout 3), so it is not parsed again when read. A record
    /// whose (source, id) is in the dedup window, or earlier in the same
    /// append, is answered with its first position and not appended again.
    pub fn append<V: AsRef<[u8]>>(&self, values: &[V]) -> Result<Appended, Error> {
        let mut events = Vec::with_capacity(values.len());
        for (index, v) in values.iter().enumerate() {
            let event = envelope::decode(self.format, None, v.as_ref())
                .map_err(|error| Error::Decode { index, error })?;
            events.push(event);
        }
        let mut ends = self.ends.lock().recover();
        let dedup = ends.ids.window() > 0;
        let mut segments: Vec<Vec<u8>> = vec![Vec::new(); self.partitions as usize];
        let mut positions = Vec::with_capacity(values.len());
        let mut here: FxHashMap<u64, Position> = FxHashMap::default();
        let mut remember = Vec::new();
        let mut duplicates = 0;
        let mut next = ends.next.clone();
        for (v, event) in values.iter().zip(&events) {
            let hash =
                (dedup && !event.id.is_empty()).then(|| ends.ids.hash(&event.source, &event.id));
            if let Some(hash) = hash {
                let known = match here.get(&hash) {
                    Some(pos) => Some(*pos),
                    None => match ends.ids.get(hash) {
                        Some(pos) if self.holds(pos, &event.source, &event.id)? => Some(pos),
                        _ => None,
                    },
                };
                if let Some(pos) = known {
                    positions.push(pos);
                    duplicates += 1;
                    continue;
                }
            }
            let p = partition_of(&event.key, self.partitions);
            let segment = &mut segments[p as usize];
            match self.encoding {
                Encoding::Stored => {
                    segment.extend_from_slice(&(stored::encoded_len(event) as u32).to_be_bytes());
                    stored::encode(event, segment);
                }
                Encoding::Wire => {
                    let v = v.as_ref();
                    segment.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    segment.extend_from_slice(v);
                }
            }
            let pos = Position {
                partition: p,
                offset: next[p as usize],
            };
            if let Some(hash) = hash {
                here.insert(hash, pos);
                remember.push((hash, pos));
            }
            positions.push(pos);
            next[p as usize] += 1;
        }
        let mut batch = sled::Batch::default();
        for (p, segment) in segments.into_iter().enumerate() {
            if !segment.is_empty() {
                batch.insert(&segment_key(p as u32, ends.next[p]), segment);
            }
        }
        self.tree.apply_batch(batch)?;
        self.store.flush()?;
        ends.next = next;
        for (hash, pos) in remember {
            ends.ids.insert(hash, pos);
        }
        drop(ends);
        self.appended.notify_all();
        Ok(Appended {
            positions,
            duplicates,
        })
    }

    /// Up to `max` records of `partition` from offset `from` on.
    pub fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, Error> {
        let mut out = Vec::with_capacity(max.min(4096));
        // Start at the segment holding `from`: the last one beginning at or before it.
        let start = match self
            .tree
            .range(segment_key(partition, 0)..=segment_key(partition, from))
            .next_back()
        {
            Some(item) => first_offset(&item?.0),
            None => from,
        };
        for item in self
            .tree
            .range(segment_key(partition, start)..=segment_key(partition, u64::MAX))
        {
            let (k, v) = item?;
            let first = first_offset(&k);
            for (i, value) in segment_records(&v)?.into_iter().enumerate() {
                let offset = first + i as u64;
                if offset < from {
                    continue;
                }
                if out.len() == max {
                    return Ok(out);
                }
                out.push(Record {
                    partition,
                    offset,
                    key: None,
                    value: value.to_vec(),
                    encoding: self.encoding,
                });
            }
        }
        Ok(out)
    }

    /// Delete the records of `partition` before `offset` (retention),
    /// whole segments at a time: a segment holding `offset` is kept.
    pub fn truncate_before(&self, partition: u32, offset: u64) -> Result<(), Error> {
        let mut ends = self.ends.lock().recover();
        let mut batch = sled::Batch::default();
        let mut removed_to = None;
        for item in self
            .tree
            .range(segment_key(partition, 0)..segment_key(partition, offset))
        {
            let (k, v) = item?;
            let end = first_offset(&k) + segment_records(&v)?.len() as u64;
            if end <= offset {
                batch.remove(k);
                removed_to = Some(end);
            }
        }
        if let Some(end) = removed_to {
            batch.insert(start_key(partition), &end.to_be_bytes());
            ends.ids.forget_before(partition, end);
        }
        self.tree.apply_batch(batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// The first offset still held in each partition (its end when empty):
    /// a log that starts above 0 no longer reaches back to the beginning.
    pub fn starts(&self) -> Vec<u64> {
        let ends = self.ends();
        (0..self.partitions)
            .map(|p| {
                self.tree
                    .range(segment_key(p, 0)..=segment_key(p, u64::MAX))
                    .next()
                    .and_then(|r| r.ok())
                    .map_or(ends[p as usize], |(k, _)| first_offset(&k))
            })
            .collect()
    }

    /// The next offset to be written in each partition.
    pub fn ends(&self) -> Vec<u64> {
        self.ends.lock().recover().next.clone()
    }

    /// Wait until something is appended, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let ends = self.ends.lock().recover();
        let _ = self.appended.wait_timeout(ends, timeout);
    }
}

mod source;
pub use source::LogSource;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, n: u64) -> Vec<u8> {
        format!(r#"{{"id":"{key}-{n}","type":"T","source":"s","key":"{key}","version":{n},"payload":{{}}}}"#).into_bytes()
    }

    #[test]
    fn offsets_are_dense_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let log = EmbeddedLog::open(&store, 3, Format::Auto).expect("log");
        let mut appended: Vec<(Position, Vec<u8>)> = Vec::new();
        for round in 0..5u64 {
            let values: Vec<Vec<u8>> = (0..7)
                .map(|i| event(&format!("k{i}"), round * 10 + i))
                .collect();
            let positions = log.append(&values).expect("append").positions;
            appended.extend(positions.into_iter().zip(values));
        }
        for p in 0..3 {
            let mine: Vec<&(Position, Vec<u8>)> = appended
                .iter()
                .filter(|(pos, _)| pos.partition == p)
                .collect();
            let offsets: Vec<u64> = mine.iter().map(|(pos, _)| pos.offset).collect();
            assert_eq!(
                offsets,
                (0..mine.len() as u64).collect::<Vec<_>>(),
                "dense offsets in partition {p}"
            );
            // Reads from every offset, in small pages, give the records back in order.
            for from in 0..=mine.len() as u64 {
                let mut got = Vec::new();
                let mut at = from;
                loop {
                    let page = log.read(p, at, 2).expect("read");
                    let Some(last) = page.last() else { break };
                    at = last.offset + 1;
                    got.extend(page.into_iter().map(|r| {
                        assert_eq!(r.encoding, Encoding::Stored);
                        (r.offset, r.decode(Format::Envelope).expect("stored event"))
                    }));
                }
                let want: Vec<_> = mine
                    .iter()
                    .skip(from as usize)
                    .map(|(pos, v)| {
                        (
                            pos.offset,
                            envelope::decode(Format::Auto, None, v).expect("posted event"),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "partition {p} from {from}");
            }
        }
        let ends = log.ends();
        drop(log);
        let log = EmbeddedLog::open(&store, 3, Format::Auto).expect("reopen");
        assert_eq!(log.ends(), ends);
        assert!(matches!(
            EmbeddedLog::open(&store, 4, Format::Auto),
            Err(Error::Partitions {
                stored: 3,
                configured: 4
            })
        ));
    }

    #[test]
    fn an_append_with_a_bad_record_appends_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let log = EmbeddedLog::open(&store, 2, Format::Auto).expect("log");
        let err = log
            .append(&[event("a", 1), b"{not json".to_vec()])
            .expect_err("bad record");
        assert!(matches!(err, Error::Decode { index: 1, .. }), "{err}");
        assert_eq!(log.ends(), vec![0, 0]);
    }

    #[test]
    fn a_log_of_layout_2_keeps_records_as_posted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let tree = store.tree("log").expect("tree");
        tree.insert(META_FORMAT, &FORMAT_WIRE.to_be_bytes())
            .expect("mark");
        let log = EmbeddedLog::open(&store, 1, Format::Auto).expect("log");
        let posted = vec![event("a", 1), event("b", 2)];
        log.append(&posted).expect("append");
        drop(log);
        let log = EmbeddedLog::open(&store, 1, Format::Auto).expect("reopen");
        let read = log.read(0, 0, 10).expect("read");
        assert!(read.iter().all(|r| r.encoding == Encoding::Wire));
        let values: Vec<Vec<u8>> = read.into_iter().map(|r| r.value).collect();
        assert_eq!(values, posted);
        assert_eq!(
            tree.get(META_FORMAT)
                .expect("read")
                .expect("marked")
                .as_ref(),
            FORMAT_WIRE.to_be_bytes()
        );
    }

    #[test]
    fn an_unknown_layout_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let tree = store.tree("log").expect("tree");
        tree.insert(META_FORMAT, &9u32.to_be_bytes()).expect("mark");
        let err = EmbeddedLog::open(&store, 1, Format::Auto)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }

    fn ids_remembered(log: &EmbeddedLog) -> usize {
        log.ends.lock().recover().ids.len()
    }

    /// An event posted again (a client retrying a POST that timed out) is
    /// answered with its first position and not appended twice, within
    /// one append, across appends and across a reopen.
    #[test]
    fn an_event_posted_again_is_not_appended_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let log = EmbeddedLog::open(&store, 2, Format::Auto).expect("log");
        let values: Vec<Vec<u8>> = (0..10).map(|n| event(&format!("k{n}"), n)).collect();
        let first = log.append(&values).expect("append");
        assert_eq!(first.duplicates, 0);
        let ends = log.ends();
        let again = log.append(&values).expect("append again");
        assert_eq!(again.duplicates, 10);
        assert_eq!(again.positions, first.positions);
        assert_eq!(log.ends(), ends, "nothing appended");

        // Within one append: the second copy gets the first's position.
        let twice = vec![event("x", 1), event("x", 1)];
        let a = log.append(&twice).expect("append");
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.positions[0], a.positions[1]);
        drop(log);

        let log = EmbeddedLog::open(&store, 2, Format::Auto).expect("reopen");
        assert_eq!(log.append(&values).expect("append").duplicates, 10);
        // Off: appended again.
        let log = log.with_dedup_window(0).expect("window");
        assert_eq!(log.append(&values).expect("append").duplicates, 0);
    }

    /// Only the last `dedup_window` records of a partition are remembered:
    /// older ids are forgotten, and records removed by retention take
    /// theirs along.
    #[test]
    fn the_ids_remembered_are_bounded_by_the_window_and_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let log = EmbeddedLog::open(&store, 1, Format::Auto)
            .expect("log")
            .with_dedup_window(8)
            .expect("window");
        for n in 0..40 {
            log.append(&[event("k", n)]).expect("append");
            assert!(ids_remembered(&log) <= 8, "at most the window");
        }
        assert_eq!(log.append(&[event("k", 39)]).expect("append").duplicates, 1);
        assert_eq!(log.append(&[event("k", 0)]).expect("append").duplicates, 0);
        assert_eq!(log.ends(), vec![41]);
        log.truncate_before(0, 41).expect("truncate");
        assert_eq!(ids_remembered(&log), 0, "no id outlives its record");
        drop(log);
        let log = EmbeddedLog::open(&store, 1, Format::Auto).expect("reopen");
        assert_eq!(ids_remembered(&log), 0);
        assert_eq!(log.ends(), vec![41], "offsets go on after retention");
        assert_eq!(log.append(&[event("k", 39)]).expect("append").duplicates, 0);
    }
}
