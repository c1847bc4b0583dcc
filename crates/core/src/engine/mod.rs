//! The projection engine: batches of records in, atomic store commits
//! out.
//!
//! For each batch the engine decodes every record once, then for each
//! loaded projection: asks the plugin which view keys each event touches
//! (one call for the batch), groups the events by key keeping their order,
//! folds each key's events through the version rules and the plugin's
//! `apply` (one call per key and batch; keys spread over worker threads),
//! and keeps the new views in memory while the dead letters, counters and
//! next offsets go into the pending [`Writer`]. At most every commit
//! interval (and on [`Engine::commit`]) the changed views join that writer
//! and everything is committed atomically, so on restart each projection
//! resumes exactly after what it stored, redoing only uncommitted work.
//!
//! Called by the pipelines of the sources crate and by readers
//! ([`Engine::read`], [`Engine::snapshot`]). It never reads a source
//! itself.

use crate::envelope::{self, DecodeError, Format};
use crate::record::{now_ms, Record};
use crate::retry::RetryConfig;
use crate::store::{
    AuditRun, Counters, DeadLetter, OutboxRecord, RetryEntry, Store, ViewRecord, Writer,
};
use compact_str::CompactString;
use projector_guest::rules::{self, CallError, Decision, Status, Verdict, Versions, View};
use projector_guest::{ApplyResult, Event, Outcome, Population};
use projector_host::{self as plugin, EventBatch, Session, SharedCode};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::value::RawValue;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("unknown plugin {0:?}")]
    UnknownPlugin(String),
    #[error("plugin {0:?} is already loaded")]
    Duplicate(String),
    #[error("bad view key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    #[error("plugin {plugin}: {message}")]
    Guest { plugin: String, message: String },
    #[error("a store commit failed, so nothing more is committed until a restart: {0}")]
    CommitFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A loaded projection: its code and where its views live.
pub struct Projection {
    code: SharedCode,
    /// Namespace of its views, offsets and counters.
    ns: String,
    population: Population,
    counters: Mutex<Counters>,
    /// Views as the engine last wrote them, ahead of the store until the
    /// next commit (`None`: known absent), and kept after it as a cache.
    views: Arc<RwLock<ViewCache>>,
    /// Keys changed since the last commit.
    dirty: Arc<Mutex<FxHashSet<CompactString>>>,
    /// Rendered answers, when the plugin's render ignores the read time.
    rendered: RwLock<RenderCache>,
    /// Events queued for a delayed retry since start.
    retried: AtomicU64,
    /// A generation that does not serve reads (being built, or kept
    /// beside the active one).
    shadow: AtomicBool,
    /// Being rebuilt from the log, not yet fed by live batches.
    building: AtomicBool,
}

/// Rendered answers by key, each with the state it was rendered from: an
/// entry serves a read only while the view still holds that state, so a
/// view change (or a render racing one) can never serve a stale answer.
#[derive(Default)]
struct RenderCache {
    entries: FxHashMap<String, (Vec<u8>, Arc<RawValue>)>,
    bytes: usize,
}

/// Bytes of rendered answers (and their states) kept per projection; the
/// cache starts over when full.
const RENDER_CACHE_BYTES: usize = 256 << 20;

/// Views kept per generation of a projection's view cache, at most (the
/// views changed since the last commit are kept whatever their number).
const VIEW_CACHE_ENTRIES: usize = 200_000;

/// A projection's views in memory, in two generations: `young` takes every
/// view the engine writes; once it is past [`VIEW_CACHE_ENTRIES`] after a
/// commit (so nothing in it is dirty), it becomes `old` and the previous
/// `old` is dropped. A lookup tries `young`, then `old`, so the views in
/// use survive a turnover instead of all being read back from the store.
///
/// Keys are `CompactString`s: a view key of up to 24 bytes is kept inline,
/// so caching a view and marking it dirty allocate nothing for its key.
#[derive(Default)]
struct ViewCache {
    young: FxHashMap<CompactString, Option<ViewRecord>>,
    old: FxHashMap<CompactString, Option<ViewRecord>>,
}

impl ViewCache {
    fn get(&self, key: &str) -> Option<&Option<ViewRecord>> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Start a new generation if `young` is full; only after a commit.
    fn turn_over(&mut self) {
        if self.young.len() > VIEW_CACHE_ENTRIES {
            self.old = std::mem::take(&mut self.young);
        }
    }
}

impl Projection {
    /// The current view of `key`: in memory if changed or read lately,
    /// else from the store.
    fn view(&self, store: &Store, key: &str) -> Result<Option<ViewRecord>> {
        if let Some(v) = self
            .views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(v.clone());
        }
        Ok(store.view(&self.ns, key)?)
    }

    fn set_view(&self, key: &str, record: Option<ViewRecord>) {
        {
            let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
            match views.young.get_mut(key) {
                Some(slot) => *slot = record,
                None => {
                    views.young.insert(key.into(), record);
                }
            }
        }
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !dirty.contains(key) {
            dirty.insert(key.into());
        }
    }

    /// The plugin's answer for `state`, from the render cache when the
    /// plugin allows it. The answer is checked (size, JSON) before use.
    fn render(&self, key: &str, state: &[u8], now_ms: i64) -> Result<Arc<RawValue>> {
        let cacheable = !self.code.info().render_uses_time;
        if cacheable {
            let cache = self.rendered.read().unwrap_or_else(|p| p.into_inner());
            if let Some((from, answer)) = cache.entries.get(key) {
                if from.as_slice() == state {
                    return Ok(answer.clone());
                }
            }
        }
        let plugin = self.code.name();
        let text = self
            .code
            .session()
            .render(key, state, now_ms)?
            .map_err(|e| Error::Guest {
                plugin: plugin.into(),
                message: format!("render: {e}"),
            })?;
        let limit = self.code.limits().max_render_bytes;
        if text.len() > limit {
            return Err(plugin::Error::BadOutput {
                plugin: plugin.into(),
                message: format!(
                    "render gave {} bytes, over the {limit}-byte limit",
                    text.len()
                ),
            }
            .into());
        }
        let answer: Arc<RawValue> = RawValue::from_string(text)
            .map_err(|e| plugin::Error::BadOutput {
                plugin: plugin.into(),
                message: format!("render gave invalid JSON: {e}"),
            })?
            .into();
        if cacheable {
            let mut cache = self.rendered.write().unwrap_or_else(|p| p.into_inner());
            let size = key.len() + state.len() + answer.get().len();
            if cache.bytes + size > RENDER_CACHE_BYTES {
                *cache = RenderCache::default();
            }
            cache.bytes += size;
            if let Some((old, a)) = cache
                .entries
                .insert(key.to_string(), (state.to_vec(), answer.clone()))
            {
                cache.bytes -= key.len() + old.len() + a.get().len();
            }
        }
        Ok(answer)
    }

    pub fn name(&self) -> &str {
        self.code.name()
    }
    pub fn code(&self) -> &SharedCode {
        &self.code
    }
    pub fn population(&self) -> Population {
        self.population
    }
    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Where its views, offsets and counters live.
    pub fn ns(&self) -> &str {
        &self.ns
    }
    pub fn is_shadow(&self) -> bool {
        self.shadow.load(Ordering::Relaxed)
    }
    pub fn is_building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }
    /// Events queued for a delayed retry since start.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub records: u64,
    pub decode_errors: u64,
    /// Per projection name.
    pub counters: Vec<(String, Counters)>,
}

