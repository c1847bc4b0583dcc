//! Rebalances. The group balances the source topics only (the retry
//! partitions follow, read by [`RetryReader`](super::retry_reader)). With
//! one source topic it uses the `cooperative-sticky` assignor: a join or
//! a leave moves only the partitions that must move, and the others keep
//! their queues, batches and reads. With several source topics it uses
//! `range`, the one assignor that keeps their same partitions together
//! (as the views' placement needs), and every rebalance revokes all.
//!
//! A newly assigned partition that may need a restore from its changelog
//! (`changelog = true`) is assigned *paused*: the callback returns at
//! once, so the group's rebalance never waits for a restore. A restore
//! thread brings its views up to the changelog (one restore at a time);
//! the consumer thread then seeks the partition to the store's offset and
//! resumes it ([`finish_restores`]). Until then the partition is marked
//! restoring: its reads answer 503 with `Retry-After`, the other
//! partitions flow. A partition revoked while it waits is dropped from
//! the wait; its restore's views stay in the store, as a standby's do.
//!
//! Each rebalance is counted with its duration and the partitions it
//! moved ([`KafkaStats`](super::stats::KafkaStats)).

use super::consumer::{by_consumer, PartQueue, Shared};
use super::stats::PartitionLag;
use projector_common::sync::Recover;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A topic's partition.
pub(crate) type Part = (String, i32);

/// A restore finished: its partitions, and how it went.
type Restored = (Vec<Part>, Result<(), String>);

/// Partitions assigned and waiting for their restore, and the restores
/// done, for the consumer thread to resume.
#[derive(Default)]
pub(crate) struct Restores {
    /// Assigned (paused), their restore not finished.
    pub(crate) waiting: Mutex<BTreeSet<Part>>,
    /// Restores finished: their partitions, and how it went.
    done: Mutex<Vec<Restored>>,
    /// One restore at a time.
    one: Mutex<()>,
}

/// How long a seek to a restored partition's offset may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct ConsumerCtx {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    /// The broker's high watermarks, from librdkafka's statistics (read as
    /// plain JSON: the typed form fails to parse some versions' output).
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let mut lags = self.shared.stats.partitions.lock().recover();
        for (topic, t) in stats["topics"].as_object().into_iter().flatten() {
            for (p, s) in t["partitions"].as_object().into_iter().flatten() {
                let (Ok(p), Some(hi)) = (p.parse::<i32>(), s["hi_offset"].as_i64()) else {
                    continue;
                };
                // -1001: not known yet (no fetch answered for it).
                if let (Some(l), true) = (lags.get_mut(&(topic.clone(), p)), hi >= 0) {
                    l.end = Some(l.end.map_or(hi, |e| e.max(hi)));
                }
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let started = Instant::now();
        let shared = &self.shared;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<Part> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                assign(consumer, shared, &parts, cooperative);
                shared
                    .stats
                    .assigned
                    .fetch_add(parts.len() as u64, Ordering::Relaxed);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                revoke(consumer, shared, &parts);
                let done = match cooperative {
                    true => consumer.incremental_unassign(tpl),
                    false => consumer.unassign(),
                };
                if let Err(e) = done {
                    tracing::error!("unassign: {e}");
                }
                shared
                    .stats
                    .revoked
                    .fetch_add(parts.len() as u64, Ordering::Relaxed);
            }
            other => {
                tracing::error!("rebalance error: {other:?}");
                let all: Vec<Part> = shared.lock().parts.keys().cloned().collect();
                shared.restores.waiting.lock().recover().clear();
                shared.stats.restoring.lock().recover().clear();
                if let Some(r) = shared.retry_reader.get() {
                    let _ = r.consumer.unassign();
                }
                shared.release(&all);
                let _ = match (cooperative, consumer.assignment()) {
                    (true, Ok(current)) => consumer.incremental_unassign(&current),
                    _ => consumer.unassign(),
                };
            }
        }
        if let Some(m) = &shared.members {
            m.dirty.store(true, Ordering::Relaxed);
        }
        shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .rebalance_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Take `parts` on: those that cannot need a restore go into the queues
/// at once; the others are assigned paused and restored on a thread of
/// their own.
fn assign(
    consumer: &BaseConsumer<ConsumerCtx>,
    shared: &Arc<Shared>,
    parts: &[Part],
    cooperative: bool,
) {
    let mut assign = TopicPartitionList::new();
    let mut later = Vec::new();
    let mut q = shared.lock();
    for (topic, partition) in parts {
        let next = match shared.resume(topic, *partition) {
            Ok(o) => o as i64,
            Err(e) => {
                q.failed = Some(format!("reading the offset of {topic}/{partition}: {e}"));
                continue;
            }
        };
        let _ = assign.add_partition_offset(topic, *partition, Offset::Offset(next));
        if shared.config.changelog {
            later.push((topic.clone(), *partition));
            continue;
        }
        queue(shared, &mut q, topic, *partition, next);
    }
    drop(q);
    tracing::info!(partitions = ?parts, restoring = ?later, "assigned");
    let done = match cooperative {
        true => consumer.incremental_assign(&assign),
        false => consumer.assign(&assign),
    };
    if let Err(e) = done {
        tracing::error!("assign: {e}");
    }
    if later.is_empty() {
        return;
    }
    let mut paused = TopicPartitionList::new();
    for (topic, partition) in &later {
        let _ = paused.add_partition(topic, *partition);
    }
    if let Err(e) = consumer.pause(&paused) {
        tracing::error!("pausing partitions to restore: {e}");
    }
    shared
        .restores
        .waiting
        .lock()
        .recover()
        .extend(later.iter().cloned());
    shared
        .stats
        .restoring
        .lock()
        .recover()
        .extend(later.iter().map(|(_, p)| *p));
    let worker = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("projector-restore".into())
        .spawn(move || {
            let shared = worker;
            let _one = shared.restores.one.lock().recover();
            // Only what is still assigned: a revocation may have come first.
            let still: Vec<Part> = {
                let waiting = shared.restores.waiting.lock().recover();
                later.into_iter().filter(|p| waiting.contains(p)).collect()
            };
            let result = match still.is_empty() {
                true => Ok(()),
                false => shared.restore(&still),
            };
            shared.restores.done.lock().recover().push((still, result));
        });
    if let Err(e) = spawned {
        shared.lock().failed = Some(format!("starting a restore: {e}"));
    }
}

