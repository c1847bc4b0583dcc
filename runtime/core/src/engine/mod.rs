//! The projection engine: batches of records in, atomic store commits
//! out.
//!
//! For each batch the engine decodes every record once, then for each
//! loaded projection: asks the plugin which view keys each event touches
//! (one call for the batch), groups the events by key keeping their order,
//! folds each key's events through the version rules and the plugin's
//! `apply` (one call per key and batch; keys spread over worker threads),
//! and keeps the new views in memory while the dead letters, counters and
//! next offsets go into the pending `Writer`. At most every commit
//! interval (and on [`Engine::commit`]) the changed views join that writer
//! and everything is committed atomically, so on restart each projection
//! resumes exactly after what it stored, redoing only uncommitted work.
//!
//! Called by the pipelines of the sources crate and by readers
//! ([`Engine::read`], [`Engine::snapshot`]). It never reads a source
//! itself.

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::envelope::{DecodeError, Format};
use crate::record::{now_ms, Record};
use crate::retry::RetryConfig;
use crate::store::{
    AuditRun, Counters, DeadLetter, OutboxRecord, RetryEntry, Store, ViewRecord, Writer,
};
use compact_str::CompactString;
use projector_common::sync::Recover;
use projector_guest::rules::{self, CallError, Decision, Status, Verdict, Versions, View};
use projector_guest::{ApplyResult, Event, Outcome, Population};
use projector_host::{self as plugin, EventBatch, Session, SharedCode};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

mod changelog;
mod commit;
mod expire;
mod fetch_record;
mod fold;
mod generation;
mod group;
mod history;
mod memory;
mod pause;
mod projection;
mod read;
mod recollect;
mod redrive;
mod retry;
mod write_lock;

pub use changelog::{position, Changelog};
pub use commit::CommitStats;
use expire::Expiry;
pub use expire::{spawn_sweep, Sweep, SweepPace};
pub use fetch_record::RecordBounds;
pub use fetch_record::StoredRecord;
pub use fold::BatchSummary;
use fold::{BatchCtx, BatchIn};
use history::Keeping;
pub use history::{AsOf, HistoryBounds, Past, Pruned};
pub use memory::{MemoryBudget, MemoryUse, MIN_MEMORY_MB};
pub use projection::{Projection, VIEW_CACHE_ENTRIES};
use projection::{RenderCache, ViewCache};
pub use read::{ReadView, Snapshot};
pub use recollect::RecollectSummary;
pub use redrive::{Redrive, Redriven, Skipped};
pub use retry::FailureRoute;
use retry::{queue_retry, record_dead_letter, Route};

/// Why the engine refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// No loaded projection has this name.
    #[error("unknown plugin {0:?}")]
    UnknownPlugin(String),
    /// The plugin keeps no history of its views (`history` is off).
    #[error("plugin {0:?} keeps no history of its views; set [plugins.{0}] history = {{ versions = 50, ms = 604800000 }}")]
    NoHistory(String),
    /// A projection with this namespace is already loaded.
    #[error("plugin {0:?} is already loaded")]
    Duplicate(String),
    /// A view key is empty, too long, or holds a control character.
    #[error("bad view key {key:?}: {reason}")]
    BadKey {
        /// The key, cut to 80 characters.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin host failed: load, trap, limits or bad output.
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    /// A plugin's render or snapshot returned an error, a generation cannot
    /// be switched or retired now, or a rebuild could not read its log.
    #[error("plugin {plugin}: {message}")]
    Guest {
        /// Name of the plugin.
        plugin: String,
        /// What failed, prefixed by the call's name where there is one.
        message: String,
    },
    /// An earlier store commit failed; nothing more is committed until a restart.
    #[error("a store commit failed, so nothing more is committed until a restart: {0}")]
    CommitFailed(String),
}

/// The engine's result, [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Namespace that tracks which records were already decoded (so a decode
/// error is dead-lettered once, whatever projections are loaded).
const DECODE_NS: &str = "@decode";

/// The projection engine: loaded projections, the store they commit to, and
/// work applied but not yet committed.
pub struct Engine {
    store: Store,
    format: Format,
    workers: usize,
    commit_interval: Duration,
    projections: RwLock<Vec<Arc<Projection>>>,
    /// Serializes read-modify-write of views (batches and snapshots) and
    /// holds what is not committed yet. A build ([`Engine::build`]) takes
    /// it last, so a rebuild never holds up the live path.
    write: write_lock::WriteLock<Pending>,
    /// Next offset per (namespace, source, partition) applied in memory,
    /// for readers: kept apart from `write` so reads never wait on a batch.
    applied: RwLock<HashMap<(String, String, u32), u64>>,
    /// Counts batches; changes after each one (read-your-writes waits on it).
    progress: tokio::sync::watch::Sender<u64>,
    retry: RetryConfig,
    /// Per plugin: its retry and breaker settings, over the defaults.
    policies: FxHashMap<String, Policy>,
    breaker: BreakerConfig,
    /// Whether breakers may pause plugins: only when the source can
    /// replay what a paused plugin lacks.
    breakers_on: AtomicBool,
    route: RwLock<Option<Arc<dyn FailureRoute>>>,
    changelog: RwLock<Option<Arc<dyn Changelog>>>,
    commits: Mutex<CommitStats>,
    /// The seq of the last commit's history entries.
    history_seq: AtomicU64,
    /// Views kept per generation of each projection's view cache.
    view_cache_entries: usize,
    /// The memory budget the caches share, if one is set.
    memory: Option<MemoryBudget>,
    /// Each plugin's record of fetched answers, and where its pruning is.
    fetch_records: Mutex<HashMap<String, fetch_record::Pruning>>,
}

