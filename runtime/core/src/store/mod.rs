//! Durable state in sled, behind one small API so the engine never sees
//! sled itself.
//!
//! One tree, `state`, holds everything that must change together: views,
//! applied offsets, counters and dead letters. A `Writer` gathers the
//! changes of one commit and `Store::commit` applies them atomically, so after
//! a crash the views and the offsets they came from always agree: nothing
//! is lost and nothing is applied twice. Other trees (the embedded log)
//! are opened by their owners through [`Store::tree`].
//!
//! A commit writes the views it changed as one record; a materializer
//! thread applies them to their own keys afterwards ([`unapplied`]).
//! Reads see the newest committed view either way.
//!
//! Every flush waits at most [`FLUSH_BOUND`], and the last handle of a
//! store closes it within that bound too, whatever sled does ([`close`]).
//!
//! Keys in `state` (`ns` is a view namespace, e.g. a plugin name):
//! `v 0 ns 0 key` view · `w 0 seq` views of a commit not yet applied ·
//! `o 0 ns 0 source 0 partition` next offset · `c 0 ns` counters ·
//! `d 0 seq` dead letter · `h 0 ns 0 key 0 seq` a change of a view
//! ([`history`]).

mod close;
mod form;
mod history;
mod key_states;
mod open;
mod spool;
mod unapplied;
mod waiting;
mod writer;

pub use close::FLUSH_BOUND;
pub(crate) use history::Kept;
pub use history::{encode_history, HistoryEntry};
pub use projector_host::fetch_record::AnswerUsed;

pub use form::{changelog_value, changelog_view, CHANGELOG_ENCODING};
pub(crate) use form::{decode_view, encode_view};
pub use key_states::{KeyState, KeyStates};
pub use unapplied::MaterializerStats;
pub(crate) use writer::Writer;

use close::Open;
use projector_common::sync::Recover;
use projector_guest::rules::View;
use projector_guest::Event;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use unapplied::{record_key, Materializer, Unapplied, ViewRecordBuf};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened (e.g. another process holds it).
    #[error("store at {path}: {source}")]
    Open {
        /// Directory of the database.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Another process holds the database (a running `projector run`).
    #[error("the store at {path} is held by {}; stop it, or use its API (the commands that read go through it: --api URL)", holder.map_or("another process".to_string(), |pid| format!("process {pid}")))]
    Locked {
        /// Directory of the database.
        path: String,
        /// The process holding its lock, when the system says.
        holder: Option<u32>,
    },
    /// sled failed to read or write.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A flush did not finish in time (sled waits for a write that never
    /// comes, e.g. after a blob file could not be created): the database
    /// is left open until the process ends. What earlier flushes made
    /// durable stays durable.
    #[error("store at {path}: {what}: the flush {reason}; what was flushed before stays durable")]
    Unflushed {
        /// Directory of the database.
        path: String,
        /// What the flush was for (`closing`, `flush`, a setting...).
        what: String,
        /// Why it did not finish.
        reason: String,
    },
    /// A stored value did not decode.
    #[error("store: corrupt {what}: {reason}")]
    Corrupt {
        /// What was read, e.g. `view` or `offset of ns/source/partition`.
        what: String,
        /// Why it did not decode.
        reason: String,
    },
}

/// The store's result, [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored view: the rules' view plus when it last changed. Stored with
/// `encode_view`, never through serde: its `recent` versions have their
/// own encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRecord {
    /// The view as the version rules keep it: status, versions, floor and state.
    pub view: View,
    /// Time of the last applied event (ms), for staleness.
    pub updated_ms: i64,
}

/// Per-namespace event counts, persisted with the views they describe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Event deliveries to this namespace (one per event and view key).
    pub received: u64,
    /// Deliveries applied to a view.
    pub applied: u64,
    /// Deliveries skipped by the version rules (duplicate, stale, ignored).
    pub skipped: u64,
    /// Deliveries that made the view Invalid.
    pub invalidated: u64,
    /// Deliveries the plugin failed for good, recorded as dead letters.
    pub dead_lettered: u64,
}

impl Counters {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.invalidated += other.invalidated;
        self.dead_lettered += other.dead_lettered;
    }
}

