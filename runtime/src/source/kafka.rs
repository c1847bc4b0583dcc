//! Kafka: a consumer-group source, retry and dead-letter topics, and the
//! spooled producer that sends them (seeds 000 and 003).
//!
//! **Offsets.** The store is the authority: a partition's next offset is
//! committed in the same batch as the views it produced, and on assignment
//! the consumer seeks there. Kafka's committed offsets follow once a batch
//! is durable, for lag tools only. A revocation finishes the partition's
//! batch in flight, commits the store and then Kafka, and only then
//! releases the partition, so neither a rebalance nor a crash loses or
//! re-applies an event.
//!
//! **Backpressure.** Polled records wait in a bounded queue per partition
//! until the pipeline takes them in batches; a partition whose queue is
//! full is paused and resumed once it has drained to half.
//!
//! **Retries.** An event a plugin failed with a transient error, after the
//! blocking retries, is produced to `<topic>.<group>.retry` with headers
//! naming the plugin, attempt, error, origin and not-before time; the
//! group consumes that topic too, keeps each record in the local delayed
//! queue until due, and retries it there. After the last attempt, or for
//! a permanent failure, the event goes to `<topic>.<group>.dlq` with the
//! same headers. Both topics get as many partitions as their source.
//!
//! **Spool.** Every record the runtime produces is written to the store's
//! spool in the same batch as the work that made it, sent by an idempotent
//! producer, and removed once acknowledged; what is unsent at a stop is
//! sent at the next start.

