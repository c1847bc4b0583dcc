//! projector-host: the plugin host, which loads projection code and runs
//! it under limits, and the services plugins fetch from.
//!
//! Map: this file holds the [`Code`] and [`Session`] traits, [`Limits`]
//! and the plugin [`Error`]s; [`wasm`] is the wasmtime host; [`native`]
//! runs a Rust projection in process; [`fetch`] is the host side of the
//! plugins' `fetch` (enrichment); [`backoff`] is the retry schedule it
//! shares with the source of truth. It depends on the guest SDK only, and
//! nothing here names a store, a source or the engine.
//!
//! Owns the wasmtime [`Engine`](wasmtime::Engine) (component model, epoch
//! interruption), compiling each plugin once and pre-instantiating it, and
//! the [`Session`]s through which the engine calls a plugin for one batch.
//! Two kinds of code sit behind the same [`Code`] trait: Wasm components
//! ([`wasm`]) and native Rust projections ([`native`], for the SDK's
//! harness, benchmarks and tests). This module never stores anything and
//! never decides what an outcome means: the engine does.

#![deny(missing_docs)]

pub mod backoff;
mod coalesce;
pub mod fetch;
pub mod fetch_record;
pub mod native;
pub mod service_breaker;
pub mod wasm;

use projector_common::sync::Recover;
use projector_guest::{ApplyResult, Difference, Event, Info};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A plugin call that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A call ran past its deadline, and past its timeout retries.
    #[error("plugin {plugin}: out of time: the call ran past its {deadline_ms} ms deadline")]
    OutOfTime {
        /// Name of the plugin.
        plugin: String,
        /// The deadline it ran past, in ms.
        deadline_ms: u64,
    },
    /// The guest tried to grow its linear memory past `max_memory_bytes`.
    #[error("plugin {plugin}: memory limit: growing from {current} to {requested} bytes refused (max {max})")]
    MemoryLimit {
        /// Name of the plugin.
        plugin: String,
        /// Memory size before the refused growth, in bytes.
        current: usize,
        /// Memory size the growth asked for, in bytes.
        requested: usize,
        /// The `max_memory_bytes` limit, in bytes.
        max: usize,
    },
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    #[error("plugin {plugin}: trap: {message}")]
    Trap {
        /// Name of the plugin.
        plugin: String,
        /// The trap as wasmtime reports it.
        message: String,
    },
    /// The guest's output broke the host's rules: too large, not JSON, or the
    /// wrong number of answers.
    #[error("plugin {plugin}: bad output: {message}")]
    BadOutput {
        /// Name of the plugin.
        plugin: String,
        /// What was wrong with it.
        message: String,
    },
    /// The plugin failed the call with its own error (e.g. `configure` refused its settings).
    #[error("plugin {plugin}: {message}")]
    Guest {
        /// Name of the plugin.
        plugin: String,
        /// The plugin's error, prefixed by the call where known.
        message: String,
    },
    /// The code could not be loaded: compile, link or exports (Wasm), or `configure` (native).
    #[error("plugin {plugin}: cannot load: {message}")]
    Load {
        /// Name of the plugin.
        plugin: String,
        /// The stage that failed and why.
        message: String,
    },
    /// An event names a view that lives on another partition than the one
    /// the event arrived on (views are placed, see the Kafka source).
    #[error("plugin {plugin}: misrouted: {message}")]
    Misrouted {
        /// Name of the plugin.
        plugin: String,
        /// The key, where it lives, and where the event arrived.
        message: String,
    },
}

impl Error {
    /// A short, stable name for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::OutOfTime { .. } => "out-of-time",
            Error::MemoryLimit { .. } => "memory-limit",
            Error::Trap { .. } => "trap",
            Error::BadOutput { .. } => "bad-output",
            Error::Guest { .. } => "plugin-error",
            Error::Load { .. } => "load",
            Error::Misrouted { .. } => "misrouted",
        }
    }
}

