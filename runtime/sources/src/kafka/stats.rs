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
    /// Rebalances seen (each assignment or revocation).
    pub rebalances: AtomicU64,
    /// Time spent in rebalance callbacks, in ms.
    pub rebalance_ms: AtomicU64,
    /// Partitions assigned by rebalances.
    pub assigned: AtomicU64,
    /// Partitions revoked by rebalances.
    pub revoked: AtomicU64,
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

/// How far one owned partition is: its log end, what was fetched of it,
/// and the next offset applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    /// The log end (the offset after its last record) as the broker last
    /// said (its statistics), raised by what was fetched since; `None`
    /// until the broker has said: the lag is not known, never 0.
    pub end: Option<i64>,
    /// The offset after the last record fetched (a lower bound of the end).
    pub seen: i64,
    /// Next offset the engine applies from.
    pub next: i64,
    /// Paused now because its queue is full (backpressure).
    pub paused: bool,
}

impl PartitionLag {
    /// A record up to `offset` (exclusive) was fetched.
    pub(crate) fn saw(&mut self, offset: i64) {
        self.seen = self.seen.max(offset);
        if let Some(end) = &mut self.end {
            *end = (*end).max(offset);
        }
    }

    /// Records not yet applied, once the end is known: those fetched and
    /// not applied count.
    pub fn lag(&self) -> Option<i64> {
        self.end.map(|end| (end.max(self.seen) - self.next).max(0))
    }
}

impl KafkaStats {
    /// Per source topic's engine source id: (partition, log end) of each
    /// partition owned now; for one whose end the broker has not said yet,
    /// what was fetched of it ([`KafkaStats::unknown_positions`] lists
    /// those).
    pub(crate) fn source_positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        let parts = self.partitions.lock().recover();
        self.topics
            .iter()
            .map(|t| {
                let owned = parts
                    .iter()
                    .filter(|((topic, _), _)| topic == t)
                    .map(|((_, p), l)| {
                        let end = l.end.unwrap_or(l.seen).max(l.seen).max(l.next).max(0);
                        (*p as u32, end as u64)
                    })
                    .collect();
                (source_id(t), owned)
            })
            .collect()
    }

    /// Records behind the log end, per (topic, partition) whose end is known.
    pub fn lag(&self) -> Vec<((String, i32), i64)> {
        self.partitions
            .lock()
            .recover()
            .iter()
            .filter_map(|(k, l)| Some((k.clone(), l.lag()?)))
            .collect()
    }

    /// Per source topic's engine source id, the owned partitions whose end
    /// the broker has not said yet.
    pub(crate) fn unknown_positions(&self) -> Vec<(String, u32)> {
        let parts = self.partitions.lock().recover();
        parts
            .iter()
            .filter(|((topic, _), l)| l.end.is_none() && self.topics.contains(topic))
            .map(|((topic, p), _)| (source_id(topic), *p as u32))
            .collect()
    }

    /// Owned partitions whose log end the broker has not said yet.
    pub fn unknown_ends(&self) -> usize {
        let parts = self.partitions.lock().recover();
        parts.values().filter(|l| l.end.is_none()).count()
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
                "Rebalances seen (each assignment or revocation)",
                Counter,
                load(&self.rebalances),
            ),
            unlabelled(
                "projector_kafka_rebalance_milliseconds",
                "Time spent in rebalances (restores run after them)",
                Counter,
                load(&self.rebalance_ms),
            ),
            unlabelled(
                "projector_kafka_partitions_assigned",
                "Partitions assigned to this instance by rebalances",
                Counter,
                load(&self.assigned),
            ),
            unlabelled(
                "projector_kafka_partitions_revoked",
                "Partitions revoked from this instance by rebalances",
                Counter,
                load(&self.revoked),
            ),
            unlabelled(
                "projector_kafka_lag_unknown_partitions",
                "Owned partitions whose log end the broker has not said yet (their lag is not reported)",
                Gauge,
                self.unknown_ends() as i64,
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
    fn a_lag_is_unknown_until_the_broker_says_the_end_and_counts_what_is_fetched() {
        let stats = KafkaStats {
            topics: vec!["t".into()],
            ..KafkaStats::default()
        };
        let mut l = PartitionLag {
            end: None,
            seen: 100,
            next: 100,
            paused: false,
        };
        stats.partitions.lock().recover().insert(("t".into(), 0), l);
        // Freshly assigned: no lag, and counted as unknown.
        assert_eq!(stats.lag(), []);
        assert_eq!(
            stats.source_positions(),
            [("kafka:t".to_string(), vec![(0, 100)])]
        );
        assert_eq!(stats.unknown_positions(), [("kafka:t".to_string(), 0)]);
        assert_eq!(stats.unknown_ends(), 1);
        // Fetched but not applied: still unknown without the broker's end.
        l.saw(150);
        assert_eq!(l.lag(), None);
        // The broker's end: what is fetched and not applied is lag.
        l.end = Some(140);
        assert_eq!(
            l.lag(),
            Some(50),
            "the fetched records count past a stale end"
        );
        l.end = Some(200);
        assert_eq!(l.lag(), Some(100));
        l.next = 200;
        assert_eq!(l.lag(), Some(0), "0 only once everything is applied");
        stats.partitions.lock().recover().insert(("t".into(), 0), l);
        assert_eq!(stats.lag(), [(("t".to_string(), 0), 0)]);
        assert_eq!(
            stats.source_positions(),
            [("kafka:t".to_string(), vec![(0, 200)])]
        );
        assert_eq!(stats.unknown_positions(), []);
        assert_eq!(stats.unknown_ends(), 0);
    }

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
