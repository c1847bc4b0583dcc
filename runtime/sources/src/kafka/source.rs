//! The Kafka source as the pipeline sees it: batches taken from the
//! consumer's queues in turn, finished batches marked applied, commits
//! marked durable (the consumer then commits them to Kafka).

use super::admin::{create_failure_topics, create_topics, topic_partitions};
use super::config::{source_id, KafkaConfig};
use super::consumer::{consume, Queued, Queues, Shared};
use super::ends::run_ends;
use super::members::Members;
use super::placement::Placement;
use super::replay::KafkaRetained;
use super::restore::Followers;
use super::route::FailureTopics;
use super::spool::run_spool;
use super::standby::run_standby;
use super::stats::KafkaStats;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::engine::{Changelog, FailureRoute};
use projector_core::source::{Batch, Next, Replay, Router, Source, SourceHost, SourceMetric};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A consumer-group source: the consumer and the spool's producer run on
/// threads of their own from [`Source::start`] to [`Source::close`].
pub struct KafkaSource {
    config: KafkaConfig,
    /// Live counters, shared with the API's metrics.
    pub stats: Arc<KafkaStats>,
    /// Stops the consumer and the spool, once the pipeline is done.
    stop: Shutdown,
    started: OnceLock<Started>,
    threads: Mutex<Vec<Worker>>,
}

/// A thread of the source's own, by name.
type Worker = (&'static str, JoinHandle<anyhow::Result<()>>);

/// What exists once the source has started.
struct Started {
    shared: Arc<Shared>,
    route: Arc<FailureTopics>,
    replay: Arc<KafkaRetained>,
    /// With `changelog = true`: where views live, and the membership.
    placement: Option<Arc<Placement>>,
    members: Option<Arc<Members>>,
}

impl KafkaSource {
    /// A source for `config` (checked here; nothing connects until
    /// [`Source::start`]).
    pub fn new(config: KafkaConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("source.kafka.{e}"))?;
        let stats = Arc::new(KafkaStats {
            topics: config.topics.clone(),
            ..Default::default()
        });
        Ok(KafkaSource {
            config,
            stats,
            stop: Shutdown::new(),
            started: OnceLock::new(),
            threads: Mutex::default(),
        })
    }

    /// A reader of the retained source topics (once started).
    pub(crate) fn retained(&self) -> Option<Arc<KafkaRetained>> {
        self.started.get().map(|s| s.replay.clone())
    }

    fn shared(&self) -> anyhow::Result<&Arc<Shared>> {
        self.started
            .get()
            .map(|s| &s.shared)
            .ok_or_else(|| anyhow::anyhow!("the Kafka source is not started"))
    }
}