/// An event the runtime could not process, with why and where from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Store-assigned id, in recording order; set by `Writer::dead_letter`.
    pub seq: u64,
    /// The plugin that failed it; `None` for decode errors.
    pub plugin: Option<String>,
    /// The plugin version whose code failed it (its content id); `None`
    /// for decode errors and letters recorded before versions were kept.
    #[serde(default)]
    pub version: Option<String>,
    /// `decode`, `keys` or `apply`.
    pub stage: String,
    /// Short, stable reason (`trap`, `out-of-time`, `memory-limit`, ...).
    pub reason: String,
    /// The error, as its message.
    pub error: String,
    /// Name of the source the record came from.
    pub source: String,
    /// Partition of the source the record came from.
    pub partition: u32,
    /// Offset of the record in its partition.
    pub offset: u64,
    /// The view key, where the failure belongs to one.
    pub key: Option<String>,
    /// The decoded event; `None` for decode errors.
    pub event: Option<Event>,
    /// The raw record, for decode errors.
    pub raw: Option<String>,
    /// When it was dead-lettered, in ms since the epoch.
    pub at_ms: i64,
}

impl DeadLetter {
    /// Whether the letter is `plugin`'s, of a version whose content id
    /// starts with `version`, and of view key `key` (each `None`: any).
    pub fn matches(&self, plugin: Option<&str>, version: Option<&str>, key: Option<&str>) -> bool {
        plugin.is_none_or(|p| self.plugin.as_deref() == Some(p))
            && version.is_none_or(|v| self.version.as_deref().is_some_and(|id| id.starts_with(v)))
            && key.is_none_or(|k| self.key.as_deref() == Some(k))
    }
}

/// An event waiting for a delayed retry in one plugin (seed 000's retry
/// topic, kept locally): a transient failure does not stall its partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryEntry {
    /// Store-assigned id; orders retries due at the same time. Set by `Writer::retry`.
    pub seq: u64,
    /// Name of the plugin to retry the event in.
    pub plugin: String,
    /// The view key that failed; empty for an event whose keys could not
    /// be found (a redriven `keys` dead letter): it is routed again.
    pub key: String,
    /// Attempts made so far, the first delivery included.
    pub attempt: u32,
    /// The last attempt's error.
    pub error: String,
    /// Name of the source the event came from.
    pub source: String,
    /// Partition of the source the event came from.
    pub partition: u32,
    /// Offset of the event's record in its partition.
    pub offset: u64,
    /// The event to deliver again.
    pub event: Event,
    /// Not retried before this time (ms since the epoch).
    pub not_before_ms: i64,
}

/// A record waiting in the spool to be produced (seed 003's resilient
/// producer): written in the same batch as the work that made it, removed
/// once the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// Store-assigned id, in spool order; set by `Writer::outbox`.
    pub seq: u64,
    /// Kafka topic to produce to (a retry or dead-letter topic).
    pub topic: String,
    /// `None`: the producer's partitioner chooses (by key).
    pub partition: Option<i32>,
    /// Record key; `None` for a keyless record.
    pub key: Option<Vec<u8>>,
    /// Record value; `None`: a tombstone (a changelog's deleted view).
    pub payload: Option<Vec<u8>>,
    /// Record headers, as (name, value).
    pub headers: Vec<(String, String)>,
}

/// A run of offsets of one (source, partition) applied by one version of
/// a plugin: `from..next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRun {
    /// Name of the source the offsets are in.
    pub source: String,
    /// Partition of that source.
    pub partition: u32,
    /// First offset of the run.
    pub from: u64,
    /// Offset just after the run's last one (exclusive end).
    pub next: u64,
    /// The plugin version's content id.
    pub version: String,
}

fn audit_key(ns: &str, source: &str, partition: u32, from: u64) -> Vec<u8> {
    key(
        b'a',
        &[
            ns.as_bytes(),
            source.as_bytes(),
            &partition.to_be_bytes(),
            &from.to_be_bytes(),
        ],
    )
}

fn outbox_key(seq: u64) -> Vec<u8> {
    key(b'x', &[&seq.to_be_bytes()])
}

fn retry_key(not_before_ms: i64, seq: u64) -> Vec<u8> {
    key(
        b'q',
        &[
            &(not_before_ms.max(0) as u64).to_be_bytes(),
            &seq.to_be_bytes(),
        ],
    )
}

/// The durable store. Its handles share one database, closed when the
/// last of them goes ([`Store::close`]).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    /// The views committed and not yet applied to their keys.
    unapplied: Arc<Unapplied>,
    /// The size of the last commit's views record (bytes, views): the
    /// next writer starts at it instead of growing to it.
    last_record: Arc<(AtomicUsize, AtomicUsize)>,
    /// What the broker acknowledged of spooled bundles not yet removed.
    acked: Arc<spool::Acked>,
    /// Closes the database. Last: fields drop in order, and the database
    /// is released by the close alone once the others went.
    open: Arc<Open>,
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.push(0);
        k.extend_from_slice(p);
    }
    k
}