impl BatchSummary {
    /// Counts summed over every projection.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for (_, c) in &self.counters {
            t.add(c);
        }
        t
    }
}

/// A view as a reader gets it.
#[derive(Debug, Clone)]
pub struct ReadView {
    pub status: Status,
    pub versions: Versions,
    pub updated_ms: i64,
    /// The plugin's rendered answer (checked JSON); `None` unless Valid.
    pub body: Option<Arc<RawValue>>,
}

impl PartialEq for ReadView {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.versions == other.versions
            && self.updated_ms == other.updated_ms
            && self.body.as_ref().map(|b| b.get()) == other.body.as_ref().map(|b| b.get())
    }
}

impl ReadView {
    /// The rendered answer as a JSON value.
    pub fn json(&self) -> Option<serde_json::Value> {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_str(b.get()).ok())
    }
}

/// Where delayed retries and dead letters go besides the store: a Kafka
/// source sends them to its retry and dead-letter topics through the
/// spool, in the same atomic batch as the offsets.
pub trait FailureRoute: Send + Sync {
    /// The record that carries a delayed retry, or `None` to keep it in
    /// the local retry queue.
    fn retry(&self, entry: &RetryEntry) -> Option<OutboxRecord>;
    /// The record that carries a dead letter, if its source has a
    /// dead-letter topic (the letter is kept in the store either way).
    fn dead_letter(&self, letter: &DeadLetter) -> Option<OutboxRecord>;
}

type Route<'a> = Option<&'a dyn FailureRoute>;

/// Queue a delayed retry where its source's route sends it.
fn queue_retry(writer: &mut Writer, route: Route, entry: RetryEntry) -> Result<()> {
    match route.and_then(|r| r.retry(&entry)) {
        Some(record) => writer.outbox(record)?,
        None => writer.retry(entry)?,
    }
    Ok(())
}

/// Keep a dead letter, and send it where its source's route says.
fn record_dead_letter(writer: &mut Writer, route: Route, letter: DeadLetter) -> Result<()> {
    if let Some(record) = route.and_then(|r| r.dead_letter(&letter)) {
        writer.outbox(record)?;
    }
    writer.dead_letter(letter)?;
    Ok(())
}

/// Namespace of the offsets of retry topics (records moved to the local
/// retry queue).
const RETRY_NS: &str = "@retry";

/// Namespace that tracks which records were already decoded (so a decode
/// error is dead-lettered once, whatever projections are loaded).
const DECODE_NS: &str = "@decode";

pub struct Engine {
    store: Store,
    format: Format,
    workers: usize,
    commit_interval: Duration,
    projections: RwLock<Vec<Arc<Projection>>>,
    /// Serializes read-modify-write of views (batches and snapshots) and
    /// holds what is not committed yet.
    write: Mutex<Pending>,
    /// Next offset per (namespace, source, partition) applied in memory,
    /// for readers: kept apart from `write` so reads never wait on a batch.
    applied: RwLock<HashMap<(String, String, u32), u64>>,
    /// Counts batches; changes after each one (read-your-writes waits on it).
    progress: tokio::sync::watch::Sender<u64>,
    retry: RetryConfig,
    route: RwLock<Option<Arc<dyn FailureRoute>>>,
    commits: Mutex<CommitStats>,
}

/// What store commits have cost since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitStats {
    pub commits: u64,
    /// Views put or removed.
    pub views: u64,
    /// Time spent in the store's atomic batch.
    pub seconds: f64,
}

/// Work applied in memory but not yet committed to the store.
#[derive(Default)]
struct Pending {
    writer: Option<Writer>,
    /// Next offset per (namespace, source, partition), ahead of the store.
    offsets: HashMap<(String, String, u32), u64>,
    since: Option<Instant>,
    /// The current audit run per (namespace, source, partition).
    audit: HashMap<(String, String, u32), AuditRun>,
    /// Set once a commit failed: what was applied since the last good one
    /// is not durable, so nothing may be committed after it (a restart
    /// redoes it from the stored offsets).
    failed: Option<String>,
}

impl Pending {
    /// Note that `version` applied `from..next`: extends the current run
    /// when it is the same version and contiguous, else starts one.
    #[allow(clippy::too_many_arguments)]
    fn audit(
        &mut self,
        writer: &mut Writer,
        ns: &str,
        version: &str,
        source: &str,
        partition: u32,
        from: u64,
        next: u64,
    ) {
        let run = self
            .audit
            .entry((ns.to_string(), source.to_string(), partition))
            .or_insert_with(|| AuditRun {
                source: source.into(),
                partition,
                from,
                next: from,
                version: version.into(),
            });
        if run.version != version || run.next != from {
            *run = AuditRun {
                source: source.into(),
                partition,
                from,
                next: from,
                version: version.into(),
            };
        }
        run.next = next;
        writer.audit(ns, run);
    }

    /// Fail once a commit has failed (see `failed`).
    fn healthy(&self) -> Result<()> {
        match &self.failed {
            Some(reason) => Err(Error::CommitFailed(reason.clone())),
            None => Ok(()),
        }
    }

    fn offset(&mut self, store: &Store, ns: &str, source: &str, partition: u32) -> Result<u64> {
        let k = (ns.to_string(), source.to_string(), partition);
        if let Some(o) = self.offsets.get(&k) {
            return Ok(*o);
        }
        let o = store.offset(ns, source, partition)?.unwrap_or(0);
        self.offsets.insert(k, o);
        Ok(o)
    }
}