/// One plugin's settings over the engine's defaults: failure handling
/// (retries and breaker) and how long its views live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How its transient failures are retried.
    pub retry: RetryConfig,
    /// When it is paused.
    pub breaker: BreakerConfig,
    /// How long a view lives after its last applied event, in ms; `None`:
    /// for ever.
    pub ttl_ms: Option<u64>,
    /// How much of each view's past is kept; `None`: none.
    pub history: Option<HistoryBounds>,
    /// How long and how much of the fetched answers are recorded for
    /// replay; `None`: not recorded.
    pub record_fetches: Option<RecordBounds>,
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
    /// The offsets last sent to the changelog per (namespace, partition).
    marked: HashMap<(String, u32), Vec<(String, u64)>>,
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
            write: write_lock::WriteLock::new(Pending::default()),
            applied: RwLock::new(HashMap::new()),
            progress: tokio::sync::watch::Sender::new(0),
            retry: RetryConfig::default(),
            policies: FxHashMap::default(),
            breaker: BreakerConfig::default(),
            breakers_on: AtomicBool::new(false),
            route: RwLock::new(None),
            changelog: RwLock::new(None),
            commits: Mutex::default(),
            history_seq: AtomicU64::new(0),
            view_cache_entries: projection::VIEW_CACHE_ENTRIES,
            memory: None,
            fetch_records: Mutex::default(),
        }
    }

    /// Keep up to `entries` views per generation of each projection's view
    /// cache (two generations: about twice that in memory), before any batch.
    /// More views cached: fewer reads from the store as the views outgrow
    /// the cache, more memory.
    pub fn set_view_cache(&mut self, entries: usize) {
        self.view_cache_entries = entries.max(1);
    }

    /// The store views, offsets, counters and dead letters are committed to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The format wire records are decoded in.
    pub fn format(&self) -> Format {
        self.format
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
        let mut list = self.projections.write().recover();
        if list.iter().any(|p| p.ns == ns) {
            return Err(Error::Duplicate(ns));
        }
        let counters = self.store.counters(&ns)?;
        let population = population.unwrap_or(code.info().population);
        let policy = self.policy(code.name());
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
            behind: AtomicBool::new(false),
            retry: policy.retry,
            breaker: Arc::new(Breaker::new(policy.breaker)),
            failures: AtomicU64::new(0),
            last_failure: Mutex::default(),
            expiry: Arc::new(Expiry::new(policy.ttl_ms)),
            keeping: Arc::new(Keeping::new(policy.history)),
        }));
        Ok(())
    }

    /// Swap the code of a loaded projection at a batch boundary: every
    /// later batch runs the new one. Views (committed or not), offsets
    /// and counters carry over; the old code's rendered answers do not.
    pub fn replace(&self, code: SharedCode, population: Option<Population>) -> Result<()> {
        let _batch = self.write.lock().recover();
        let mut list = self.projections.write().recover();
        let name = code.name().to_string();
        let i = list
            .iter()
            .position(|p| p.name() == name && !p.is_shadow())
            .ok_or(Error::UnknownPlugin(name))?;
        let old = &list[i];
        let counters = *old.counters.lock().recover();
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
            behind: AtomicBool::new(false),
            retry: old.retry,
            breaker: old.breaker.clone(),
            failures: AtomicU64::new(old.failures.load(Ordering::Relaxed)),
            last_failure: Mutex::default(),
            expiry: old.expiry.clone(),
            keeping: old.keeping.clone(),
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
        self.projections.read().recover().clone()
    }

    /// The projection of `name` serving reads (not a shadow); errs when none is loaded.
    pub fn projection(&self, name: &str) -> Result<Arc<Projection>> {
        self.projections()
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::UnknownPlugin(name.to_string()))
    }

    /// Where a source should resume for `partition`: the lowest next
    /// offset over the loaded projections.
    pub fn resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().recover();
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
        if let Some(o) = self.applied.read().recover().get(&k) {
            return Ok(*o);
        }
        Ok(self.store.offset(&p.ns, source, partition)?.unwrap_or(0))
    }

    /// A receiver that sees a change after every processed batch.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
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

#[cfg(test)]
mod tests;