use crate::engine::{Engine, FailureRoute, Record};
use crate::store::{DeadLetter, OutboxRecord, RetryEntry, Store};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `[source.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Records waiting per partition before it is paused.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_records: usize,
    /// Passed to librdkafka as they are (consumer and producer).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_max_buffered() -> usize {
    16_384
}

impl KafkaConfig {
    /// A config for `bootstrap` with the defaults.
    pub fn new(bootstrap: &str, group: &str, topics: &[&str]) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap.into(),
            group_id: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            max_buffered_records: default_max_buffered(),
            properties: BTreeMap::new(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err("bootstrap_servers: expected host:port[,host:port...]".into());
        }
        if self.group_id.trim().is_empty() {
            return Err("group_id: expected a consumer group name".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err("topics: expected at least one topic name".into());
        }
        if self.max_buffered_records < 2 {
            return Err("max_buffered_records: expected at least 2".into());
        }
        Ok(())
    }

    fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    pub fn retry_topic(&self, topic: &str) -> String {
        format!("{topic}.{}.retry", self.group_id)
    }

    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}.{}.dlq", self.group_id)
    }
}

/// The engine's source id for a topic.
pub fn source_id(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// Headers of retry and dead-letter records.
pub mod header {
    pub const PLUGIN: &str = "projector-plugin";
    pub const ATTEMPT: &str = "projector-attempt";
    pub const ERROR: &str = "projector-error";
    pub const REASON: &str = "projector-reason";
    pub const STAGE: &str = "projector-stage";
    pub const KEY: &str = "projector-view-key";
    pub const TOPIC: &str = "projector-original-topic";
    pub const PARTITION: &str = "projector-original-partition";
    pub const OFFSET: &str = "projector-original-offset";
    pub const NOT_BEFORE: &str = "projector-not-before-ms";
    /// `event`: the payload is the decoded event as JSON; `raw`: the
    /// original record's bytes (it could not be decoded).
    pub const PAYLOAD: &str = "projector-payload";
}

/// Routes the failures of Kafka records to the retry and dead-letter
/// topics of their source topic.
pub struct FailureTopics {
    config: KafkaConfig,
    /// Partitions of each source topic (its retry and dead-letter topics
    /// have as many).
    partitions: HashMap<String, i32>,
}

impl FailureTopics {
    fn topic_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_prefix("kafka:")
            .filter(|t| self.partitions.contains_key(*t))
    }

    fn partition(&self, topic: &str, partition: u32) -> Option<i32> {
        let n = self.partitions.get(topic).copied().unwrap_or(1).max(1);
        Some(partition as i32 % n)
    }
}

impl FailureRoute for FailureTopics {
    fn retry(&self, e: &RetryEntry) -> Option<OutboxRecord> {
        let topic = self.topic_of(&e.source)?;
        Some(OutboxRecord {
            seq: 0,
            topic: self.config.retry_topic(topic),
            partition: self.partition(topic, e.partition),
            key: Some(e.event.key.clone().into_bytes()),
            payload: serde_json::to_vec(&e.event).ok()?,
            headers: vec![
                (header::PLUGIN.into(), e.plugin.clone()),
                (header::ATTEMPT.into(), e.attempt.to_string()),
                (header::ERROR.into(), e.error.clone()),
                (header::KEY.into(), e.key.clone()),
                (header::TOPIC.into(), topic.into()),
                (header::PARTITION.into(), e.partition.to_string()),
                (header::OFFSET.into(), e.offset.to_string()),
                (header::NOT_BEFORE.into(), e.not_before_ms.to_string()),
                (header::PAYLOAD.into(), "event".into()),
            ],
        })
    }

    fn dead_letter(&self, d: &DeadLetter) -> Option<OutboxRecord> {
        let topic = self.topic_of(&d.source)?;
        let (payload, kind) = match (&d.event, &d.raw) {
            (Some(e), _) => (serde_json::to_vec(e).ok()?, "event"),
            (None, Some(raw)) => (raw.clone().into_bytes(), "raw"),
            (None, None) => (Vec::new(), "raw"),
        };
        let attempt = d
            .error
            .strip_prefix("plugin ")
            .and_then(|s| s.split_once(": after "))
            .and_then(|(_, s)| s.split_once(' '))
            .and_then(|(n, _)| n.parse::<u32>().ok())
            .unwrap_or(1);
        let mut headers = vec![
            (header::STAGE.into(), d.stage.clone()),
            (header::REASON.into(), d.reason.clone()),
            (header::ATTEMPT.into(), attempt.to_string()),
            (header::ERROR.into(), d.error.clone()),
            (header::TOPIC.into(), topic.into()),
            (header::PARTITION.into(), d.partition.to_string()),
            (header::OFFSET.into(), d.offset.to_string()),
            (header::PAYLOAD.into(), kind.into()),
        ];
        if let Some(p) = &d.plugin {
            headers.push((header::PLUGIN.into(), p.clone()));
        }
        if let Some(k) = &d.key {
            headers.push((header::KEY.into(), k.clone()));
        }
        Some(OutboxRecord {
            seq: 0,
            topic: self.config.dead_letter_topic(topic),
            partition: self.partition(topic, d.partition),
            key: d.event.as_ref().map(|e| e.key.clone().into_bytes()),
            payload,
            headers,
        })
    }
}

/// The value of header `name` of a message, as text.
pub fn header_of<'a, M: Message>(m: &'a M, name: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A retry record back into a retry entry.
fn retry_entry<M: Message>(m: &M) -> Result<RetryEntry, String> {
    let h = |name: &str| header_of(m, name).ok_or_else(|| format!("header {name} is missing"));
    let num = |name: &str| -> Result<i64, String> {
        h(name)?
            .parse::<i64>()
            .map_err(|e| format!("header {name}: {e}"))
    };
    let event = serde_json::from_slice(m.payload().unwrap_or_default())
        .map_err(|e| format!("payload: {e}"))?;
    Ok(RetryEntry {
        seq: 0,
        plugin: h(header::PLUGIN)?.into(),
        key: h(header::KEY)?.into(),
        attempt: num(header::ATTEMPT)? as u32,
        error: h(header::ERROR)?.into(),
        source: source_id(h(header::TOPIC)?),
        partition: num(header::PARTITION)? as u32,
        offset: num(header::OFFSET)? as u64,
        event,
        not_before_ms: num(header::NOT_BEFORE)?,
    })
}

/// Live counters of a Kafka source.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// The source topics (not their retry topics).
    pub topics: Vec<String>,
    pub consumed: AtomicU64,
    pub batches: AtomicU64,
    /// Times a partition was paused because its queue was full.
    pub pauses: AtomicU64,
    /// Partitions paused now.
    pub paused: AtomicI64,
    /// Records waiting in the queues now, and the most seen at once in
    /// one partition's queue.
    pub buffered: AtomicI64,
    pub max_buffered: AtomicI64,
    pub rebalances: AtomicU64,
    pub consumer_errors: AtomicU64,
    /// Records produced (acknowledged) and waiting in the spool.
    pub produced: AtomicU64,
    pub produce_errors: AtomicU64,
    /// Per (topic, partition): the log end seen and the next offset applied.
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionLag>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    pub end: i64,
    pub next: i64,
}

impl KafkaStats {
    /// Per source topic's engine source id: (partition, log end) of each
    /// partition owned now.
    pub fn source_positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        let parts = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
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
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, l)| (k.clone(), (l.end - l.next).max(0)))
            .collect()
    }
}

/// A polled record waiting for the worker.
enum Queued {
    Event(Record),
    /// A retry topic's record, read with its headers.
    Retry(u64, Box<Result<RetryEntry, String>>),
}

impl Queued {
    fn offset(&self) -> u64 {
        match self {
            Queued::Event(r) => r.offset,
            Queued::Retry(o, _) => *o,
        }
    }
}

/// One assigned partition's queue.
#[derive(Default)]
struct PartQueue {
    records: VecDeque<Queued>,
    paused: bool,
    /// Next offset applied in memory / made durable / committed to Kafka.
    applied: Option<i64>,
    durable: Option<i64>,
    committed: Option<i64>,
}

#[derive(Default)]
struct Queues {
    parts: BTreeMap<(String, i32), PartQueue>,
    /// The partition whose batch the worker is processing.
    in_flight: Option<(String, i32)>,
    /// Round-robin position.
    cursor: Option<(String, i32)>,
    stop: bool,
    failed: Option<String>,
}

struct Shared {
    engine: Arc<Engine>,
    config: KafkaConfig,
    retry_topics: HashSet<String>,
    queues: Mutex<Queues>,
    changed: Condvar,
    stats: Arc<KafkaStats>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a newly assigned partition resumes: the store's offset.
    fn resume(&self, topic: &str, partition: i32) -> crate::engine::Result<u64> {
        let source = source_id(topic);
        if self.retry_topics.contains(topic) {
            self.engine.retry_resume_offset(&source, partition as u32)
        } else {
            self.engine.resume_offset(&source, partition as u32)
        }
    }

    /// Stop feeding `parts`, wait for a batch of theirs in flight, make
    /// the store durable; their next offsets, for Kafka.
    fn release(&self, parts: &[(String, i32)]) -> TopicPartitionList {
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
            q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        let released: Vec<_> = parts
            .iter()
            .filter_map(|p| q.parts.remove(p).map(|part| (p.clone(), part)))
            .collect();
        drop(q);
        if let Err(e) = self.engine.commit() {
            tracing::error!("commit before releasing partitions: {e}");
        }
        let mut tpl = TopicPartitionList::new();
        let mut lags = self
            .stats
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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

struct ConsumerCtx {
    shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = self
            .shared
            .stats
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                if let Some(l) = lags.get_mut(&(topic.clone(), *p)) {
                    l.end = l.end.max(s.hi_offset);
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
        let shared = &self.shared;
        shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assign = TopicPartitionList::new();
                let mut q = shared.lock();
                for (topic, partition) in &parts {
                    let next = match shared.resume(topic, *partition) {
                        Ok(o) => o as i64,
                        Err(e) => {
                            q.failed =
                                Some(format!("reading the offset of {topic}/{partition}: {e}"));
                            continue;
                        }
                    };
                    let _ = assign.add_partition_offset(topic, *partition, Offset::Offset(next));
                    q.parts.insert(
                        (topic.clone(), *partition),
                        PartQueue {
                            applied: Some(next),
                            durable: Some(next),
                            ..Default::default()
                        },
                    );
                    shared
                        .stats
                        .partitions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            (topic.clone(), *partition),
                            PartitionLag { end: next, next },
                        );
                }
                drop(q);
                tracing::info!(partitions = ?parts, "assigned");
                if let Err(e) = consumer.assign(&assign) {
                    tracing::error!("assign: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let offsets = shared.release(&parts);
                if offsets.count() > 0 {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!("commit to Kafka on revocation: {e}");
                    }
                }
                tracing::info!(partitions = ?parts, "revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!("unassign: {e}");
                }
            }
            other => {
                tracing::error!("rebalance error: {other:?}");
                let all: Vec<_> = shared.lock().parts.keys().cloned().collect();
                shared.release(&all);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Totals of a Kafka run.
#[derive(Debug, Default, Clone)]
pub struct KafkaTotals {
    pub records: u64,
    pub applied: u64,
    pub elapsed: Duration,
}

/// A Kafka source at work: the consumer, the worker that feeds the
/// engine, and the spool's producer, each on its thread.
pub struct KafkaRun {
    config: KafkaConfig,
    stop: Arc<AtomicBool>,
    pub stats: Arc<KafkaStats>,
    consumer: Option<std::thread::JoinHandle<anyhow::Result<KafkaTotals>>>,
    spool: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl KafkaRun {
    /// Join the group and consume `config.topics` into `engine` until
    /// [`KafkaRun::stop`].
    pub fn start(
        engine: Arc<Engine>,
        config: KafkaConfig,
        batch_size: usize,
        commit_interval: Duration,
    ) -> anyhow::Result<KafkaRun> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("source.kafka.{e}"))?;
        let partitions = topic_partitions(&config)?;
        create_failure_topics(&config, &partitions)?;
        let route = Arc::new(FailureTopics {
            config: config.clone(),
            partitions: partitions.clone(),
        });
        engine.set_failure_route(Some(route));
        let stats = Arc::new(KafkaStats {
            topics: config.topics.clone(),
            ..Default::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let spool = {
            let (store, config, stats, stop) = (
                engine.store().clone(),
                config.clone(),
                stats.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("projector-spool".into())
                .spawn(move || run_spool(&store, &config, &stats, &stop))?
        };
        let shared_config = config.clone();
        let retry_topics: HashSet<String> = config
            .topics
            .iter()
            .map(|t| config.retry_topic(t))
            .collect();
        let shared = Arc::new(Shared {
            engine,
            config,
            retry_topics,
            queues: Mutex::new(Queues::default()),
            changed: Condvar::new(),
            stats: stats.clone(),
        });
        let consumer = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("projector-kafka".into())
                .spawn(move || consume(shared, batch_size, commit_interval, &stop))?
        };
        Ok(KafkaRun {
            config: shared_config,
            stop,
            stats,
            consumer: Some(consumer),
            spool: Some(spool),
        })
    }

    /// Ask every thread to finish (the batch in flight is completed and
    /// committed, the group is left).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.consumer.as_ref().is_none_or(|c| c.is_finished())
    }

    /// Stop and wait for every thread.
    pub fn join(mut self) -> anyhow::Result<KafkaTotals> {
        self.stop();
        let totals = match self.consumer.take() {
            Some(c) => c
                .join()
                .map_err(|_| anyhow::anyhow!("the Kafka consumer thread panicked"))?,
            None => Ok(KafkaTotals::default()),
        };
        if let Some(s) = self.spool.take() {
            s.join()
                .map_err(|_| anyhow::anyhow!("the spool thread panicked"))??;
        }
        totals
    }
}

impl Drop for KafkaRun {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many partitions each source topic has.
fn topic_partitions(config: &KafkaConfig) -> anyhow::Result<HashMap<String, i32>> {
    let consumer: BaseConsumer = config.client(&[]).create()?;
    let mut out = HashMap::new();
    for topic in &config.topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len() as i32)
                })
                .filter(|n| *n > 0);
            if let Some(n) = found {
                out.insert(topic.clone(), n);
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "source.kafka: topic {topic:?} not found on {} (is the broker up and the topic created?)",
                    config.bootstrap_servers
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(out)
}

/// Create the retry and dead-letter topics of every source topic that
/// lack them, with its partition count. A broker that refuses (or does
/// not offer CreateTopics) gets a warning: the operator creates them, or
/// the broker creates them on first use.
fn create_failure_topics(
    config: &KafkaConfig,
    partitions: &HashMap<String, i32>,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let probe: BaseConsumer = config.client(&[]).create()?;
    let exists = |name: &str| {
        probe
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .is_some_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
    };
    let missing: Vec<(String, i32)> = partitions
        .iter()
        .flat_map(|(t, n)| {
            [
                (config.retry_topic(t), *n),
                (config.dead_letter_topic(t), *n),
            ]
        })
        .filter(|(name, _)| !exists(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.client(&[]).create()?;
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    match rt.block_on(admin.create_topics(&topics, &opts)) {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => tracing::warn!("creating topic {name}: {code}"),
                }
            }
        }
        Err(e) => tracing::warn!(
            topics = ?missing,
            "could not create the retry and dead-letter topics ({e}); create them with these partition counts"
        ),
    }
    Ok(())
}

/// The consumer thread: poll into the queues, pause and resume, commit
/// durable offsets to Kafka; the worker (a scoped thread) feeds the engine.
fn consume(
    shared: Arc<Shared>,
    batch_size: usize,
    commit_interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<KafkaTotals> {
    let started = Instant::now();
    let config = &shared.config;
    let consumer: BaseConsumer<ConsumerCtx> = config
        .client(&[
            ("group.id", config.group_id.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "range"),
            ("queued.max.messages.kbytes", "16384"),
            ("statistics.interval.ms", "1000"),
            ("session.timeout.ms", "10000"),
        ])
        .create_with_context(ConsumerCtx {
            shared: shared.clone(),
        })?;
    let mut topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    topics.extend(shared.retry_topics.iter().map(String::as_str));
    consumer.subscribe(&topics)?;
    let high = config.max_buffered_records;
    let low = high / 2;

    let totals = std::thread::scope(|scope| -> anyhow::Result<KafkaTotals> {
        let worker = scope.spawn(|| work(&shared, batch_size, commit_interval));
        let mut last_commit = Instant::now();
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Some(e) = shared.lock().failed.clone() {
                break Err(anyhow::anyhow!(e));
            }
            // Take what arrived, up to a burst, then look at the queues.
            let mut burst = 0;
            let mut timeout = Duration::from_millis(50);
            while burst < 4096 {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Err(e)) => {
                        shared.stats.consumer_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("kafka: {e}");
                        break;
                    }
                    Some(Ok(m)) => {
                        let queued = enqueue(&shared, &m);
                        burst += 1;
                        timeout = Duration::ZERO;
                        if queued >= high {
                            backpressure(&consumer, &shared, high, low);
                        }
                    }
                }
            }
            backpressure(&consumer, &shared, high, low);
            if last_commit.elapsed() >= commit_interval.max(Duration::from_millis(100)) {
                last_commit = Instant::now();
                commit_kafka(&consumer, &shared, CommitMode::Async);
            }
        };
        {
            let mut q = shared.lock();
            q.stop = true;
            shared.changed.notify_all();
        }
        let worked = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the Kafka worker panicked"))?;
        commit_kafka(&consumer, &shared, CommitMode::Sync);
        result?;
        worked
    });
    // Leave the group deliberately: revocation runs here, on this thread.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !shared.lock().parts.is_empty() {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let mut totals = totals?;
    totals.elapsed = started.elapsed();
    Ok(totals)
}

/// Queue a polled record; how many its partition's queue holds now.
fn enqueue<M: Message>(shared: &Shared, m: &M) -> usize {
    let k = (m.topic().to_string(), m.partition());
    let mut q = shared.lock();
    // A record of a partition no longer assigned is dropped: its owner
    // reads it again from its own offset.
    let Some(part) = q.parts.get_mut(&k) else {
        return 0;
    };
    if part
        .records
        .back()
        .is_some_and(|r| r.offset() as i64 >= m.offset())
    {
        return part.records.len();
    }
    part.records
        .push_back(if shared.retry_topics.contains(m.topic()) {
            Queued::Retry(m.offset() as u64, Box::new(retry_entry(m)))
        } else {
            Queued::Event(Record {
                partition: m.partition() as u32,
                offset: m.offset() as u64,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            })
        });
    let len = part.records.len() as i64;
    shared.stats.consumed.fetch_add(1, Ordering::Relaxed);
    shared.stats.buffered.fetch_add(1, Ordering::Relaxed);
    shared.stats.max_buffered.fetch_max(len, Ordering::Relaxed);
    if let Some(l) = shared
        .stats
        .partitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&k)
    {
        l.end = l.end.max(m.offset() + 1);
    }
    drop(q);
    shared.changed.notify_all();
    len as usize
}

/// Pause partitions whose queue is full; resume those drained to `low`.
fn backpressure(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, high: usize, low: usize) {
    let mut pause = TopicPartitionList::new();
    let mut resume = TopicPartitionList::new();
    {
        let mut q = shared.lock();
        for ((topic, partition), part) in q.parts.iter_mut() {
            let n = part.records.len();
            if !part.paused && n >= high {
                part.paused = true;
                let _ = pause.add_partition(topic, *partition);
            } else if part.paused && n <= low {
                part.paused = false;
                let _ = resume.add_partition(topic, *partition);
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
        if let Err(e) = consumer.pause(&pause) {
            tracing::warn!("pause: {e}");
        }
    }
    if resume.count() > 0 {
        shared
            .stats
            .paused
            .fetch_sub(resume.count() as i64, Ordering::Relaxed);
        if let Err(e) = consumer.resume(&resume) {
            tracing::warn!("resume: {e}");
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
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Kafka's offsets are informative; the store's are the truth.
            tracing::debug!("commit to Kafka: {e}");
        }
    }
}

/// The worker: take batches from the queues in turn, feed the engine,
/// commit the store at the commit interval and publish what is durable.
fn work(
    shared: &Shared,
    batch_size: usize,
    commit_interval: Duration,
) -> anyhow::Result<KafkaTotals> {
    let mut totals = KafkaTotals::default();
    let mut last_commit = Instant::now();
    let mut retried_at = Instant::now();
    let fail = |e: String| {
        shared.lock().failed = Some(e.clone());
        anyhow::anyhow!(e)
    };
    loop {
        let next = {
            let mut q = shared.lock();
            loop {
                if q.stop {
                    break None;
                }
                if let Some(taken) = take_batch(&mut q, batch_size) {
                    break Some(taken);
                }
                let (guard, _) = shared
                    .changed
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
                q = guard;
                if retried_at.elapsed() >= Duration::from_millis(100)
                    || last_commit.elapsed() >= commit_interval
                {
                    break Some(((String::new(), -1), Vec::new()));
                }
            }
        };
        let Some(((topic, partition), batch)) = next else {
            break;
        };
        if !batch.is_empty() {
            shared
                .stats
                .buffered
                .fetch_sub(batch.len() as i64, Ordering::Relaxed);
            let last = batch.last().map_or(0, |r| r.offset() as i64);
            let n = batch.len() as u64;
            let source = source_id(&topic);
            let mut events = Vec::new();
            let mut retries = Vec::new();
            for item in batch {
                match item {
                    Queued::Event(r) => events.push(r),
                    Queued::Retry(o, e) => retries.push((o, *e)),
                }
            }
            let outcome = shared
                .engine
                .enqueue_retries(&source, partition as u32, retries)
                .and_then(|()| shared.engine.process(&source, partition as u32, &events));
            let summary = outcome.map_err(|e| fail(format!("{topic}/{partition}: {e}")))?;
            totals.records += n;
            totals.applied += summary.total().applied;
            shared.stats.batches.fetch_add(1, Ordering::Relaxed);
            let mut q = shared.lock();
            q.in_flight = None;
            if let Some(part) = q.parts.get_mut(&(topic.clone(), partition)) {
                part.applied = Some(last + 1);
            }
            drop(q);
            shared.changed.notify_all();
            if let Some(l) = shared
                .stats
                .partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&(topic, partition))
            {
                l.next = last + 1;
            }
        }
        if retried_at.elapsed() >= Duration::from_millis(100) {
            retried_at = Instant::now();
            shared
                .engine
                .retry_due(crate::engine::now_ms())
                .map_err(|e| fail(format!("retries: {e}")))?;
        }
        if last_commit.elapsed() >= commit_interval {
            last_commit = Instant::now();
            durable(shared).map_err(|e| fail(format!("commit: {e}")))?;
        }
    }
    durable(shared).map_err(|e| fail(format!("commit: {e}")))?;
    Ok(totals)
}

/// Commit the store, then mark what was applied as durable.
fn durable(shared: &Shared) -> crate::engine::Result<()> {
    let applied: Vec<_> = shared
        .lock()
        .parts
        .iter()
        .map(|(k, p)| (k.clone(), p.applied))
        .collect();
    shared.engine.commit()?;
    let mut q = shared.lock();
    for (k, a) in applied {
        if let Some(part) = q.parts.get_mut(&k) {
            part.durable = a;
        }
    }
    Ok(())
}

/// The next batch in round-robin order, marked in flight.
fn take_batch(q: &mut Queues, max: usize) -> Option<((String, i32), Vec<Queued>)> {
    let keys: Vec<(String, i32)> = q.parts.keys().cloned().collect();
    if keys.is_empty() {
        return None;
    }
    let start = q
        .cursor
        .as_ref()
        .and_then(|c| keys.iter().position(|k| k > c))
        .unwrap_or(0);
    for i in 0..keys.len() {
        let k = &keys[(start + i) % keys.len()];
        let part = q.parts.get_mut(k).expect("a listed partition");
        if part.records.is_empty() {
            continue;
        }
        let n = part.records.len().min(max);
        let batch: Vec<Queued> = part.records.drain(..n).collect();
        q.cursor = Some(k.clone());
        q.in_flight = Some(k.clone());
        return Some((k.clone(), batch));
    }
    None
}

/// Delivery reports of the spool's producer, by spool sequence number.
#[derive(Default)]
struct SpoolCtx {
    acked: Mutex<Vec<u64>>,
    failed: Mutex<Vec<(u64, String)>>,
}

impl ClientContext for SpoolCtx {}

impl ProducerContext for SpoolCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self
                .acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(seq as u64),
            Err((e, _)) => self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((seq as u64, e.to_string())),
        }
    }
}

/// Most records in flight to the broker at once.
const SPOOL_IN_FLIGHT: usize = 10_000;

/// The spool's producer: send what the store's spool holds, oldest first,
/// with idempotence; remove each record once the broker acknowledged it.
/// On stop, wait a little for what is in flight; the rest stays spooled
/// for the next start.
pub fn run_spool(
    store: &Store,
    config: &KafkaConfig,
    stats: &KafkaStats,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let producer: BaseProducer<SpoolCtx> = config
        .client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ])
        .create_with_context(SpoolCtx::default())?;
    let mut in_flight: HashSet<u64> = HashSet::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && in_flight.len() < SPOOL_IN_FLIGHT {
            let room = (SPOOL_IN_FLIGHT - in_flight.len()).min(1000);
            for record in store.outbox(&in_flight, room)? {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (k, v) in &record.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let mut r: BaseRecord<'_, Vec<u8>, Vec<u8>, usize> =
                    BaseRecord::with_opaque_to(&record.topic, record.seq as usize)
                        .payload(&record.payload)
                        .headers(headers);
                if let Some(k) = &record.key {
                    r = r.key(k);
                }
                if let Some(p) = record.partition {
                    r = r.partition(p);
                }
                match producer.send(r) {
                    Ok(()) => {
                        in_flight.insert(record.seq);
                    }
                    Err((KafkaError::MessageProduction(_), _)) => break, // queue full
                    Err((e, _)) => {
                        stats.produce_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = record.topic, "produce: {e}");
                        break;
                    }
                }
            }
        }
        producer.poll(Duration::from_millis(20));
        let acked: Vec<u64> = std::mem::take(
            &mut *producer
                .context()
                .acked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !acked.is_empty() {
            store.remove_outbox(&acked)?;
            for s in &acked {
                in_flight.remove(s);
            }
            stats
                .produced
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
        }
        let failed = std::mem::take(
            &mut *producer
                .context()
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (seq, e) in failed {
            // Sent again on a later round.
            stats.produce_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(seq, "delivery failed, kept in the spool: {e}");
            in_flight.remove(&seq);
        }
        if stopping {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if in_flight.is_empty() || since.elapsed() > Duration::from_secs(5) {
                break;
            }
        } else if in_flight.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    store.flush()?;
    if !in_flight.is_empty() {
        tracing::info!(
            records = in_flight.len(),
            "stopping with unacknowledged records; they stay spooled"
        );
    }
    // Anything librdkafka still holds is dropped: the spool has it.
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    Ok(())
}

/// The source topics read from their earliest records, for shadow
/// rebuilds: the partitions this instance owns, read with a consumer of
/// its own (no group).
pub struct KafkaRetained {
    stats: Arc<KafkaStats>,
    consumer: Mutex<BaseConsumer>,
}

impl KafkaRun {
    /// A reader of the retained source topics (see [`KafkaRetained`]).
    pub fn retained(&self) -> anyhow::Result<KafkaRetained> {
        Ok(KafkaRetained {
            stats: self.stats.clone(),
            consumer: Mutex::new({
                // Assigned by hand, never joined: the group id is required
                // by librdkafka only.
                let group = format!("{}.shadow", self.config.group_id);
                self.config
                    .client(&[("group.id", &group), ("enable.auto.commit", "false")])
                    .create()?
            }),
        })
    }
}

impl KafkaRetained {
    fn owned(&self) -> Vec<(String, i32)> {
        self.stats
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(t, _)| self.stats.topics.contains(t))
            .cloned()
            .collect()
    }
}

impl crate::registry::Retained for KafkaRetained {
    fn partitions(&self) -> Vec<(String, u32)> {
        self.owned()
            .into_iter()
            .map(|(t, p)| (source_id(&t), p as u32))
            .collect()
    }

    fn complete(&self) -> bool {
        let consumer = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        self.owned().iter().all(|(t, p)| {
            consumer
                .fetch_watermarks(t, *p, Duration::from_secs(10))
                .is_ok_and(|(low, _)| low == 0)
        })
    }

    fn read(
        &self,
        source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        let topic = source
            .strip_prefix("kafka:")
            .ok_or_else(|| anyhow::anyhow!("{source} is not a Kafka source"))?;
        let consumer = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        let (_, high) =
            consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(10))?;
        let mut out = Vec::new();
        if from as i64 >= high {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from as i64))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < max && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.offset() < from as i64 {
                        continue;
                    }
                    out.push(Record {
                        partition,
                        offset: m.offset() as u64,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        let _ = consumer.unassign();
        Ok(out)
    }
}
