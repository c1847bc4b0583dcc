//! The embedded durable event log: sled-backed, partitioned by a stable
//! hash of the event key, with dense ordered offsets per partition.
//!
//! Appends are validated (every record must decode) and flushed before
//! they are acknowledged, so an acknowledged event survives a crash. The
//! partition count is fixed when the log is created; opening it with
//! another count is an error rather than a silent re-partitioning.

use crate::engine::Record;
use crate::envelope::{self, DecodeError, Format};
use crate::store::Store;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("log: {0}")]
    Sled(#[from] sled::Error),
    #[error("log: record {index} of the append is not an event: {error}")]
    Decode { index: usize, error: DecodeError },
    #[error("log: created with {stored} partitions, configured with {configured}")]
    Partitions { stored: u32, configured: u32 },
    #[error("log: partitions must be between 1 and 4096, got {0}")]
    BadPartitions(u32),
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

pub struct EmbeddedLog {
    tree: sled::Tree,
    partitions: u32,
    format: Format,
    /// Next offset per partition; the lock also orders appends.
    ends: Mutex<Vec<u64>>,
    appended: Condvar,
}

const META_PARTITIONS: &[u8] = b"meta/partitions";

fn record_key(partition: u32, offset: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'r';
    k[1..5].copy_from_slice(&partition.to_be_bytes());
    k[5..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// FNV-1a: a hash that stays the same across builds and platforms, so a
/// key keeps its partition.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

impl EmbeddedLog {
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
        let mut ends = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let last = tree
                .range(record_key(p, 0)..=record_key(p, u64::MAX))
                .next_back()
                .transpose()?;
            ends.push(match last {
                Some((k, _)) => u64::from_be_bytes(k[5..13].try_into().unwrap_or([0; 8])) + 1,
                None => 0,
            });
        }
        Ok(EmbeddedLog {
            tree,
            partitions,
            format,
            ends: Mutex::new(ends),
            appended: Condvar::new(),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Append records durably. Every record must decode; otherwise nothing
    /// is appended and the error names the first bad one.
    pub fn append<V: AsRef<[u8]>>(&self, values: &[V]) -> Result<Vec<Position>, Error> {
        let mut parts = Vec::with_capacity(values.len());
        for (index, v) in values.iter().enumerate() {
            let event = envelope::decode(self.format, None, v.as_ref())
                .map_err(|error| Error::Decode { index, error })?;
            parts.push(partition_of(&event.key, self.partitions));
        }
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut positions = Vec::with_capacity(values.len());
        let mut next = ends.clone();
        for (v, p) in values.iter().zip(parts) {
            let offset = next[p as usize];
            next[p as usize] += 1;
            batch.insert(&record_key(p, offset), v.as_ref());
            positions.push(Position {
                partition: p,
                offset,
            });
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        *ends = next;
        drop(ends);
        self.appended.notify_all();
        Ok(positions)
    }

    /// Up to `max` records of `partition` from offset `from` on.
    pub fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, Error> {
        let mut out = Vec::with_capacity(max.min(4096));
        for item in self
            .tree
            .range(record_key(partition, from)..=record_key(partition, u64::MAX))
            .take(max)
        {
            let (k, v) = item?;
            out.push(Record {
                partition,
                offset: u64::from_be_bytes(k[5..13].try_into().unwrap_or([0; 8])),
                key: None,
                value: v.to_vec(),
            });
        }
        Ok(out)
    }

    /// The next offset to be written in each partition.
    pub fn ends(&self) -> Vec<u64> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until something is appended, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.appended.wait_timeout(ends, timeout);
    }
}