impl Source for KafkaSource {
    fn start(&self, host: Arc<dyn SourceHost>) -> anyhow::Result<()> {
        let config = &self.config;
        let partitions = topic_partitions(config)?;
        create_failure_topics(config, &partitions)?;
        let placement = if config.changelog {
            let counts: std::collections::BTreeSet<i32> = partitions.values().copied().collect();
            if counts.len() > 1 {
                anyhow::bail!(
                    "source.kafka.changelog: every source topic must have as many partitions \
                     (a view lives on one partition number); they have {partitions:?}"
                );
            }
            let n = counts.first().copied().unwrap_or(1);
            let plugins = host.plugins();
            let mut wanted: Vec<(String, i32, bool)> = plugins
                .iter()
                .map(|p| (config.changelog_topic(p), n, true))
                .collect();
            wanted.push((config.members_topic(), 1, true));
            create_topics(config, &wanted, "the changelog and members topics")?;
            Some(Arc::new(
                Placement::new(config.clone(), n as u32, plugins.into_iter().collect())
                    .owned_by(self.stats.clone()),
            ))
        } else {
            None
        };
        let members = placement
            .as_ref()
            .map(|p| Arc::new(Members::new(config, p.clone(), self.stats.clone())));
        let followers: Arc<Followers> = Arc::default();
        let route = Arc::new(FailureTopics {
            config: config.clone(),
            partitions,
        });
        let retry_topics: HashSet<String> = config
            .topics
            .iter()
            .map(|t| config.retry_topic(t))
            .collect();
        let shared = Arc::new(Shared {
            host: host.clone(),
            format: host.format(),
            config: config.clone(),
            retry_topics,
            queues: Mutex::new(Queues::default()),
            changed: Condvar::new(),
            stats: self.stats.clone(),
            members: members.clone(),
            followers: followers.clone(),
            restores: Default::default(),
            retry_reader: Default::default(),
        });
        let replay = Arc::new(KafkaRetained::new(config, self.stats.clone())?);
        if self
            .started
            .set(Started {
                shared: shared.clone(),
                route,
                replay,
                placement,
                members: members.clone(),
            })
            .is_err()
        {
            anyhow::bail!("the Kafka source is already started");
        }
        let mut threads = self.threads.lock().recover();
        let (spool, cfg, stats, stop) = (
            host.spool(),
            config.clone(),
            self.stats.clone(),
            self.stop.clone(),
        );
        threads.push((
            "spool",
            std::thread::Builder::new()
                .name("projector-spool".into())
                .spawn(move || run_spool(spool.as_ref(), &cfg, &stats, &stop))?,
        ));
        if let Some(members) = members {
            if config.standby_replicas > 0 {
                let (host, members, stop) = (host.clone(), members.clone(), self.stop.clone());
                threads.push((
                    "standby",
                    std::thread::Builder::new()
                        .name("projector-standby".into())
                        .spawn(move || run_standby(host.as_ref(), &members, &followers, &stop))?,
                ));
            }
            let (stop, reader) = (self.stop.clone(), members.clone());
            threads.push((
                "members",
                std::thread::Builder::new()
                    .name("projector-members".into())
                    .spawn(move || reader.run(&stop))?,
            ));
            // Know the others before serving reads (a read routed with an
            // empty table would be refused): a few seconds at most.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !members.loaded.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let (cfg, stats, stop) = (config.clone(), self.stats.clone(), self.stop.clone());
        threads.push((
            "ends",
            std::thread::Builder::new()
                .name("projector-ends".into())
                .spawn(move || {
                    run_ends(&cfg, &stats, &stop);
                    Ok(())
                })?,
        ));
        let stop = self.stop.clone();
        threads.push((
            "consumer",
            std::thread::Builder::new()
                .name("projector-kafka".into())
                .spawn(move || consume(shared, &stop))?,
        ));
        Ok(())
    }

    fn next_batch(&self, max: usize, wait: Duration) -> anyhow::Result<Next> {
        let shared = self.shared()?;
        let deadline = Instant::now() + wait;
        let mut q = shared.lock();
        loop {
            if let Some(e) = &q.failed {
                anyhow::bail!("{e}");
            }
            if let Some(((topic, partition), taken)) = take_batch(&mut q, max) {
                drop(q);
                shared
                    .stats
                    .buffered
                    .fetch_sub(taken.len() as i64, Ordering::Relaxed);
                let mut batch = Batch {
                    source: source_id(&topic),
                    partition: partition as u32,
                    ..Default::default()
                };
                batch.records.reserve(taken.len());
                for item in taken {
                    match item {
                        Queued::Event(r) => batch.records.push(r),
                        Queued::Retry(o, e) => batch.retries.push((o, *e)),
                    }
                }
                return Ok(Next::Batch(batch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.is_stopped() {
                return Ok(Next::Idle);
            }
            q = shared.changed.wait_timeout(q, left).recover().0;
        }
    }

    fn finished(&self, batch: &Batch, applied: bool) {
        let Ok(shared) = self.shared() else { return };
        let topic = batch
            .source
            .strip_prefix("kafka:")
            .unwrap_or(&batch.source)
            .to_string();
        let k = (topic, batch.partition as i32);
        let next = batch.next_offset().map(|n| n as i64);
        {
            let mut q = shared.lock();
            q.in_flight = None;
            if let (true, Some(next), Some(part)) = (applied, next, q.parts.get_mut(&k)) {
                part.applied = Some(next);
            }
        }
        shared.changed.notify_all();
        if !applied {
            return;
        }
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let (Some(next), Some(l)) = (next, shared.stats.partitions.lock().recover().get_mut(&k))
        {
            l.next = next;
        }
    }

    fn durable(&self) {
        let Ok(shared) = self.shared() else { return };
        let mut q = shared.lock();
        for part in q.parts.values_mut() {
            part.durable = part.applied;
        }
    }

    fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.stats.source_positions()
    }

    fn unknown_ends(&self) -> Vec<(String, u32)> {
        self.stats.unknown_positions()
    }

    fn replay(&self) -> Option<Arc<dyn Replay>> {
        self.retained().map(|r| r as Arc<dyn Replay>)
    }

    fn failure_route(&self) -> Option<Arc<dyn FailureRoute>> {
        self.started
            .get()
            .map(|s| s.route.clone() as Arc<dyn FailureRoute>)
    }

    fn changelog(&self) -> Option<Arc<dyn Changelog>> {
        self.started
            .get()
            .and_then(|s| s.placement.clone())
            .map(|p| p as Arc<dyn Changelog>)
    }

    fn router(&self) -> Option<Arc<dyn Router>> {
        self.started
            .get()
            .and_then(|s| s.members.clone())
            .map(|m| m as Arc<dyn Router>)
    }

    fn metrics(&self) -> Vec<SourceMetric> {
        let spooled = self
            .started
            .get()
            .map_or(0, |s| s.shared.host.spool().pending());
        self.stats.metrics(spooled)
    }

    fn close(&self) -> anyhow::Result<()> {
        self.stop.stop();
        if let Ok(shared) = self.shared() {
            shared.changed.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().recover());
        let mut result = Ok(());
        for (name, t) in threads {
            let joined = t
                .join()
                .map_err(|_| anyhow::anyhow!("the Kafka {name} thread panicked"))
                .and_then(|r| r);
            if let (Err(e), Ok(())) = (joined, &result) {
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing the Kafka source: {e}");
        }
    }
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