/// Limits every plugin call runs under. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Guest time per event: a call carrying n events may run n times this
    /// (`batch.apply`: at most 64 events' worth and not retried, since past
    /// it the engine goes on key by key).
    pub epoch_deadline_ms: u64,
    /// Guest time to instantiate a plugin and run its `configure`.
    pub start_deadline_ms: u64,
    /// Linear memory of one instance.
    pub max_memory_bytes: usize,
    /// Encoded state of one view.
    pub max_state_bytes: usize,
    /// Rendered answer of one view.
    pub max_render_bytes: usize,
    /// View keys one event may touch.
    pub max_keys_per_event: usize,
    /// Length of one view key.
    pub max_key_bytes: usize,
    /// Times a call that ran out of time is retried before it fails
    /// (deadlines are wall-clock: a preempted call may overrun).
    pub timeout_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            epoch_deadline_ms: 10,
            start_deadline_ms: 1000,
            max_memory_bytes: 64 << 20,
            max_state_bytes: 1 << 20,
            max_render_bytes: 4 << 20,
            max_keys_per_event: 256,
            max_key_bytes: 512,
            timeout_retries: 2,
        }
    }
}

/// A guest's own error for one event or one call.
pub type GuestError = projector_guest::Error;

/// What every kind of loaded code carries: identity, declared info,
/// limits and log.
#[derive(Debug)]
pub struct Meta {
    /// The plugin's name (its file stem, or the native registration).
    pub name: String,
    /// Content id: SHA-256 of the `.wasm`, or `native:<name>`.
    pub id: String,
    /// What the plugin declares: name, version label, population, stale policy.
    pub info: Info,
    /// Limits its calls run under.
    pub limits: Limits,
    /// Guest `log` calls and stdout/stderr.
    pub logs: Arc<PluginLogs>,
}

/// Loaded plugin code: Wasm or native.
pub trait Code: Send + Sync {
    /// Identity, declared info, limits and log of this code.
    fn meta(&self) -> &Meta;
    /// A session for one batch of calls.
    fn session(&self) -> Box<dyn Session + '_>;

    /// The plugin's name.
    fn name(&self) -> &str {
        &self.meta().name
    }
    /// Content id: SHA-256 of the `.wasm`, or `native:<name>`.
    fn id(&self) -> &str {
        &self.meta().id
    }
    /// What the plugin declares: name, version label, population, stale policy.
    fn info(&self) -> &Info {
        &self.meta().info
    }
    /// Limits its calls run under.
    fn limits(&self) -> &Limits {
        &self.meta().limits
    }
    /// Its recent log lines.
    fn logs(&self) -> &PluginLogs {
        &self.meta().logs
    }
    /// Whether a service it may fetch from refuses fetches now (its
    /// breaker is open): a transient failure meanwhile waits in the retry
    /// path without using up an attempt.
    fn services_down(&self) -> bool {
        false
    }
    /// Whether it records the answers it fetches (`record_fetches`): its
    /// sessions then tell which answers each call used
    /// ([`Session::answers_used`]).
    fn records_fetches(&self) -> bool {
        false
    }
}