impl Engine {
    /// An engine that commits to `store` at most every `commit_interval`
    /// (zero: after every batch). Work applied since the last commit is
    /// redone after a crash, from the offsets committed with the views.
    pub fn new(store: Store, format: Format, workers: usize, commit_interval: Duration) -> Self {
        Engine {
            store,
            format,
            workers: workers.max(1),
            commit_interval,
            projections: RwLock::new(Vec::new()),
            write: Mutex::new(Pending::default()),
            applied: RwLock::new(HashMap::new()),
            progress: tokio::sync::watch::Sender::new(0),
            retry: RetryConfig::default(),
            route: RwLock::new(None),
            commits: Mutex::default(),
        }
    }

    /// Send delayed retries and dead letters along `route` from now on.
    pub fn set_failure_route(&self, route: Option<Arc<dyn FailureRoute>>) {
        *self.route.write().unwrap_or_else(|p| p.into_inner()) = route;
    }

    fn route(&self) -> Option<Arc<dyn FailureRoute>> {
        self.route.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Move records of a retry topic into the local retry queue, in order
    /// (`None`: a record that is not a retry, dead-lettered as such), with
    /// the topic's next offset in the same batch.
    pub fn enqueue_retries(
        &self,
        source: &str,
        partition: u32,
        records: &[(u64, Result<RetryEntry, String>)],
    ) -> Result<()> {
        let Some(next) = records.last().map(|(o, _)| o + 1) else {
            return Ok(());
        };
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let from = pending.offset(&self.store, RETRY_NS, source, partition)?;
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        for (offset, entry) in records.iter().filter(|(o, _)| *o >= from) {
            match entry {
                Ok(entry) => writer.retry(entry.clone())?,
                Err(error) => writer.dead_letter(DeadLetter {
                    seq: 0,
                    plugin: None,
                    stage: "retry".into(),
                    reason: "decode".into(),
                    error: error.clone(),
                    source: source.into(),
                    partition,
                    offset: *offset,
                    key: None,
                    event: None,
                    raw: None,
                    at_ms: now_ms(),
                })?,
            }
        }
        writer.set_offset(RETRY_NS, source, partition, next);
        pending
            .offsets
            .insert((RETRY_NS.to_string(), source.to_string(), partition), next);
        pending.writer = Some(writer);
        Ok(())
    }

    /// Where a retry topic's partition resumes.
    pub fn retry_resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        pending.offset(&self.store, RETRY_NS, source, partition)
    }

    /// Commit everything applied so far: views, offsets, counters and dead
    /// letters, in one atomic batch.
    pub fn commit(&self) -> Result<()> {
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_locked(&mut pending)
    }

    fn commit_locked(&self, pending: &mut Pending) -> Result<()> {
        pending.healthy()?;
        let Some(mut writer) = pending.writer.take() else {
            return Ok(());
        };
        let projections = self.all();
        let mut views_written = 0;
        for p in &projections {
            let dirty: Vec<CompactString> = p
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            let views = p.views.read().unwrap_or_else(|e| e.into_inner());
            views_written += dirty.len() as u64;
            for key in dirty {
                match views.get(&key) {
                    Some(Some(record)) => writer.put_view(&p.ns, &key, record),
                    Some(None) => writer.remove_view(&p.ns, &key),
                    None => unreachable!("a dirty key stays in the view cache until committed"),
                }
            }
        }
        let started = Instant::now();
        if let Err(e) = self.store.commit(writer) {
            pending.failed = Some(e.to_string());
            return Err(e.into());
        }
        {
            let mut c = self.commits.lock().unwrap_or_else(|e| e.into_inner());
            c.commits += 1;
            c.views += views_written;
            c.seconds += started.elapsed().as_secs_f64();
        }
        pending.since = None;
        for p in &projections {
            p.views
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .turn_over();
        }
        Ok(())
    }

    /// Commit when the interval has passed since the first change (at
    /// once with a zero interval).
    ///
    /// The commit runs on the processing thread: sled 0.34 holds a global
    /// lock for a whole batch that every read takes too, so a commit
    /// running behind stalls the reads of the batches it should overlap
    /// (measured slower with `./scripts/bench.sh inbox`).
    fn commit_due(&self, pending: &mut Pending) -> Result<()> {
        let since = *pending.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.commit_interval {
            self.commit_locked(pending)?;
        }
        Ok(())
    }

    /// How often pending work is committed, at most.
    pub fn commit_interval(&self) -> Duration {
        self.commit_interval
    }

    /// What store commits have cost since start.
    pub fn commit_stats(&self) -> CommitStats {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Set how transient failures are retried (before any batch).
    pub fn set_retry(&mut self, retry: RetryConfig) {
        self.retry = retry;
    }

    /// Retry the queued events that are due at `now_ms` (a batch of at
    /// most 256); how many were taken off the queue. Each goes through its
    /// plugin again, for its key only; the version rules decide as for any
    /// late event. Committed at once.
    pub fn retry_due(&self, now_ms: i64) -> Result<usize> {
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let due = self.store.due_retries(now_ms, 256)?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let route = self.route();
        for entry in &due {
            writer.remove_retry(entry);
            let p = match self.projection(&entry.plugin) {
                Ok(p) => p,
                Err(_) => {
                    record_dead_letter(
                        &mut writer,
                        route.as_deref(),
                        DeadLetter {
                            seq: 0,
                            plugin: Some(entry.plugin.clone()),
                            stage: "retry".into(),
                            reason: "unloaded".into(),
                            error: format!("plugin {} is no longer loaded", entry.plugin),
                            source: entry.source.clone(),
                            partition: entry.partition,
                            offset: entry.offset,
                            key: Some(entry.key.clone()),
                            event: Some(entry.event.clone()),
                            raw: None,
                            at_ms: now_ms,
                        },
                    )?;
                    continue;
                }
            };
            let ctx = BatchCtx {
                projection: &p,
                store: &self.store,
                source: &entry.source,
                partition: entry.partition,
                attempt: entry.attempt,
                only_key: Some(&entry.key),
                retry: &self.retry,
                route: route.as_deref(),
            };
            let delta = ctx.run(&[(entry.offset, &entry.event)], 1, &mut writer)?;
            let total = {
                let mut c = p.counters.lock().unwrap_or_else(|e| e.into_inner());
                c.add(&delta);
                *c
            };
            writer.set_counters(&p.ns, &total);
        }
        pending.writer = Some(writer);
        self.commit_locked(&mut pending)?;
        self.progress.send_modify(|n| *n += 1);
        Ok(due.len())
    }

    /// Load a projection; `population` overrides what the plugin declares.
    pub fn add(&self, code: SharedCode, population: Option<Population>) -> Result<()> {
        let ns = code.name().to_string();
        self.add_in(code, population, ns)
    }

    /// Load a projection whose views live in namespace `ns` (a promoted
    /// generation's, after a restart).
    pub fn add_in(
        &self,
        code: SharedCode,
        population: Option<Population>,
        ns: String,
    ) -> Result<()> {
        let mut list = self.projections.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|p| p.ns == ns) {
            return Err(Error::Duplicate(ns));
        }
        let counters = self.store.counters(&ns)?;
        let population = population.unwrap_or(code.info().population);
        list.push(Arc::new(Projection {
            code,
            ns,
            population,
            counters: Mutex::new(counters),
            views: Arc::default(),
            dirty: Arc::default(),
            rendered: RwLock::new(RenderCache::default()),
            retried: AtomicU64::new(0),
            shadow: AtomicBool::new(false),
            building: AtomicBool::new(false),
        }));
        Ok(())
    }