fn view_prefix(ns: &str) -> Vec<u8> {
    view_key_of(ns, "")
}

fn view_key_of(ns: &str, view_key: &str) -> Vec<u8> {
    let mut k = Vec::new();
    view_key_into(&mut k, ns, view_key);
    k
}

/// [`view_key_of`], written into `k` (cleared first) to reuse its memory.
fn view_key_into<'k>(k: &'k mut Vec<u8>, ns: &str, view_key: &str) -> &'k [u8] {
    k.clear();
    k.extend_from_slice(&[b'v', 0]);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(view_key.as_bytes());
    k
}

fn offset_key(ns: &str, source: &str, partition: u32) -> Vec<u8> {
    key(
        b'o',
        &[ns.as_bytes(), source.as_bytes(), &partition.to_be_bytes()],
    )
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes every store type into a Vec")
}

/// sled's page cache by default, in bytes (`[engine] memory_mb` sets a
/// share of the budget instead).
pub const STORE_CACHE_BYTES: u64 = 256 << 20;

/// The size of sled's log segments (and of its write buffers) for a new
/// store by default: sled's own, 512 KiB (`[engine] store_segment_kb`).
pub const SEGMENT_BYTES: usize = 512 << 10;

impl Store {
    /// Open (or create) the store in `dir`, with sled's page cache at
    /// [`STORE_CACHE_BYTES`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_sized(dir, STORE_CACHE_BYTES)
    }

    /// Open (or create) the store in `dir`, with sled's page cache at
    /// `cache_bytes`.
    pub fn open_sized(dir: &Path, cache_bytes: u64) -> Result<Self> {
        Self::open_tuned(dir, cache_bytes, SEGMENT_BYTES)
    }

    /// Open (or create) the store in `dir`, with sled's page cache at
    /// `cache_bytes` and, if it is created now, log segments of
    /// `segment_bytes` (a power of two); a store that exists keeps the
    /// segments it was created with.
    pub fn open_tuned(dir: &Path, cache_bytes: u64, segment_bytes: usize) -> Result<Self> {
        let db = open::open_db(dir, cache_bytes, segment_bytes)?;
        // From here on a failure closes the database within its bound.
        let mut open = Open::new(dir, db.clone());
        let state = db.open_tree("state")?;
        let materializer = Materializer::start(state.clone())?;
        let unapplied = materializer.shared.clone();
        open.started(materializer);
        Ok(Store {
            db,
            state,
            unapplied,
            last_record: Default::default(),
            acked: Default::default(),
            open: Arc::new(open),
        })
    }

    /// Hold the store to a memory budget: at most `bytes` of committed
    /// records wait for the materializer (past it a commit waits: the
    /// pipeline slows down instead of memory growing; by default only the
    /// count of views waiting bounds them), and the materializer writes
    /// smaller batches, so sled holds fewer copies of its leaves at once.
    pub fn bound_memory(&self, bytes: usize) {
        self.unapplied.set_max_bytes(bytes);
        self.unapplied.set_chunk(unapplied::BUDGET_CHUNK);
    }

    /// Close this handle and say whether what was committed is durable.
    /// The last handle of a store stops the materializer (the views
    /// waiting are applied first), flushes and releases the database,
    /// waiting at most [`FLUSH_BOUND`] for each; another handle flushes
    /// within it and leaves closing to the last. A flush that does not
    /// finish in time is [`Error::Unflushed`], and the database is then
    /// left open until the process ends rather than waited on forever.
    /// Dropping the last handle closes the same way, logging the outcome.
    pub fn close(self) -> Result<()> {
        self.close_within(FLUSH_BOUND)
    }

    /// [`Store::close`], waiting at most `bound` for each step.
    pub fn close_within(self, bound: Duration) -> Result<()> {
        let Store {
            db,
            state,
            unapplied,
            last_record,
            acked,
            open,
        } = self;
        // Gone first, so that the close releases the database alone.
        drop((db, state, unapplied, last_record, acked));
        match Arc::try_unwrap(open) {
            Ok(open) => open.close(bound),
            Err(open) => open.flush_within("closing a handle", bound),
        }
    }

    /// Another tree of the same database (e.g. the embedded log), flushed
    /// and closed with the store. Dropped after the store's last handle,
    /// its last handle flushes again the way sled does, with no bound.
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// The stored view of `view_key` in namespace `ns`, if any.
    pub fn view(&self, ns: &str, view_key: &str) -> Result<Option<ViewRecord>> {
        let k = view_key_of(ns, view_key);
        let bytes = match self.unapplied.get(&k) {
            Some(waiting) => waiting,
            None => self.state.get(k)?,
        };
        bytes.map(|b| decode_view(&b)).transpose()
    }

    /// Every view of a namespace, in key order, as of the call or newer
    /// (the views committed so far are applied first).
    pub fn views(&self, ns: &str) -> impl Iterator<Item = Result<(String, ViewRecord)>> {
        let settled = self.unapplied.settle();
        let prefix = view_prefix(ns);
        let skip = prefix.len();
        let views = self.state.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k[skip..]).into_owned();
            Ok((key, decode_view(&v)?))
        });
        settled.err().map(Err).into_iter().chain(views)
    }

    /// Every view key of a namespace, in key order, without decoding the
    /// views (the views committed so far are applied first).
    pub(crate) fn view_keys(&self, ns: &str) -> impl Iterator<Item = Result<String>> {
        let settled = self.unapplied.settle();
        let prefix = view_prefix(ns);
        let skip = prefix.len();
        let keys = self.state.scan_prefix(prefix).keys().map(move |k| {
            let k = k?;
            Ok(String::from_utf8_lossy(&k[skip..]).into_owned())
        });
        settled.err().map(Err).into_iter().chain(keys)
    }

    /// Up to `n` view keys of a namespace, spread evenly over its key
    /// order (every key when it has at most `n`).
    pub fn sample_view_keys(&self, ns: &str, n: usize) -> Result<Vec<String>> {
        let keys: Vec<String> = self.view_keys(ns).collect::<Result<_>>()?;
        let step = keys.len().div_ceil(n.max(1)).max(1);
        Ok(keys.into_iter().step_by(step).take(n).collect())
    }

    /// Up to `limit` views of a namespace in key order, from the first key
    /// after `after` (from the start with `None`): a page of a scan that
    /// does not hold the store for the whole namespace.
    pub(crate) fn views_page(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ViewRecord)>> {
        let prefix = view_prefix(ns);
        let skip = prefix.len();
        let after = after.map(|key| view_key_of(ns, key));
        self.page(&prefix, after, limit)?
            .into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k[skip..]).into_owned();
                Ok((key, decode_view(&v)?))
            })
            .collect()
    }

    /// Up to `limit` entries of `state` under `prefix`, in key order,
    /// after the store key `after` (from the start when `None`), once
    /// every view committed so far is applied. For the sweeps' pages.
    pub(crate) fn page(
        &self,
        prefix: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(sled::IVec, sled::IVec)>> {
        self.unapplied.settle()?;
        let start = match after {
            // The smallest key after it.
            Some(mut k) => {
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut page = Vec::new();
        for item in self.state.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || page.len() == limit {
                break;
            }
            page.push((k, v));
        }
        Ok(page)
    }

    /// Wait until every view committed so far is applied to its key (the
    /// materializer has caught up with the commits before the call).
    pub fn settle(&self) -> Result<()> {
        self.unapplied.settle()
    }

    /// What the materializer has applied, and what waits.
    pub fn materializer_stats(&self) -> MaterializerStats {
        self.unapplied.stats()
    }

    /// The next offset to process for (namespace, source, partition).
    pub fn offset(&self, ns: &str, source: &str, partition: u32) -> Result<Option<u64>> {
        match self.state.get(offset_key(ns, source, partition))? {
            Some(b) => {
                let arr: [u8; 8] = b.as_ref().try_into().map_err(|_| Error::Corrupt {
                    what: format!("offset of {ns}/{source}/{partition}"),
                    reason: format!("{} bytes, expected 8", b.len()),
                })?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
            None => Ok(None),
        }
    }

    /// The committed counters of namespace `ns` (zero when none are stored).
    pub fn counters(&self, ns: &str) -> Result<Counters> {
        match self.state.get(key(b'c', &[ns.as_bytes()]))? {
            Some(b) => decode("counters", &b),
            None => Ok(Counters::default()),
        }
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter>> {
        self.state.scan_prefix(key(b'd', &[])).map(|item| {
            let (_, v) = item?;
            serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                what: "dead letter".into(),
                reason: e.to_string(),
            })
        })
    }

    /// An operator setting stored by name (e.g. a rollout set at runtime).
    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state
            .get(key(b's', &[name.as_bytes()]))?
            .map(|v| v.to_vec()))
    }

    /// Every stored next offset of namespace `ns`: (source, partition, next).
    pub fn offsets(&self, ns: &str) -> Result<Vec<(String, u32, u64)>> {
        let mut prefix = key(b'o', &[ns.as_bytes()]);
        prefix.push(0);
        let skip = prefix.len();
        let mut out = Vec::new();
        for item in self.state.scan_prefix(&prefix) {
            let (k, v) = item?;
            let rest = &k[skip..];
            // source \0 partition(4)
            if rest.len() < 5 {
                continue;
            }
            let (source, partition) = rest.split_at(rest.len() - 4);
            let source = String::from_utf8_lossy(&source[..source.len() - 1]).into_owned();
            let partition = u32::from_be_bytes(partition.try_into().unwrap_or([0; 4]));
            let next = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            out.push((source, partition, next));
        }
        Ok(out)
    }

    /// Delete everything of namespace `ns`: views, offsets, counters,
    /// audit and history (a retired generation).
    pub(crate) fn delete_ns(&self, ns: &str) -> Result<()> {
        // No view of `ns` may wait to be applied (or be applied again after
        // a restart) once it is deleted.
        let shared = &self.unapplied;
        let _commits = shared.commit.lock().recover();
        shared.settle()?;
        let mut batch = sled::Batch::default();
        for tag in [b'v', b'o', b'a', b'h'] {
            let mut prefix = key(tag, &[ns.as_bytes()]);
            prefix.push(0);
            for k in self.state.scan_prefix(prefix).keys() {
                batch.remove(k?);
            }
        }
        batch.remove(key(b'c', &[ns.as_bytes()]));
        self.state.apply_batch(batch)?;
        self.open.flush(&format!("deleting {ns}"))
    }

    /// Names of the settings that start with `prefix`, without it.
    pub fn setting_names(&self, prefix: &str) -> Vec<String> {
        let start = key(b's', &[prefix.as_bytes()]);
        let skip = start.len() - prefix.len();
        self.state
            .scan_prefix(&start)
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k[skip + prefix.len()..]).into_owned())
            .collect()
    }

    /// Which plugin version applied which offsets of `ns`: runs in
    /// (source, partition, from) order.
    pub fn audit(&self, ns: &str) -> Result<Vec<AuditRun>> {
        let mut prefix = key(b'a', &[ns.as_bytes()]);
        prefix.push(0);
        self.state
            .scan_prefix(prefix)
            .map(|item| {
                let (_, v) = item?;
                decode("audit", &v)
            })
            .collect()
    }

    /// Store an operator setting durably (`None` removes it).
    pub fn set_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let k = key(b's', &[name.as_bytes()]);
        match value {
            Some(v) => self.state.insert(k, v)?,
            None => self.state.remove(k)?,
        };
        self.open.flush(&format!("setting {name}"))
    }

    /// Retries due at `now_ms`, soonest first, at most `max`.
    pub fn due_retries(&self, now_ms: i64, max: usize) -> Result<Vec<RetryEntry>> {
        let end = retry_key(now_ms, u64::MAX);
        let mut out = Vec::new();
        for item in self.state.range(key(b'q', &[])..=end).take(max) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                what: "retry".into(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Events waiting for a retry.
    pub fn retry_count(&self) -> usize {
        self.state.scan_prefix(key(b'q', &[])).count()
    }

    /// A new batch of changes.
    pub(crate) fn writer(&self) -> Writer {
        let (bytes, views) = &*self.last_record;
        let views = ViewRecordBuf::with_capacity(
            bytes.load(Ordering::Relaxed),
            views.load(Ordering::Relaxed),
        );
        Writer::new(self.db.clone(), views)
    }

    /// Apply a batch atomically: its views as one record, the rest as
    /// they are. Waits first while too many views wait to be applied.
    pub(crate) fn commit(&self, mut writer: Writer) -> Result<()> {
        writer.bundle_spooled()?;
        let Writer {
            mut batch, views, ..
        } = writer;
        if views.is_empty() {
            self.state.apply_batch(batch)?;
            return Ok(());
        }
        let shared = &self.unapplied;
        let _commits = shared.commit.lock().recover();
        shared.wait_for_room()?;
        let seq = shared.next_seq();
        self.last_record
            .0
            .store(views.bytes.len(), Ordering::Relaxed);
        self.last_record
            .1
            .store(views.slots.len(), Ordering::Relaxed);
        let record = sled::IVec::from(views.bytes);
        batch.insert(&record_key(seq), record.clone());
        self.state.apply_batch(batch)?;
        shared.add(seq, &record, &views.slots);
        Ok(())
    }

    /// Make everything committed so far durable, waiting at most
    /// [`FLUSH_BOUND`] ([`Error::Unflushed`] when it did not finish).
    pub fn flush(&self) -> Result<()> {
        self.open.flush("flush")
    }
}

#[cfg(test)]
mod tests;
