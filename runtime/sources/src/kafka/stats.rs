//! Live counters of a Kafka source, and the metrics made of them.

use super::config::source_id;
use projector_common::sync::Recover;
use projector_core::source::MetricKind::{Counter, Gauge};
use projector_core::source::{MetricKind, SourceMetric};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// One figure of a partition's restores: (records, views, ms) → value.
type Restored = fn(&(u64, u64, u64)) -> u64;

/// Live counters of a Kafka source.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// The source topics (not their retry topics).
    pub topics: Vec<String>,
    /// Records polled from Kafka.
    pub consumed: AtomicU64,
    /// Batches handed to the engine and applied.
    pub batches: AtomicU64,
    /// Times a partition was paused because its queue was full.
    pub pauses: AtomicU64,
    /// Partitions paused now.
    pub paused: AtomicI64,
    /// Records waiting in the queues now, and the most seen at once in
    /// one partition's queue.
    pub buffered: AtomicI64,
    /// The most records seen at once in one partition's queue.
    pub max_buffered: AtomicI64,
    /// Assignments and revocations.
    pub rebalances: AtomicU64,
    /// Errors the consumer reported while polling.
    pub consumer_errors: AtomicU64,
    /// Spooled records the broker acknowledged.
    pub produced: AtomicU64,
    /// Failed sends and deliveries of spooled records (each stays in the spool).
    pub produce_errors: AtomicU64,
    /// Per (topic, partition): the log end seen and the next offset applied.
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionLag>>,
    /// Partitions being restored from their changelogs now.
    pub restoring: Mutex<BTreeSet<i32>>,
    /// Restores from a changelog done, over every plugin and partition.
    pub restores: AtomicU64,
    /// Changelog records read by restores.
    pub restore_records: AtomicU64,
    /// Views put or deleted by restores.
    pub restore_views: AtomicU64,
    /// Time restores took, in ms.
    pub restore_ms: AtomicU64,
    /// Per partition: (changelog records read, views restored, ms) by restores.
    pub restored: Mutex<BTreeMap<i32, (u64, u64, u64)>>,
    /// The restore under way: changelog records read, and to read.
    pub restore_progress: Mutex<Option<(u64, u64)>>,
}

/// How far one owned partition is: its log end and the next offset applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    /// Log end seen (the offset after its last record), from polls and broker statistics.
    pub end: i64,
    /// Next offset the engine applies from.
    pub next: i64,
}

