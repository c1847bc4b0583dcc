//! The consumer: one thread polls the group's partitions into a bounded
//! queue per partition, pauses and resumes them, follows rebalances
//! ([`super::rebalance`]) and commits durable offsets to Kafka. The
//! pipeline takes batches from the queues through
//! [`KafkaSource`](super::KafkaSource).

use super::config::source_id;
use super::config::KafkaConfig;
use super::rebalance::{finish_restores, ConsumerCtx, Restores};
use super::retry_reader::RetryReader;
use super::route::retry_entry;
use super::stats::KafkaStats;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::source::SourceHost;
use projector_core::store::RetryEntry;
use projector_core::Record;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A polled record waiting for the pipeline.
pub(crate) enum Queued {
    Event(Record),
    /// A retry topic's record, read with its headers.
    Retry(u64, Box<Result<RetryEntry, String>>),
}

impl Queued {
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Queued::Event(r) => r.offset,
            Queued::Retry(o, _) => *o,
        }
    }
}

/// One assigned partition's queue.
#[derive(Default)]
pub(crate) struct PartQueue {
    pub(crate) records: VecDeque<Queued>,
    pub(crate) paused: bool,
    /// Next offset applied in memory / made durable / committed to Kafka.
    pub(crate) applied: Option<i64>,
    pub(crate) durable: Option<i64>,
    pub(crate) committed: Option<i64>,
}