    /// Swap the code of a loaded projection at a batch boundary: every
    /// later batch runs the new one. Views (committed or not), offsets
    /// and counters carry over; the old code's rendered answers do not.
    pub fn replace(&self, code: SharedCode, population: Option<Population>) -> Result<()> {
        let _batch = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = self.projections.write().unwrap_or_else(|p| p.into_inner());
        let name = code.name().to_string();
        let i = list
            .iter()
            .position(|p| p.name() == name && !p.is_shadow())
            .ok_or(Error::UnknownPlugin(name))?;
        let old = &list[i];
        let counters = *old.counters.lock().unwrap_or_else(|e| e.into_inner());
        let population = population.unwrap_or(code.info().population);
        let replacement = Arc::new(Projection {
            code,
            ns: old.ns.clone(),
            population,
            counters: Mutex::new(counters),
            // The same namespace: both codes see one cache of views.
            views: old.views.clone(),
            dirty: old.dirty.clone(),
            rendered: RwLock::new(RenderCache::default()),
            retried: AtomicU64::new(old.retried.load(Ordering::Relaxed)),
            shadow: AtomicBool::new(false),
            building: AtomicBool::new(false),
        });
        list[i] = replacement;
        Ok(())
    }

    /// The loaded projections, one per plugin: the generations serving
    /// reads.
    pub fn projections(&self) -> Vec<Arc<Projection>> {
        self.all().into_iter().filter(|p| !p.is_shadow()).collect()
    }

    /// Every generation, shadows included.
    fn all(&self) -> Vec<Arc<Projection>> {
        self.projections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn projection(&self, name: &str) -> Result<Arc<Projection>> {
        self.projections()
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::UnknownPlugin(name.to_string()))
    }