impl KafkaStats {
    /// Per source topic's engine source id: (partition, log end) of each
    /// partition owned now.
    pub(crate) fn source_positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        let parts = self.partitions.lock().recover();
        self.topics
            .iter()
            .map(|t| {
                let owned = parts
                    .iter()
                    .filter(|((topic, _), _)| topic == t)
                    .map(|((_, p), l)| (*p as u32, l.end.max(l.next).max(0) as u64))
                    .collect();
                (source_id(t), owned)
            })
            .collect()
    }

    /// Records behind the log end, per (topic, partition).
    pub fn lag(&self) -> Vec<((String, i32), i64)> {
        self.partitions
            .lock()
            .recover()
            .iter()
            .map(|(k, l)| (k.clone(), (l.end - l.next).max(0)))
            .collect()
    }

    /// The source's metrics, with `spooled` records waiting in the spool.
    pub(crate) fn metrics(&self, spooled: usize) -> Vec<SourceMetric> {
        let mut out = self.consumer_metrics(spooled);
        out.extend(self.restore_metrics());
        out.extend(self.partition_restore_metrics());
        out.extend(self.lag_metrics());
        out
    }

    /// The consumer's and the spool's counters and gauges.
    fn consumer_metrics(&self, spooled: usize) -> Vec<SourceMetric> {
        vec![
            unlabelled(
                "projector_kafka_consumed",
                "Records polled from Kafka",
                Counter,
                load(&self.consumed),
            ),
            unlabelled(
                "projector_kafka_batches",
                "Batches handed to the engine",
                Counter,
                load(&self.batches),
            ),
            unlabelled(
                "projector_kafka_pauses",
                "Times a partition was paused because its queue was full",
                Counter,
                load(&self.pauses),
            ),
            unlabelled(
                "projector_kafka_rebalances",
                "Assignments and revocations",
                Counter,
                load(&self.rebalances),
            ),
            unlabelled(
                "projector_kafka_consumer_errors",
                "Errors the consumer reported",
                Counter,
                load(&self.consumer_errors),
            ),
            unlabelled(
                "projector_kafka_produced",
                "Spooled records the broker acknowledged",
                Counter,
                load(&self.produced),
            ),
            unlabelled(
                "projector_kafka_produce_errors",
                "Failed deliveries (the record stays spooled)",
                Counter,
                load(&self.produce_errors),
            ),
            unlabelled(
                "projector_kafka_buffered_records",
                "Records waiting in the partition queues",
                Gauge,
                self.buffered.load(Ordering::Relaxed),
            ),
            unlabelled(
                "projector_kafka_paused_partitions",
                "Partitions paused by backpressure now",
                Gauge,
                self.paused.load(Ordering::Relaxed),
            ),
            unlabelled(
                "projector_kafka_spooled_records",
                "Records in the spool, not yet acknowledged",
                Gauge,
                spooled as i64,
            ),
        ]
    }

    /// Restores from changelogs, over every plugin and partition.
    fn restore_metrics(&self) -> [SourceMetric; 5] {
        [
            unlabelled(
                "projector_kafka_restores",
                "Partitions of a plugin restored from its changelog",
                Counter,
                load(&self.restores),
            ),
            unlabelled(
                "projector_kafka_restore_records",
                "Changelog records read by restores",
                Counter,
                load(&self.restore_records),
            ),
            unlabelled(
                "projector_kafka_restore_views",
                "Views put or deleted by restores",
                Counter,
                load(&self.restore_views),
            ),
            unlabelled(
                "projector_kafka_restore_milliseconds",
                "Time restores took",
                Counter,
                load(&self.restore_ms),
            ),
            unlabelled(
                "projector_kafka_restoring_partitions",
                "Partitions being restored from the changelog now",
                Gauge,
                self.restoring.lock().recover().len() as i64,
            ),
        ]
    }

    /// Restores of each partition: records read, views restored, time
    /// taken; each metric's rows together, so each family is written once.
    fn partition_restore_metrics(&self) -> Vec<SourceMetric> {
        let restored = self.restored.lock().recover();
        let families: [(&str, &str, Restored); 3] = [
            (
                "projector_kafka_partition_restore_records",
                "Changelog records read by restores of this partition",
                |r| r.0,
            ),
            (
                "projector_kafka_partition_restore_views",
                "Views restored into this partition",
                |r| r.1,
            ),
            (
                "projector_kafka_partition_restore_milliseconds",
                "Time restores of this partition took",
                |r| r.2,
            ),
        ];
        families
            .into_iter()
            .flat_map(|(name, help, value)| {
                restored.iter().map(move |(partition, r)| SourceMetric {
                    name,
                    help,
                    kind: Counter,
                    labels: vec![("partition".into(), partition.to_string())],
                    value: value(r) as i64,
                })
            })
            .collect()
    }

    /// Records of each owned partition not yet applied.
    fn lag_metrics(&self) -> Vec<SourceMetric> {
        self.lag()
            .into_iter()
            .map(|((topic, partition), lag)| SourceMetric {
                name: "projector_kafka_lag_records",
                help: "Records of an owned partition not yet applied",
                kind: Gauge,
                labels: vec![
                    ("topic".into(), topic),
                    ("partition".into(), partition.to_string()),
                ],
                value: lag,
            })
            .collect()
    }
}

/// A metric with no labels.
fn unlabelled(
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    value: i64,
) -> SourceMetric {
    SourceMetric {
        name,
        help,
        kind,
        labels: Vec::new(),
        value,
    }
}

/// A counter's value, as a metric's value.
fn load(c: &AtomicU64) -> i64 {
    c.load(Ordering::Relaxed) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_restore_family_is_written_in_one_run_of_rows() {
        let stats = KafkaStats::default();
        stats
            .restored
            .lock()
            .recover()
            .extend([(0, (10, 5, 7)), (3, (20, 8, 9))]);
        let names: Vec<&str> = stats
            .partition_restore_metrics()
            .iter()
            .map(|m| m.name)
            .collect();
        let mut runs = names.clone();
        runs.dedup();
        assert_eq!(runs.len(), 3, "one run of rows per family: {names:?}");
        assert_eq!(names.len(), 6);
    }
}