#[derive(Default)]
pub(crate) struct Queues {
    pub(crate) parts: BTreeMap<(String, i32), PartQueue>,
    /// The partition whose batch the pipeline is processing.
    pub(crate) in_flight: Option<(String, i32)>,
    /// Round-robin position.
    pub(crate) cursor: Option<(String, i32)>,
    pub(crate) failed: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) host: Arc<dyn SourceHost>,
    /// The host's format: records are decoded on the consumer's thread.
    pub(crate) format: projector_core::envelope::Format,
    pub(crate) config: KafkaConfig,
    pub(crate) retry_topics: HashSet<String>,
    pub(crate) queues: Mutex<Queues>,
    pub(crate) changed: Condvar,
    pub(crate) stats: Arc<KafkaStats>,
    /// With a changelog: the membership, told of each rebalance.
    pub(crate) members: Option<Arc<super::members::Members>>,
    /// Changelog partitions followed by the standby (taken over by a restore).
    pub(crate) followers: Arc<super::restore::Followers>,
    /// Partitions assigned and waiting for their restore.
    pub(crate) restores: Restores,
    /// The retry partitions' reader (set when the consumer starts).
    pub(crate) retry_reader: std::sync::OnceLock<RetryReader>,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().recover()
    }

    /// Where a newly assigned partition resumes: the store's offset.
    pub(crate) fn resume(
        &self,
        topic: &str,
        partition: i32,
    ) -> projector_core::engine::Result<u64> {
        let source = source_id(topic);
        if self.retry_topics.contains(topic) {
            self.host.retry_resume_offset(&source, partition as u32)
        } else {
            self.host.resume_offset(&source, partition as u32)
        }
    }

    /// Wait, up to `bound`, for the spool to send what was committed: the
    /// next owner of a released partition restores from the changelog,
    /// and finds it complete.
    fn drain_spool(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let spool = self.host.spool();
        while spool.pending() > 0 {
            if Instant::now() > deadline {
                tracing::warn!(
                    spooled = spool.pending(),
                    "releasing partitions with changelog records not yet sent; \
                     their next owner restores an older state and replays from there"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restore the source partitions among `parts` from their changelogs
    /// where they are ahead of the store (shown as restoring meanwhile,
    /// until they are in the queues). A restore that fails leaves views
    /// ahead of their offsets: the source fails rather than resume there.
    pub(crate) fn restore(&self, parts: &[(String, i32)]) -> Result<(), String> {
        let numbers: std::collections::BTreeSet<i32> = parts
            .iter()
            .filter(|(t, _)| !self.retry_topics.contains(t))
            .map(|(_, p)| *p)
            .collect();
        self.stats
            .restoring
            .lock()
            .recover()
            .extend(numbers.iter().copied());
        if let Some(m) = &self.members {
            m.dirty.store(true, Ordering::Relaxed);
        }
        super::restore::restore_partitions(
            self.host.as_ref(),
            &self.config,
            &numbers,
            &self.stats,
            &self.followers,
        )
        .map_err(|e| {
            format!(
                "restoring partitions {numbers:?} from the changelog failed: {e:#}; \
                 a restart restores them again"
            )
        })
    }

    /// Stop feeding `parts`, wait for a batch of theirs in flight, make
    /// the store durable; their next offsets, for Kafka.
    pub(crate) fn release(&self, parts: &[(String, i32)]) -> TopicPartitionList {
        let mut q = self.lock();
        for p in parts {
            if let Some(part) = q.parts.get_mut(p) {
                self.stats
                    .buffered
                    .fetch_sub(part.records.len() as i64, Ordering::Relaxed);
                part.records.clear();
            }
        }
        while q.in_flight.as_ref().is_some_and(|f| parts.contains(f)) {
            q = self.changed.wait(q).recover();
        }
        let released: Vec<_> = parts
            .iter()
            .filter_map(|p| q.parts.remove(p).map(|part| (p.clone(), part)))
            .collect();
        drop(q);
        if let Err(e) = self.host.commit() {
            tracing::error!("commit before releasing partitions: {e}");
        }
        if self.config.changelog {
            self.drain_spool(Duration::from_secs(5));
        }
        let mut tpl = TopicPartitionList::new();
        let mut lags = self.stats.partitions.lock().recover();
        for ((topic, partition), part) in released {
            if part.paused {
                self.stats.paused.fetch_sub(1, Ordering::Relaxed);
            }
            lags.remove(&(topic.clone(), partition));
            if let Some(next) = part.applied {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
        }
        tpl
    }
}

/// The consumer thread: poll into the queues, pause and resume, commit
/// durable offsets to Kafka, until `stop`; then commit, and leave the
/// group deliberately (revocation runs here, on this thread).
pub(crate) fn consume(shared: Arc<Shared>, stop: &Shutdown) -> anyhow::Result<()> {
    let config = &shared.config;
    let mut settings = vec![
        ("group.id", config.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", config.assignor()),
        ("queued.max.messages.kbytes", "16384"),
        ("statistics.interval.ms", "1000"),
        ("session.timeout.ms", "10000"),
    ];
    if let Some(id) = &config.instance_id {
        settings.push(("group.instance.id", id.as_str()));
    }
    let consumer: BaseConsumer<ConsumerCtx> = config
        .consumer_client(&settings)
        .create_with_context(ConsumerCtx {
            shared: shared.clone(),
        })?;
    // The group balances the source topics; the retry partitions follow
    // them, read by a consumer of their own.
    if shared.retry_reader.set(RetryReader::new(config)?).is_err() {
        anyhow::bail!("the Kafka consumer is already running");
    }
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let high = config.max_buffered_records;
    let low = high / 2;
    let commit_every = shared
        .host
        .commit_interval()
        .max(Duration::from_millis(100));
    let mut last_commit = Instant::now();
    while !stop.is_stopped() {
        // Take what arrived, up to a burst, then look at the queues.
        let mut burst = 0;
        let mut timeout = Duration::from_millis(50);
        let mut key = (String::new(), 0);
        while burst < 4096 {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    shared.stats.consumer_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("kafka: {e}");
                    break;
                }
                Some(Ok(m)) => {
                    let queued = enqueue(&shared, &m, &mut key);
                    burst += 1;
                    timeout = Duration::ZERO;
                    if queued >= high {
                        shared.changed.notify_all();
                        backpressure(&consumer, &shared, high, low);
                    }
                }
            }
        }
        let retries = &shared.retry_reader.get().expect("set above").consumer;
        while burst < 4096 {
            match retries.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!("kafka (retry topics): {e}");
                    break;
                }
                Some(Ok(m)) => {
                    enqueue(&shared, &m, &mut key);
                    burst += 1;
                }
            }
        }
        // One wake-up per burst, not per record: the burst ends as soon
        // as librdkafka has nothing ready, so the source is not kept
        // waiting.
        if burst > 0 {
            shared.changed.notify_all();
        }
        backpressure(&consumer, &shared, high, low);
        finish_restores(&consumer, &shared);
        if last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            commit_kafka(&consumer, &shared, CommitMode::Async);
        }
    }
    // Async, served by the polls below: a sync commit waits without bound
    // when the broker is gone (the store's offsets are the truth).
    commit_kafka(&consumer, &shared, CommitMode::Async);
    if config.instance_id.is_some() {
        // A static member does not leave: unsubscribing would, and the
        // group would rebalance twice for a restart. Its partitions wait
        // for it (the session timeout); the store holds their offsets.
        let all: Vec<_> = shared.lock().parts.keys().cloned().collect();
        shared.release(&all);
    } else {
        consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !shared.lock().parts.is_empty() {
            let _ = consumer.poll(Duration::from_millis(50));
        }
    }
    // Serve the commits' results a moment longer before closing.
    let _ = consumer.poll(Duration::from_millis(100));
    close(consumer);
    if let Some(r) = shared.retry_reader.get() {
        let _ = r.consumer.unassign();
    }
    Ok(())
}

/// Leave the group and close, within a bound. rdkafka's drop polls until
/// the consumer is closed, which never happens when the broker went away
/// first (rust-rdkafka 509, 611): past the bound the consumer is left
/// unclosed (its threads and memory leak, once, on the way out) rather
/// than the runtime never stopping.
fn close(consumer: BaseConsumer<ConsumerCtx>) {
    const BOUND: Duration = Duration::from_secs(5);
    if let Err(e) = consumer.close_queue() {
        tracing::warn!("kafka: closing the consumer: {e}");
    }
    let deadline = Instant::now() + BOUND;
    while !consumer.closed() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    if consumer.closed() {
        drop(consumer);
    } else {
        tracing::warn!(
            "kafka: the consumer did not close within {BOUND:?} (broker unreachable?); leaving it"
        );
        std::mem::forget(consumer);
    }
}

