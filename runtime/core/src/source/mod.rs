//! What an event input is, seen from the engine: the [`Source`] trait
//! every input implements (the embedded log, NDJSON files and Kafka live
//! in `projector-sources`), the [`Batch`] it hands out, the [`Replay`] of
//! its retained records, the [`Router`] of reads between instances, and
//! the narrow [`SourceHost`] a source is given instead of the engine.
//!
//! The [`crate::driver`] is the one loop that drives a source; a source
//! never calls the engine's fold itself.

mod host;
mod spool;

pub use host::SourceHost;
pub use spool::Spool;

use crate::engine::{Changelog, FailureRoute};
use crate::store::RetryEntry;
use crate::Record;
use std::sync::Arc;
use std::time::Duration;

/// A partition whose records not yet applied (or, for a standby, whose
/// changelog records not yet read) are at most this many is caught up:
/// `/readyz`, the instances table and the console say so.
pub const CAUGHT_UP_RECORDS: i64 = 1_000;

/// Records of one partition of one source, in offset order, as the
/// pipeline takes them.
#[derive(Debug, Default)]
pub struct Batch {
    /// The engine's source id (`log`, `file:/path`, `kafka:topic`).
    pub source: String,
    /// The partition they came from.
    pub partition: u32,
    /// Events to decode and apply.
    pub records: Vec<Record>,
    /// Delayed retries carried by the source (a Kafka retry topic's
    /// records), by offset; `Err` for a record that is not a retry.
    pub retries: Vec<(u64, Result<RetryEntry, String>)>,
}

impl Batch {
    /// The offset after the last record of the batch.
    pub fn next_offset(&self) -> Option<u64> {
        let last_record = self.records.last().map(|r| r.offset);
        let last_retry = self.retries.last().map(|(o, _)| *o);
        last_record.max(last_retry).map(|o| o + 1)
    }
}

/// What a source has for the pipeline now.
#[derive(Debug)]
pub enum Next {
    /// A batch to apply.
    Batch(Batch),
    /// Nothing arrived within the wait; more may come.
    Idle,
    /// The input ended (a file read to its end); nothing more will come.
    End,
}

/// An input of events. One loop ([`crate::driver::run`]) drives any
/// source into the engine; each source keeps what is its own (a log's
/// partitions, a file's lines, Kafka's group and topics) behind this.
///
/// Offsets are the store's: a source asks its [`SourceHost`] where each
/// partition resumes and hands out records from there, so a restart
/// neither skips nor repeats one.
pub trait Source: Send + Sync {
    /// Get ready to hand out batches (resume offsets from `host`, threads
    /// of its own). Called once, before the first [`Source::next_batch`].
    fn start(&self, host: Arc<dyn SourceHost>) -> anyhow::Result<()>;

    /// The next batch of at most `max` records, waiting up to `wait` for
    /// one to arrive.
    fn next_batch(&self, max: usize, wait: Duration) -> anyhow::Result<Next>;

    /// The pipeline is done with `batch` (`applied`: the engine took it;
    /// false when it failed and the pipeline stops).
    fn finished(&self, batch: &Batch, applied: bool) {
        let _ = (batch, applied);
    }

    /// Everything handed out and finished so far is durable in the store.
    fn durable(&self) {}

    /// Per source id: (partition, end offset) of each partition followed
    /// now, for lag, staleness and position tokens.
    fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)>;

    /// Per source id and partition among [`Source::positions`]: those
    /// whose end is not known yet (a Kafka partition just assigned, before
    /// the broker said where it ends). Their lag is not reported rather
    /// than reported as 0.
    fn unknown_ends(&self) -> Vec<(String, u32)> {
        Vec::new()
    }

    /// The source's retained records, read from the beginning, when it
    /// keeps them (shadow rebuilds).
    fn replay(&self) -> Option<Arc<dyn Replay>> {
        None
    }

    /// Where delayed retries and dead letters go besides the store.
    fn failure_route(&self) -> Option<Arc<dyn FailureRoute>> {
        None
    }

    /// Where views live and the changelog their changes go to, when
    /// several instances share the source.
    fn changelog(&self) -> Option<Arc<dyn Changelog>> {
        None
    }

    /// Which instance answers a read of a view, when several share the
    /// source.
    fn router(&self) -> Option<Arc<dyn Router>> {
        None
    }

    /// Counters of the source's own, for `/metrics`.
    fn metrics(&self) -> Vec<SourceMetric> {
        Vec::new()
    }

    /// Bytes read of the total, when the source knows (files).
    fn bytes_read(&self) -> (u64, Option<u64>) {
        (0, None)
    }

    /// Stop the source's own threads, once the pipeline has stopped
    /// taking batches (a Kafka source leaves its group here).
    fn close(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where a read of a view is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Here: this instance owns the view's partition.
    Local,
    /// Here, from a standby's views (the read accepts a stale answer).
    Standby,
    /// By another instance, at its base URL.
    Remote {
        /// The owner's instance id.
        instance: String,
        /// Its base URL (`http://host:port`).
        url: String,
    },
    /// By none now (a rebalance, a restore): try again shortly.
    Unavailable {
        /// `rebalancing` or `restoring`.
        reason: &'static str,
        /// What is going on, in words.
        message: String,
    },
}

/// Which instance owns the partition of each view.
pub trait Router: Send + Sync {
    /// This instance's id.
    fn instance(&self) -> String;
    /// Where a read of `plugin`'s view `key` is answered (`stale_ok`: a
    /// standby's views may answer).
    fn owner(&self, plugin: &str, key: &str, stale_ok: bool) -> Owner;
    /// Every instance, its URL and its owned, restoring and standby
    /// partitions, and the routing table (for `status` and the API).
    fn table(&self) -> serde_json::Value;
    /// Readiness: the partitions this instance is restoring (none: ready).
    fn restoring(&self) -> Vec<u32>;
    /// Tell the others where this instance's API answers (once it listens).
    fn advertise(&self, url: &str);
}

/// A source's records read again from the beginning: what a shadow
/// generation is rebuilt from.
pub trait Replay: Send + Sync {
    /// (source id, partition) of every partition this runtime follows.
    fn partitions(&self) -> Vec<(String, u32)>;
    /// Whether every partition still holds its records from offset 0.
    fn complete(&self) -> bool;
    /// Up to `max` records of (source, partition) from `from` on.
    fn read(
        &self,
        source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<Record>>;
}

/// The kind of a [`SourceMetric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One sample of a source's own metric (e.g. Kafka's consumer lag).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceMetric {
    /// The metric's name, without `_total`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Label names and values.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: i64,
}