/// A source partition ready to be fed from `next`, with its retry
/// partition (read by the retry reader from the store's offset).
fn queue(shared: &Shared, q: &mut super::consumer::Queues, topic: &str, partition: i32, next: i64) {
    queue_one(shared, q, topic, partition, next);
    let retry = shared.config.retry_topic(topic);
    match shared.resume(&retry, partition) {
        Ok(offset) => {
            queue_one(shared, q, &retry, partition, offset as i64);
            if let Some(r) = shared.retry_reader.get() {
                r.follow(&retry, partition, offset as i64);
            }
        }
        Err(e) => q.failed = Some(format!("reading the offset of {retry}/{partition}: {e}")),
    }
}

/// One partition's queue and lag (its end not known until the broker says).
fn queue_one(
    shared: &Shared,
    q: &mut super::consumer::Queues,
    topic: &str,
    partition: i32,
    next: i64,
) {
    q.parts.insert(
        (topic.to_string(), partition),
        PartQueue {
            applied: Some(next),
            durable: Some(next),
            ..Default::default()
        },
    );
    shared.stats.partitions.lock().recover().insert(
        (topic.to_string(), partition),
        PartitionLag {
            end: None,
            seen: next,
            next,
            paused: false,
        },
    );
}

/// Let `parts` go: the queued ones are released (their batch in flight
/// finished, the store committed, the spool drained a moment), the ones
/// waiting for a restore forgotten.
fn revoke(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, parts: &[Part]) {
    // Their retry partitions go with them.
    let retries: Vec<Part> = {
        let q = shared.lock();
        parts
            .iter()
            .map(|(t, p)| (shared.config.retry_topic(t), *p))
            .filter(|r| q.parts.contains_key(r))
            .collect()
    };
    if let Some(r) = shared.retry_reader.get() {
        r.stop(&retries);
    }
    let parts = &[parts, &retries[..]].concat();
    {
        let mut waiting = shared.restores.waiting.lock().recover();
        let mut restoring = shared.stats.restoring.lock().recover();
        for p in parts {
            if waiting.remove(p) {
                restoring.remove(&p.1);
            }
        }
    }
    let (offsets, retried) = by_consumer(shared, &shared.release(parts));
    if offsets.count() > 0 {
        // Async: a sync commit waits without bound when the broker is
        // gone, and Kafka's offsets only inform.
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!("commit to Kafka on revocation: {e}");
        }
    }
    if let Some(r) = shared.retry_reader.get() {
        r.commit(&retried);
    }
    tracing::info!(partitions = ?parts, "revoked");
}

/// On the consumer thread: resume the partitions whose restore finished
/// (those still assigned), from the store's offset.
pub(crate) fn finish_restores(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared) {
    let done = std::mem::take(&mut *shared.restores.done.lock().recover());
    for (parts, result) in done {
        if let Err(e) = result {
            tracing::error!("{e}");
            shared.lock().failed = Some(e);
            shared.changed.notify_all();
            continue;
        }
        let mut resume = TopicPartitionList::new();
        for (topic, partition) in parts {
            let key = (topic.clone(), partition);
            if !shared.restores.waiting.lock().recover().remove(&key) {
                continue;
            }
            let next = match shared.resume(&topic, partition) {
                Ok(o) => o as i64,
                Err(e) => {
                    shared.lock().failed =
                        Some(format!("reading the offset of {topic}/{partition}: {e}"));
                    continue;
                }
            };
            if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(next), SEEK_TIMEOUT) {
                tracing::warn!("seeking {topic}/{partition} to {next} after its restore: {e}");
            }
            queue(shared, &mut shared.lock(), &topic, partition, next);
            shared.stats.restoring.lock().recover().remove(&partition);
            let _ = resume.add_partition(&topic, partition);
        }
        if resume.count() == 0 {
            continue;
        }
        if let Err(e) = consumer.resume(&resume) {
            tracing::error!("resuming restored partitions: {e}");
        }
        tracing::info!(partitions = resume.count(), "restored partitions resumed");
        if let Some(m) = &shared.members {
            m.dirty.store(true, Ordering::Relaxed);
        }
        shared.changed.notify_all();
    }
}