/// Queue a polled record; how many its partition's queue holds now. `k`
/// is the caller's scratch for the (topic, partition) key; the caller
/// wakes the source once the burst is queued.
fn enqueue<M: Message>(shared: &Shared, m: &M, k: &mut (String, i32)) -> usize {
    if k.0 != m.topic() {
        k.0.clear();
        k.0.push_str(m.topic());
    }
    k.1 = m.partition();
    let k = &*k;
    // Decoded before the queues' lock is taken, which the pipeline takes
    // for its batches.
    let queued = if shared.retry_topics.contains(m.topic()) {
        Queued::Retry(m.offset() as u64, Box::new(retry_entry(m)))
    } else {
        Queued::Event(Record::decoded(
            m.partition() as u32,
            m.offset() as u64,
            m.key(),
            m.payload().unwrap_or_default(),
            shared.format,
        ))
    };
    let mut q = shared.lock();
    // A record of a partition no longer assigned is dropped: its owner
    // reads it again from its own offset.
    let Some(part) = q.parts.get_mut(k) else {
        return 0;
    };
    if part
        .records
        .back()
        .is_some_and(|r| r.offset() as i64 >= m.offset())
    {
        return part.records.len();
    }
    part.records.push_back(queued);
    let len = part.records.len() as i64;
    shared.stats.consumed.fetch_add(1, Ordering::Relaxed);
    shared.stats.buffered.fetch_add(1, Ordering::Relaxed);
    shared.stats.max_buffered.fetch_max(len, Ordering::Relaxed);
    if let Some(l) = shared.stats.partitions.lock().recover().get_mut(k) {
        l.saw(m.offset() + 1);
    }
    len as usize
}

/// Pause partitions whose queue is full; resume those drained to `low`.
fn backpressure(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, high: usize, low: usize) {
    let mut pause = TopicPartitionList::new();
    let mut resume = TopicPartitionList::new();
    {
        let mut q = shared.lock();
        let mut lags = shared.stats.partitions.lock().recover();
        for ((topic, partition), part) in q.parts.iter_mut() {
            let n = part.records.len();
            let flip = match part.paused {
                false if n >= high => &mut pause,
                true if n <= low => &mut resume,
                _ => continue,
            };
            part.paused = !part.paused;
            let _ = flip.add_partition(topic, *partition);
            // What the instances table shows (source partitions only).
            if let Some(l) = lags.get_mut(&(topic.clone(), *partition)) {
                l.paused = part.paused;
            }
        }
    }
    if pause.count() > 0 {
        shared
            .stats
            .pauses
            .fetch_add(pause.count() as u64, Ordering::Relaxed);
        shared
            .stats
            .paused
            .fetch_add(pause.count() as i64, Ordering::Relaxed);
        let (ours, theirs) = by_consumer(shared, &pause);
        if let Err(e) = consumer.pause(&ours) {
            tracing::warn!("pause: {e}");
        }
        if let (Some(r), true) = (shared.retry_reader.get(), theirs.count() > 0) {
            let _ = r.consumer.pause(&theirs);
        }
    }
    if resume.count() > 0 {
        shared
            .stats
            .paused
            .fetch_sub(resume.count() as i64, Ordering::Relaxed);
        let (ours, theirs) = by_consumer(shared, &resume);
        if let Err(e) = consumer.resume(&ours) {
            tracing::warn!("resume: {e}");
        }
        if let (Some(r), true) = (shared.retry_reader.get(), theirs.count() > 0) {
            let _ = r.consumer.resume(&theirs);
        }
    }
}

/// Commit to Kafka the offsets made durable since the last commit.
fn commit_kafka(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    {
        let mut q = shared.lock();
        for ((topic, partition), part) in q.parts.iter_mut() {
            if let Some(d) = part.durable.filter(|d| Some(*d) != part.committed) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(d));
                part.committed = Some(d);
            }
        }
    }
    let (ours, theirs) = by_consumer(shared, &tpl);
    if ours.count() > 0 {
        if let Err(e) = consumer.commit(&ours, mode) {
            // Kafka's offsets are informative; the store's are the truth.
            tracing::debug!("commit to Kafka: {e}");
        }
    }
    if let Some(r) = shared.retry_reader.get() {
        r.commit(&theirs);
    }
}

/// `tpl` split into the group's partitions and the retry reader's.
pub(crate) fn by_consumer(
    shared: &Shared,
    tpl: &TopicPartitionList,
) -> (TopicPartitionList, TopicPartitionList) {
    let (mut ours, mut theirs) = (TopicPartitionList::new(), TopicPartitionList::new());
    for e in tpl.elements() {
        let into = match shared.retry_topics.contains(e.topic()) {
            true => &mut theirs,
            false => &mut ours,
        };
        let _ = into.add_partition_offset(e.topic(), e.partition(), e.offset());
    }
    (ours, theirs)
}