/// Calls into one plugin for the length of a batch. A Wasm session keeps
/// its store across calls and starts a fresh one after a failure.
pub trait Session {
    /// The view keys each event touches, one result per event; `Err` when the
    /// call failed as a whole.
    fn keys(&mut self, events: &[&Event]) -> Result<Vec<Result<Vec<String>, GuestError>>, Error>;
    /// Whether the events it is given are a replay (a generation being
    /// rebuilt): its fetches then take recorded answers first.
    fn replaying(&mut self, on: bool) {
        let _ = on;
    }
    /// Fetch ahead, all at once, what the plugin says `batch`'s events
    /// will fetch (the WIT `prefetch`): this session's fetches, and those
    /// of the sessions handed the answers with [`Session::fetched_ahead`],
    /// are answered from them first. `None` when nothing was fetched ahead.
    fn prefetch(&mut self, batch: &EventBatch) -> Option<Arc<fetch::Ahead>> {
        let _ = batch;
        None
    }
    /// The answers its calls used since this was last asked (only for
    /// code that [records its fetches](Code::records_fetches)), in the
    /// order they were used.
    fn answers_used(&mut self) -> Vec<fetch_record::AnswerUsed> {
        Vec::new()
    }
    /// Answer this session's fetches from `ahead` first (another session's
    /// [`Session::prefetch`] of the batch its events come from).
    fn fetched_ahead(&mut self, ahead: Option<Arc<fetch::Ahead>>) {
        let _ = ahead;
    }
    /// Fold `events` into the `state` of `key` (`None`: no view yet); stops
    /// at the first failing event.
    fn apply(
        &mut self,
        key: &str,
        state: Option<&[u8]>,
        events: &[&Event],
    ) -> Result<ApplyResult, Error>;
    /// `keys` for the `count` events of `batch` from index `start`.
    fn batch_keys(
        &mut self,
        batch: &EventBatch,
        start: usize,
        count: usize,
    ) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        let events = batch.events();
        let start = start.min(events.len());
        self.keys(&events[start..(start + count).min(events.len())])
    }
    /// `apply` for many keys of a batch at once: one result per run, each
    /// what `apply` gives for that key, state and events.
    fn apply_batch(
        &mut self,
        batch: &EventBatch,
        runs: &[KeyRun],
    ) -> Result<Vec<ApplyResult>, Error> {
        let events = batch.events();
        runs.iter()
            .map(|r| {
                let mine: Vec<&Event> = r.events.iter().map(|&i| events[i as usize]).collect();
                self.apply(r.key, r.state, &mine)
            })
            .collect()
    }
    /// The JSON text a reader receives for `state`, rendered at read time `now_ms`.
    fn render(
        &mut self,
        key: &str,
        state: &[u8],
        now_ms: i64,
    ) -> Result<Result<String, GuestError>, Error>;
    /// A state, and the source versions it reflects, from the source of
    /// truth's JSON `answer` for `key`.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &mut self,
        key: &str,
        answer: &str,
    ) -> Result<Result<(Vec<u8>, Vec<(String, u64)>), GuestError>, Error>;
    /// Convert a state written by the version labelled `from`; `None`: the key cannot be migrated.
    fn migrate(
        &mut self,
        key: &str,
        state: &[u8],
        from: &str,
    ) -> Result<Result<Option<Vec<u8>>, GuestError>, Error>;
    /// Differences between the projection's and the source of truth's JSON
    /// answers for `key` (empty: equal).
    fn compare(
        &mut self,
        key: &str,
        projection: &str,
        truth: &str,
    ) -> Result<Vec<Difference>, Error>;
}

/// The events of one batch, for a session's batch calls. Every batch has
/// its own id, so a session may hand the events to the plugin once and
/// refer to them by index in the calls that follow.
pub struct EventBatch<'e> {
    id: u64,
    events: &'e [&'e Event],
}

impl<'e> EventBatch<'e> {
    /// A batch of `events` with an id of its own.
    pub fn new(events: &'e [&'e Event]) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        EventBatch {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            events,
        }
    }
    /// Unique to this batch in this process.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The batch's events, in order.
    pub fn events(&self) -> &'e [&'e Event] {
        self.events
    }
}

/// One key's share of a batch for [`Session::apply_batch`].
pub struct KeyRun<'a> {
    /// The view key.
    pub key: &'a str,
    /// Its current state; `None` when it has no view yet.
    pub state: Option<&'a [u8]>,
    /// Indexes into the batch's events, in order.
    pub events: Vec<u32>,
}

/// A bounded ring of a plugin's recent log lines.
#[derive(Debug, Default)]
pub struct PluginLogs {
    lines: Mutex<VecDeque<String>>,
}

impl PluginLogs {
    const CAPACITY: usize = 1000;

    /// Append a log line, dropping the oldest once 1000 are kept.
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().recover();
        if lines.len() == Self::CAPACITY {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines kept, oldest first.
    pub fn recent(&self) -> Vec<String> {
        self.lines.lock().recover().iter().cloned().collect()
    }
}

/// Shared handle to loaded code.
pub type SharedCode = Arc<dyn Code>;