    /// Where a source should resume for `partition`: the lowest next
    /// offset over the loaded projections.
    pub fn resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut min = pending.offset(&self.store, DECODE_NS, source, partition)?;
        for p in self.all().iter().filter(|p| !p.is_building()) {
            min = min.min(pending.offset(&self.store, &p.ns, source, partition)?);
        }
        Ok(min)
    }

    /// The next offset `plugin` will apply from (source, partition):
    /// every record before it is in its views (committed or not).
    pub fn applied(&self, plugin: &str, source: &str, partition: u32) -> Result<u64> {
        let p = self.projection(plugin)?;
        let k = (p.ns.clone(), source.to_string(), partition);
        if let Some(o) = self
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
        {
            return Ok(*o);
        }
        Ok(self.store.offset(&p.ns, source, partition)?.unwrap_or(0))
    }

    /// A receiver that sees a change after every processed batch.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Process one batch of records of one partition, in offset order.
    pub fn process(
        &self,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<BatchSummary> {
        let Some(last) = records.last() else {
            return Ok(BatchSummary::default());
        };
        let next = last.offset + 1;
        let mut pending = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let pending = &mut *pending;
        pending.healthy()?;
        let decoded: Vec<Result<Event, DecodeError>> = records
            .iter()
            .map(|r| envelope::decode(self.format, r.key.as_deref(), &r.value))
            .collect();
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let mut summary = BatchSummary {
            records: records.len() as u64,
            ..Default::default()
        };

        let route = self.route();
        let decoded_from = pending.offset(&self.store, DECODE_NS, source, partition)?;
        for (r, d) in records.iter().zip(&decoded) {
            if let (Err(e), true) = (d, r.offset >= decoded_from) {
                summary.decode_errors += 1;
                record_dead_letter(
                    &mut writer,
                    route.as_deref(),
                    DeadLetter {
                        seq: 0,
                        plugin: None,
                        stage: "decode".into(),
                        reason: "decode".into(),
                        error: e.to_string(),
                        source: source.into(),
                        partition,
                        offset: r.offset,
                        key: None,
                        event: None,
                        raw: Some(String::from_utf8_lossy(&r.value).into_owned()),
                        at_ms: now_ms(),
                    },
                )?;
            }
        }
        writer.set_offset(DECODE_NS, source, partition, next);
        pending
            .offsets
            .insert((DECODE_NS.to_string(), source.to_string(), partition), next);

        for p in self.all().iter().filter(|p| !p.is_building()) {
            let batch = BatchIn {
                source,
                partition,
                records,
                decoded: &decoded,
                route: route.as_deref(),
            };
            let delta = self.apply_batch(pending, &mut writer, p, &batch)?;
            if !p.is_shadow() {
                summary.counters.push((p.name().to_string(), delta));
            }
        }
        pending.writer = Some(writer);
        self.commit_due(pending)?;
        {
            let mut applied = self.applied.write().unwrap_or_else(|e| e.into_inner());
            for p in self.all() {
                let k = (p.ns.clone(), source.to_string(), partition);
                if let Some(o) = pending.offsets.get(&k) {
                    applied.insert(k, *o);
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
        Ok(summary)
    }

    /// One projection's share of a batch: its events from its own next
    /// offset on, its offset, audit and counters; the change of counters.
    fn apply_batch(
        &self,
        pending: &mut Pending,
        writer: &mut Writer,
        p: &Arc<Projection>,
        b: &BatchIn,
    ) -> Result<Counters> {
        let (source, partition) = (b.source, b.partition);
        let Some(next) = b.records.last().map(|r| r.offset + 1) else {
            return Ok(Counters::default());
        };
        let from = pending.offset(&self.store, &p.ns, source, partition)?;
        let events: Vec<(u64, &Event)> = b
            .records
            .iter()
            .zip(b.decoded)
            .filter(|(r, _)| r.offset >= from)
            .filter_map(|(r, d)| d.as_ref().ok().map(|e| (r.offset, e)))
            .collect();
        let mut delta = Counters::default();
        if !events.is_empty() {
            let ctx = BatchCtx {
                projection: p,
                store: &self.store,
                source,
                partition,
                attempt: 1,
                only_key: None,
                retry: &self.retry,
                route: b.route,
            };
            delta = ctx.run(&events, self.workers, writer)?;
        }
        if next > from {
            let first = from.max(b.records[0].offset);
            pending.audit(writer, &p.ns, p.code.id(), source, partition, first, next);
            writer.set_offset(&p.ns, source, partition, next);
            pending
                .offsets
                .insert((p.ns.clone(), source.to_string(), partition), next);
        }
        let total = {
            let mut c = p.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.add(&delta);
            *c
        };
        writer.set_counters(&p.ns, &total);
        Ok(delta)
    }

    /// A new generation of plugin `code.name()`: its views in their own
    /// namespace, built by [`Engine::build`] from the start of the log
    /// beside the live one, which it joins with [`Engine::follow`].
    pub fn new_generation(
        &self,
        code: SharedCode,
        population: Option<Population>,
    ) -> Result<Arc<Projection>> {
        let name = code.name().to_string();
        let ns = format!("{name}~{}", &code.id()[..12.min(code.id().len())]);
        let mut list = self.projections.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|p| p.ns == ns) {
            return Err(Error::Duplicate(ns));
        }
        let population = population.unwrap_or(code.info().population);
        let p = Arc::new(Projection {
            code,
            counters: Mutex::new(self.store.counters(&ns)?),
            ns,
            population,
            views: Arc::default(),
            dirty: Arc::default(),
            rendered: RwLock::new(RenderCache::default()),
            retried: AtomicU64::new(0),
            shadow: AtomicBool::new(true),
            building: AtomicBool::new(true),
        });
        list.push(p.clone());
        Ok(p)
    }

    /// Apply `records` of (source, partition) to generation `p` only (a
    /// rebuild); how many were applied.
    pub fn build(
        &self,
        p: &Arc<Projection>,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<Counters> {
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.build_locked(&mut pending, p, source, partition, records)
    }

    fn build_locked(
        &self,
        pending: &mut Pending,
        p: &Arc<Projection>,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<Counters> {
        let decoded: Vec<Result<Event, DecodeError>> = records
            .iter()
            .map(|r| envelope::decode(self.format, r.key.as_deref(), &r.value))
            .collect();
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let batch = BatchIn {
            source,
            partition,
            records,
            decoded: &decoded,
            route: None,
        };
        let delta = self.apply_batch(pending, &mut writer, p, &batch);
        pending.writer = Some(writer);
        self.commit_due(pending)?;
        delta
    }

    /// The next offset generation `p` applies from.
    pub fn generation_offset(&self, p: &Projection, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        pending.offset(&self.store, &p.ns, source, partition)
    }

    /// Join generation `p` to the live path: with batches stopped,
    /// `catch_up(source, partition, from)` gives the records it still lacks up to
    /// where the live path is, and from the next batch on it is fed with
    /// the others.
    pub fn follow(
        &self,
        p: &Arc<Projection>,
        partitions: &[(String, u32)],
        mut catch_up: impl FnMut(&str, u32, u64) -> Result<Vec<Record>>,
    ) -> Result<()> {
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        for (source, partition) in partitions {
            let from = pending.offset(&self.store, &p.ns, source, *partition)?;
            let records = catch_up(source, *partition, from)?;
            if !records.is_empty() {
                self.build_locked(&mut pending, p, source, *partition, &records)?;
            }
        }
        self.commit_locked(&mut pending)?;
        p.building.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Seed generation `p` from the views of `from` (the live one) and join
    /// it to the live path, all between two batches: `migrate` turns each
    /// live view into the new one (`None`: left absent, to be populated
    /// again from the source of truth), and `p` starts at `from`'s
    /// offsets. Calls `progress(done, total)` as it goes; returns (views
    /// migrated, views left absent).
    pub fn seed(
        &self,
        p: &Arc<Projection>,
        from: &Projection,
        mut migrate: impl FnMut(&str, &ViewRecord) -> Option<ViewRecord>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(u64, u64)> {
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_locked(&mut pending)?;
        let total = self.store.views(&from.ns).count() as u64;
        let (mut migrated, mut absent) = (0u64, 0u64);
        let mut writer = self.store.writer();
        let mut in_batch = 0;
        for item in self.store.views(&from.ns) {
            let (key, record) = item?;
            match migrate(&key, &record) {
                Some(new) => {
                    writer.put_view(&p.ns, &key, &new);
                    migrated += 1;
                }
                None => absent += 1,
            }
            in_batch += 1;
            if in_batch == 1024 {
                self.store
                    .commit(std::mem::replace(&mut writer, self.store.writer()))?;
                in_batch = 0;
                progress(migrated + absent, total);
            }
        }
        for (source, partition, next) in self.store.offsets(&from.ns)? {
            writer.set_offset(&p.ns, &source, partition, next);
            pending
                .offsets
                .insert((p.ns.clone(), source, partition), next);
        }
        self.store.commit(writer)?;
        progress(migrated + absent, total);
        p.building.store(false, Ordering::Relaxed);
        Ok((migrated, absent))
    }

    /// Make generation `to` of its plugin serve reads, and the active one
    /// a shadow (still fed, so a switch back finds it current).
    pub fn switch(&self, to: &Arc<Projection>) -> Result<()> {
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_locked(&mut pending)?;
        if to.is_building() {
            return Err(Error::Guest {
                plugin: to.name().into(),
                message: "the new generation is still being built".into(),
            });
        }
        let current = self.projection(to.name())?;
        current.shadow.store(true, Ordering::Relaxed);
        to.shadow.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The generations of `plugin` other than the one serving reads.
    pub fn shadows(&self, plugin: &str) -> Vec<Arc<Projection>> {
        self.all()
            .into_iter()
            .filter(|p| p.name() == plugin && p.is_shadow())
            .collect()
    }

    /// Drop generation `p` (a shadow) and delete its data.
    pub fn retire(&self, p: &Arc<Projection>) -> Result<()> {
        if !p.is_shadow() {
            return Err(Error::Guest {
                plugin: p.name().into(),
                message: "the generation serving reads cannot be retired".into(),
            });
        }
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_locked(&mut pending)?;
        self.projections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| q.ns != p.ns);
        pending.offsets.retain(|(ns, _, _), _| *ns != p.ns);
        pending.audit.retain(|(ns, _, _), _| *ns != p.ns);
        self.store.delete_ns(&p.ns)?;
        Ok(())
    }

    /// A view of generation `p`, rendered at `now_ms` when Valid.
    pub fn read_in(&self, p: &Projection, key: &str, now_ms: i64) -> Result<Option<ReadView>> {
        let Some(record) = p.view(&self.store, key)? else {
            return Ok(None);
        };
        let body = match (&record.view.status, &record.view.state) {
            (Status::Valid, Some(state)) => Some(p.render(key, state, now_ms)?),
            _ => None,
        };
        Ok(Some(ReadView {
            status: record.view.status,
            versions: record.view.versions,
            updated_ms: record.updated_ms,
            body,
        }))
    }

    /// The view of `key` in `plugin`, rendered at `now_ms` when Valid.
    pub fn read(&self, plugin: &str, key: &str, now_ms: i64) -> Result<Option<ReadView>> {
        let p = self.projection(plugin)?;
        self.read_in(&p, key, now_ms)
    }

    /// Store a view of `key` built by the plugin from the source of
    /// truth's `answer` (lazy population). Events at or below the
    /// answer's versions will not disturb it.
    pub fn snapshot(&self, plugin: &str, key: &str, answer: &str) -> Result<()> {
        let p = self.projection(plugin)?;
        check_key(key, p.code.limits())?;
        let (state, versions) =
            p.code
                .session()
                .snapshot(key, answer)?
                .map_err(|e| Error::Guest {
                    plugin: plugin.into(),
                    message: format!("from-snapshot: {e}"),
                })?;
        check_state(&p.code, &state)?;
        let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let view = View::from_snapshot(state, Versions::from_pairs(versions));
        p.set_view(
            key,
            Some(ViewRecord {
                view,
                updated_ms: now_ms(),
            }),
        );
        // A snapshot is durable at once, with whatever was pending.
        pending.writer.get_or_insert_with(|| self.store.writer());
        self.commit_locked(&mut pending)?;
        Ok(())
    }
}

/// What a recollection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecollectSummary {
    pub keys: u64,
    pub rebuilt: u64,
    pub unchanged: u64,
    pub deleted: u64,
    /// (key, error) of the keys that failed; their views are untouched.
    pub failed: Vec<(String, String)>,
}

/// Keys recollected per commit.
const RECOLLECT_CHUNK: usize = 256;

impl Engine {
    /// Rebuild views of `plugin` from its sources: each key gets one
    /// [`projector_guest::RECOLLECT`] event, which the plugin answers by
    /// fetching what the view holds. `keys`: the given ones, or every
    /// stored view. A rebuilt view is Valid, whatever it was. Progress is
    /// reported as (done, total) after each chunk, which is committed.
    pub fn recollect(
        &self,
        plugin: &str,
        keys: Option<Vec<String>>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<RecollectSummary> {
        let p = self.projection(plugin)?;
        self.commit()?;
        let keys = match keys {
            Some(keys) => keys,
            None => self
                .store
                .views(&p.ns)
                .map(|r| r.map(|(k, _)| k))
                .collect::<Result<_, _>>()?,
        };
        for key in &keys {
            check_key(key, p.code.limits())?;
        }
        let mut summary = RecollectSummary {
            keys: keys.len() as u64,
            ..Default::default()
        };
        for (i, chunk) in keys.chunks(RECOLLECT_CHUNK).enumerate() {
            let mut pending = self.write.lock().unwrap_or_else(|e| e.into_inner());
            let mut session = p.code.session();
            for key in chunk {
                let before = p.view(&self.store, key)?;
                let now = now_ms();
                let event = Event {
                    id: format!("recollect-{now}"),
                    event_type: projector_guest::RECOLLECT.into(),
                    source: "@recollect".into(),
                    key: key.clone(),
                    version: now as u64,
                    time_ms: now,
                    payload: "{}".into(),
                    ..Default::default()
                };
                let state = before.as_ref().and_then(|r| r.view.state.as_deref());
                let result = session.apply(key, state, &[&event]);
                let result = match result {
                    Ok(r) if r.error.is_none() => r,
                    Ok(r) => {
                        let e = r.error.map(|e| e.to_string()).unwrap_or_default();
                        summary.failed.push((key.clone(), e));
                        continue;
                    }
                    Err(e) => {
                        summary.failed.push((key.clone(), e.to_string()));
                        continue;
                    }
                };
                let base = before.map(|r| r.view).unwrap_or(View {
                    status: Status::Valid,
                    versions: Versions::default(),
                    floor: Versions::default(),
                    state: None,
                });
                let view = match result.outcome {
                    Outcome::Put(state) => {
                        if let Err(e) = check_state(&p.code, &state) {
                            summary.failed.push((key.clone(), e.to_string()));
                            continue;
                        }
                        summary.rebuilt += 1;
                        Some(View {
                            status: Status::Valid,
                            state: Some(state),
                            ..base
                        })
                    }
                    Outcome::Delete => {
                        summary.deleted += 1;
                        None
                    }
                    Outcome::Skip | Outcome::Invalidate => {
                        summary.unchanged += 1;
                        continue;
                    }
                };
                p.set_view(
                    key,
                    view.map(|view| ViewRecord {
                        view,
                        updated_ms: now,
                    }),
                );
            }
            drop(session);
            pending.writer.get_or_insert_with(|| self.store.writer());
            self.commit_locked(&mut pending)?;
            progress(((i + 1) * RECOLLECT_CHUNK).min(keys.len()), keys.len());
        }
        Ok(summary)
    }
}

impl Drop for Engine {
    /// Commit what was applied, so a clean shutdown redoes nothing.
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!("final commit failed; the uncommitted work will be redone: {e}");
        }
    }
}

/// Check a view key a plugin produced or a reader gave.
pub fn check_key(key: &str, limits: &plugin::Limits) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::BadKey {
            key: key.chars().take(80).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty".into());
    }
    if key.len() > limits.max_key_bytes {
        return bad(format!(
            "{} bytes, over the {}-byte limit",
            key.len(),
            limits.max_key_bytes
        ));
    }
    if key.chars().any(char::is_control) {
        return bad("contains a control character".into());
    }
    Ok(())
}

fn check_state(code: &SharedCode, state: &[u8]) -> Result<(), plugin::Error> {
    let limit = code.limits().max_state_bytes;
    if state.len() > limit {
        return Err(plugin::Error::BadOutput {
            plugin: code.name().into(),
            message: format!(
                "state of {} bytes, over the {limit}-byte limit",
                state.len()
            ),
        });
    }
    Ok(())
}

/// A decoded batch of one (source, partition).
struct BatchIn<'a> {
    source: &'a str,
    partition: u32,
    records: &'a [Record],
    decoded: &'a [Result<Event, DecodeError>],
    route: Route<'a>,
}

/// The events that the keys of `members` touch, in their batch order,
/// and each key's events as indexes into them.
fn share<'e>(
    events: &[(u64, &'e Event)],
    members: &[Vec<usize>],
) -> (Vec<(u64, &'e Event)>, Vec<Vec<usize>>) {
    let mut used: Vec<usize> = members.iter().flatten().copied().collect();
    used.sort_unstable();
    used.dedup();
    let local = |i: &usize| {
        used.binary_search(i)
            .expect("a member is among the used events")
    };
    let members = members
        .iter()
        .map(|m| m.iter().map(local).collect())
        .collect();
    (used.iter().map(|&i| events[i]).collect(), members)
}

/// One projection's share of one batch.
struct BatchCtx<'a> {
    projection: &'a Projection,
    store: &'a Store,
    source: &'a str,
    partition: u32,
    /// Which delivery of these events this is (1: the first).
    attempt: u32,
    /// A retry runs its event for the key that failed only.
    only_key: Option<&'a str>,
    retry: &'a RetryConfig,
    route: Route<'a>,
}

/// One key's result: its new view (if it changed) and its failures.
struct KeyResult<'e> {
    key: String,
    change: Option<Option<ViewRecord>>,
    counters: Counters,
    /// (event, offset, error, transient).
    failures: Vec<(&'e Event, u64, plugin::Error, bool)>,
}

impl<'a> BatchCtx<'a> {
    fn run(
        &self,
        events: &[(u64, &Event)],
        workers: usize,
        writer: &mut Writer,
    ) -> Result<Counters> {
        let code = &self.projection.code;
        let mut counters = Counters::default();
        let mut session = code.session();
        let refs: Vec<&Event> = events.iter().map(|(_, e)| *e).collect();
        let batch = EventBatch::new(&refs);
        let routed = self.route(session.as_mut(), &batch);

        // Group by key, keeping each key's events in offset order:
        // `order[n]` is a key, `members[n]` its events (indexes into
        // `events`).
        let mut order: Vec<String> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut slot: FxHashMap<String, usize> = FxHashMap::default();
        for (i, keys) in routed.into_iter().enumerate() {
            match keys {
                Ok(keys) => {
                    for k in keys
                        .into_iter()
                        .filter(|k| self.only_key.is_none_or(|only| only == k))
                    {
                        match slot.entry(k) {
                            Entry::Occupied(e) => members[*e.get()].push(i),
                            Entry::Vacant(e) => {
                                order.push(e.key().clone());
                                members.push(vec![i]);
                                e.insert(order.len() - 1);
                            }
                        }
                    }
                }
                Err(e) => {
                    counters.received += 1;
                    counters.dead_lettered += 1;
                    self.dead_letter(writer, "keys", None, events[i].1, events[i].0, &e)?;
                }
            }
        }
        drop(slot);

        let results: Vec<KeyResult> = if workers == 1 || order.len() < 64 {
            self.fold_keys(session.as_mut(), &order, &members, events, &batch)?
        } else {
            // This thread folds the first share in the session that holds
            // the batch already; each other worker hands its own session
            // only the events its keys need.
            let chunk = order.len().div_ceil(workers);
            let mut shares = order.chunks(chunk).zip(members.chunks(chunk));
            let (first_keys, first_members) = shares.next().expect("at least 64 keys");
            std::thread::scope(|scope| {
                let handles: Vec<_> = shares
                    .map(|(keys, members)| {
                        scope.spawn(move || {
                            let (mine, members) = share(events, members);
                            let refs: Vec<&Event> = mine.iter().map(|(_, e)| *e).collect();
                            let batch = EventBatch::new(&refs);
                            self.fold_keys(code.session().as_mut(), keys, &members, &mine, &batch)
                        })
                    })
                    .collect();
                let mut all =
                    self.fold_keys(session.as_mut(), first_keys, first_members, events, &batch)?;
                all.reserve(order.len() - all.len());
                for h in handles {
                    all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
                }
                Ok::<_, Error>(all)
            })?
        };

        for r in results {
            counters.add(&r.counters);
            if let Some(change) = r.change {
                self.projection.set_view(&r.key, change);
            }
            for (event, offset, error, transient) in r.failures {
                if transient && self.attempt <= self.retry.attempts {
                    counters.dead_lettered -= 1;
                    self.projection.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = self.retry.delay_ms(self.attempt);
                    tracing::info!(
                        plugin = self.projection.name(),
                        offset,
                        key = r.key,
                        attempt = self.attempt,
                        delay_ms = delay,
                        "{error}; retrying later"
                    );
                    queue_retry(
                        writer,
                        self.route,
                        RetryEntry {
                            seq: 0,
                            plugin: self.projection.name().into(),
                            key: r.key.clone(),
                            attempt: self.attempt + 1,
                            error: error.to_string(),
                            source: self.source.into(),
                            partition: self.partition,
                            offset,
                            event: event.clone(),
                            not_before_ms: now_ms() + delay as i64,
                        },
                    )?;
                    continue;
                }
                let error = match self.attempt {
                    1 => error,
                    n => plugin::Error::Guest {
                        plugin: self.projection.name().into(),
                        message: format!("after {n} attempts: {error}"),
                    },
                };
                self.dead_letter(writer, "apply", Some(&r.key), event, offset, &error)?;
            }
        }
        Ok(counters)
    }

    /// The keys of every event; a failed batch call is retried event by
    /// event so only the failing event fails.
    fn route(
        &self,
        session: &mut dyn Session,
        batch: &EventBatch,
    ) -> Vec<Result<Vec<String>, plugin::Error>> {
        let code = &self.projection.code;
        let check =
            |r: Result<Vec<String>, plugin::GuestError>| -> Result<Vec<String>, plugin::Error> {
                let mut keys = r.map_err(|e| plugin::Error::Guest {
                    plugin: code.name().into(),
                    message: format!("keys: {e}"),
                })?;
                let limits = code.limits();
                if keys.len() > limits.max_keys_per_event {
                    return Err(plugin::Error::BadOutput {
                        plugin: code.name().into(),
                        message: format!(
                            "{} keys for one event, over the limit of {}",
                            keys.len(),
                            limits.max_keys_per_event
                        ),
                    });
                }
                for k in &keys {
                    check_key(k, limits).map_err(|e| plugin::Error::BadOutput {
                        plugin: code.name().into(),
                        message: e.to_string(),
                    })?;
                }
                keys.sort_unstable();
                keys.dedup();
                Ok(keys)
            };
        const CHUNK: usize = 1024;
        let events = batch.events();
        let mut out = Vec::with_capacity(events.len());
        for (n, chunk) in events.chunks(CHUNK).enumerate() {
            match session.batch_keys(batch, n * CHUNK, chunk.len()) {
                Ok(answers) => out.extend(answers.into_iter().map(check)),
                Err(_) => {
                    for e in chunk {
                        out.push(match session.keys(std::slice::from_ref(e)) {
                            Ok(mut one) => check(one.pop().unwrap_or_else(|| Ok(Vec::new()))),
                            Err(err) => Err(err),
                        });
                    }
                }
            }
        }
        out
    }

    /// Fold the events of `keys`: the first `apply` of every key goes to
    /// the plugin in one call for them all; the rest (a key's later runs,
    /// or everything when that call failed as a whole) key by key.
    fn fold_keys<'e>(
        &self,
        session: &mut dyn Session,
        keys: &[String],
        members: &[Vec<usize>],
        events: &[(u64, &'e Event)],
        batch: &EventBatch<'_>,
    ) -> Result<Vec<KeyResult<'e>>> {
        let p = self.projection;
        let policy = p.code.info().stale_policy;
        let befores: Vec<Option<ViewRecord>> = keys
            .iter()
            .map(|k| p.view(self.store, k))
            .collect::<Result<_>>()?;
        // Each key's events, in order.
        let mine: Vec<Vec<&'e Event>> = members
            .iter()
            .map(|m| m.iter().map(|&i| events[i].1).collect())
            .collect();
        let mut runs = Vec::new();
        let mut run_of = vec![None; keys.len()];
        for (n, (key, before)) in keys.iter().zip(&befores).enumerate() {
            let indexes = &members[n];
            let first = rules::first_run(
                before.as_ref().map(|r| &r.view),
                p.population,
                policy,
                &mine[n],
            );
            if !first.is_empty() {
                run_of[n] = Some(runs.len());
                runs.push(plugin::KeyRun {
                    key,
                    state: before.as_ref().and_then(|r| r.view.state.as_deref()),
                    events: first.iter().map(|&j| indexes[j] as u32).collect(),
                });
            }
        }
        let mut answers: Vec<Option<ApplyResult>> = if runs.is_empty() {
            Vec::new()
        } else {
            match session.apply_batch(batch, &runs) {
                Ok(answers) => answers.into_iter().map(Some).collect(),
                Err(e) => {
                    tracing::debug!(plugin = p.name(), "{e}; applying key by key");
                    runs.iter().map(|_| None).collect()
                }
            }
        };
        drop(runs);
        keys.iter()
            .zip(members)
            .zip(befores)
            .zip(mine)
            .zip(run_of)
            .map(|((((k, indexes), before), mine), run)| {
                let first = run.and_then(|r| answers[r].take());
                self.fold(session, k, indexes, events, &mine, before, first)
            })
            .collect()
    }

    /// Fold one key's events (`mine`: those of `events` at `indexes`);
    /// `first` is the answer to its first `apply` when it was made ahead.
    #[allow(clippy::too_many_arguments)]
    fn fold<'e>(
        &self,
        session: &mut dyn Session,
        key: &str,
        indexes: &[usize],
        events: &[(u64, &'e Event)],
        mine: &[&'e Event],
        before: Option<ViewRecord>,
        mut first: Option<ApplyResult>,
    ) -> Result<KeyResult<'e>> {
        let p = self.projection;
        let code = &p.code;
        let existed = before.is_some();
        let mut latest = before.as_ref().map_or(0, |r| r.updated_ms);
        let (view, verdicts) = rules::fold_key(
            before.map(|r| r.view),
            p.population,
            code.info().stale_policy,
            mine,
            |state, run| -> Result<ApplyResult, plugin::Error> {
                let batch: Vec<&Event> = run.iter().map(|&i| mine[i]).collect();
                let mut r = match first.take() {
                    Some(r) => r,
                    None => session.apply(key, state, &batch)?,
                };
                // Blocking retries: a transient failure of the run's first
                // event is tried again at once, a few times, before it
                // goes to the delayed retries.
                let mut n = 0;
                while r.applied == 0
                    && n < self.retry.blocking
                    && r.error
                        .as_ref()
                        .is_some_and(|e| e.kind == projector_guest::ErrorKind::Transient)
                {
                    n += 1;
                    std::thread::sleep(self.retry.blocking_delay(n));
                    r = session.apply(key, state, &batch)?;
                }
                if let Outcome::Put(s) = &r.outcome {
                    check_state(code, s)?;
                }
                Ok(r)
            },
        );
        let mut counters = Counters {
            received: mine.len() as u64,
            ..Default::default()
        };
        let mut failures = Vec::new();
        let mut changed = false;
        for (&i, verdict) in indexes.iter().zip(verdicts) {
            let (offset, event) = events[i];
            match verdict {
                Verdict::Applied => {
                    counters.applied += 1;
                    latest = latest.max(event.time_ms);
                    changed = true;
                }
                Verdict::Invalidated => {
                    counters.invalidated += 1;
                    changed = true;
                }
                Verdict::Skipped(Decision::Apply | Decision::Invalidate) => {
                    unreachable!("fold_key never skips with an apply or invalidate decision")
                }
                Verdict::Skipped(_) => counters.skipped += 1,
                Verdict::Failed(e) => {
                    counters.dead_lettered += 1;
                    let (error, transient) = match e {
                        CallError::Host(e) => (e, false),
                        CallError::Plugin(e) => (
                            plugin::Error::Guest {
                                plugin: code.name().into(),
                                message: e.to_string(),
                            },
                            e.kind == projector_guest::ErrorKind::Transient,
                        ),
                    };
                    failures.push((event, offset, error, transient));
                }
            }
        }
        let change = match (changed, view) {
            (false, _) => None,
            (true, Some(view)) => Some(Some(ViewRecord {
                view,
                updated_ms: latest,
            })),
            (true, None) => existed.then_some(None),
        };
        Ok(KeyResult {
            key: key.to_string(),
            change,
            counters,
            failures,
        })
    }

    fn dead_letter(
        &self,
        writer: &mut Writer,
        stage: &str,
        key: Option<&str>,
        event: &Event,
        offset: u64,
        error: &plugin::Error,
    ) -> Result<()> {
        tracing::warn!(
            plugin = self.projection.name(),
            stage,
            offset,
            key,
            reason = error.reason(),
            "{error}"
        );
        record_dead_letter(
            writer,
            self.route,
            DeadLetter {
                seq: 0,
                plugin: Some(self.projection.name().to_string()),
                stage: stage.into(),
                reason: error.reason().into(),
                error: error.to_string(),
                source: self.source.into(),
                partition: self.partition,
                offset,
                key: key.map(str::to_string),
                event: Some(event.clone()),
                raw: None,
                at_ms: now_ms(),
            },
        )?;
        Ok(())
    }
}
