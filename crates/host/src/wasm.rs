//! Wasm components under limits.
//!
//! One [`WasmHost`] per process holds the engine, the linker and the
//! epoch ticker. A [`WasmPlugin`] is compiled once (Cranelift) and
//! pre-instantiated; each [`Session`] instantiates it into a fresh store,
//! reuses that store for every call of its batch, and throws it away after
//! a trap so the next call starts clean. Every call runs under an epoch
//! deadline and a memory cap whose refusal is reported as a typed
//! [`Error::MemoryLimit`], not a bare trap. The WASI interfaces a
//! `wasm32-wasip2` guest imports are linked with nothing granted: no
//! directories, environment, network, or clock (it reads a frozen epoch);
//! stdout and stderr land in the plugin's log.

use super::{Code, Error, EventBatch, GuestError, KeyRun, Limits, Meta, PluginLogs, Session};
use projector_guest::{
    ApplyResult, Difference, ErrorKind, Event, Info, Outcome, Population, StalePolicy,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../guest-sdk/wit",
        world: "plugin",
        // Arguments borrow from the host's data: lowering copies them into
        // the guest once, with no owned copy made first.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::projector::plugin::{enrichment, host, types as wit};

/// One epoch tick: the resolution of every deadline.
const TICK: Duration = Duration::from_millis(1);
/// A `batch.apply` (or batch constructor) call's deadline is at most this many events' worth.
const MAX_BATCH_DEADLINE_EVENTS: usize = 64;
/// What a guest may write to stdout and stderr per session.
const STDIO_CAPACITY: usize = 64 << 10;

/// The engine, linker and epoch ticker shared by every Wasm plugin.
pub struct WasmHost {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<wasmtime::Cache>,
}

impl WasmHost {
    /// A host that compiles every plugin it loads.
    pub fn new() -> anyhow::Result<Self> {
        Self::build(None)
    }

    /// A host that keeps compiled plugins in `dir`, keyed by the code's
    /// hash and the engine's settings: a restart, or another runtime
    /// sharing the directory, loads them without compiling. Only code this
    /// host's engine wrote there is ever loaded back.
    pub fn with_compile_cache(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut config = wasmtime::CacheConfig::new();
        config.with_directory(std::path::absolute(dir)?);
        Self::build(Some(wasmtime::Cache::new(config)?))
    }

    /// Plugins loaded from the compile cache so far.
    pub fn compile_cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.cache_hits())
    }

    fn build(cache: Option<wasmtime::Cache>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.cache(cache.clone());
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `PROJECTOR_PERFMAP=1` lets `perf` name the functions of guests.
        if std::env::var_os("PROJECTOR_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        // The ticker lives as long as the engine: it holds only a weak handle.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("projector-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })?;
        Ok(WasmHost {
            engine,
            linker: Arc::new(linker),
            cache,
        })
    }

    /// Compile and pre-instantiate `bytes` as plugin `name`, configure it
    /// once with `settings` to learn its info, and check it implements the
    /// `projector:plugin/plugin` world.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        settings: &serde_json::Value,
    ) -> Result<WasmPlugin, Error> {
        self.load_logging_to(name, bytes, limits, settings, Arc::default())
    }

    /// [`WasmHost::load`], with the plugin's log lines going to `logs`
    /// (shared by the versions of one plugin). The instance that ran
    /// `configure` is kept for the first batch, so a swapped-in version
    /// does not instantiate on the event path.
    pub fn load_logging_to(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        settings: &serde_json::Value,
        logs: Arc<PluginLogs>,
    ) -> Result<WasmPlugin, Error> {
        let load_error = |message: String| Error::Load {
            plugin: name.to_string(),
            message,
        };
        let id = hex::encode(Sha256::digest(bytes));
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| load_error(format!("compile: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_error(format!("link: {e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| {
            load_error(format!(
                "exports: {e:#} (a plugin built against another copy of the \
                     projector:plugin WIT: rebuild it with this projector-guest)"
            ))
        })?;
        let mut plugin = WasmPlugin {
            meta: Meta {
                name: name.to_string(),
                id,
                info: Info {
                    name: name.to_string(),
                    version: String::new(),
                    population: Population::Lazy,
                    stale_policy: StalePolicy::Invalidate,
                    render_uses_time: true,
                },
                limits,
                logs,
            },
            settings: settings.to_string(),
            services: None,
            pre,
            idle: std::sync::Mutex::new(Vec::new()),
            started: Default::default(),
        };
        let info = WasmSession::new(&plugin).configure()?;
        plugin.meta.info = info;
        Ok(plugin)
    }
}

/// The services one plugin may fetch from.
#[derive(Debug, Clone)]
pub struct Services {
    pub fetcher: Arc<crate::fetch::Fetcher>,
    pub allowed: Vec<String>,
}

/// Compiled, pre-instantiated plugin code.
pub struct WasmPlugin {
    meta: Meta,
    settings: String,
    services: Option<Arc<Services>>,
    pre: bindings::PluginPre<HostState>,
    /// Healthy stores handed back by finished sessions, reused by the next
    /// ones so a batch does not pay for instantiation and fresh pages.
    idle: std::sync::Mutex<Vec<Live>>,
    /// Instances started so far, the one that ran `configure` included.
    started: std::sync::atomic::AtomicU64,
}

/// A configured instance in its store.
type Live = (Store<HostState>, bindings::Plugin);

/// A store is reused until its memory passes this share of the cap (the
/// guest heap does not shrink) or it has served this many calls.
const RECYCLE_MEMORY_SHARE: usize = 2;
const RECYCLE_CALLS: u64 = 100_000;

impl WasmPlugin {
    /// How many instances were started so far. A store is retired after
    /// a trap, or once worn (its memory past half the cap, or many calls),
    /// so a count that keeps growing under healthy traffic means the
    /// guest keeps memory between calls.
    pub fn instances_started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Let this plugin fetch from `services` (its allow-list).
    pub fn allow(mut self, services: Services) -> Self {
        self.services = Some(Arc::new(services));
        self
    }
}

impl Code for WasmPlugin {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn session(&self) -> Box<dyn Session + '_> {
        Box::new(WasmSession::new(self))
    }
}

/// Per-store host state: WASI with nothing granted, the memory limiter,
/// and where the guest's logs go.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    logs: Arc<PluginLogs>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout and stderr already copied to the plugin's log.
    drained: [usize; 2],
    calls: u64,
    services: Option<Arc<Services>>,
    /// Epoch ticks spent waiting on fetches in the current call: added to
    /// its deadline, which counts guest time only.
    waited_ticks: u64,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers the refused grow, so the trap that
/// follows is reported as [`Error::MemoryLimit`].
struct MemoryLimiter {
    max: usize,
    /// Linear memory granted so far.
    current: usize,
    refused: Option<(usize, usize)>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = Some((current, desired));
            return Ok(false);
        }
        self.current = desired;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The guest's wall and monotonic clocks: frozen at zero. Plugins get the
/// read time as an argument instead, so replays are deterministic.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl wit::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        let plugin = &*self.plugin;
        match level {
            wit::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            wit::LogLevel::Info => tracing::info!(plugin, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            wit::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
        self.logs.push(format!("{level:?}: {message}"));
    }
}

impl enrichment::Host for HostState {
    /// Fetch from an allow-listed service; anything else is refused
    /// without connecting.
    fn fetch(
        &mut self,
        service: String,
        path: String,
        fresh: bool,
    ) -> Result<wit::Fetched, wit::FetchError> {
        let Some(services) = self.services.clone() else {
            return Err(wit::FetchError::NotAllowed(service));
        };
        let started = std::time::Instant::now();
        let answer = services
            .fetcher
            .fetch(&services.allowed, &service, &path, fresh);
        self.waited_ticks += started.elapsed().as_millis() as u64 + 1;
        use crate::fetch::FetchError as E;
        match answer {
            Ok(f) => Ok(wit::Fetched {
                status: f.status,
                body: f.body,
                stale: f.stale,
            }),
            Err(e) => {
                tracing::debug!(plugin = &*self.plugin, service, path, "fetch failed: {e:?}");
                Err(match e {
                    E::NotAllowed(s) => wit::FetchError::NotAllowed(s),
                    E::Timeout => wit::FetchError::Timeout,
                    E::Unavailable(s) => wit::FetchError::Unavailable(s),
                    E::TooLarge(n) => wit::FetchError::TooLarge(n),
                })
            }
        }
    }
}

struct WasmSession<'a> {
    plugin: &'a WasmPlugin,
    live: Option<Live>,
    /// The batch whose events the live instance holds, and its handle.
    open: Option<(u64, ResourceAny)>,
}

impl<'a> WasmSession<'a> {
    fn new(plugin: &'a WasmPlugin) -> Self {
        let mut live = plugin.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some((store, _)) = live.as_mut() {
            store.data_mut().services = plugin.services.clone();
        }
        WasmSession {
            plugin,
            live,
            open: None,
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Guest {
            plugin: self.plugin.meta.name.clone(),
            message,
        }
    }

    /// Instantiate into a fresh store and configure the plugin.
    fn start(&mut self) -> Result<wit::PluginInfo, Error> {
        let p = self.plugin;
        p.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open = None;
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max: p.meta.limits.max_memory_bytes,
                current: 0,
                refused: None,
            },
            plugin: Arc::from(p.meta.name.as_str()),
            logs: p.meta.logs.clone(),
            stdout,
            stderr,
            drained: [0, 0],
            calls: 0,
            services: p.services.clone(),
            waited_ticks: 0,
        };
        let mut store = Store::new(p.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // At the deadline, credit the time spent waiting on fetches (host
        // time, not guest time); with none left to credit, interrupt.
        store.epoch_deadline_callback(|mut ctx| {
            let credit = std::mem::take(&mut ctx.data_mut().waited_ticks);
            if credit > 0 {
                Ok(wasmtime::UpdateDeadline::Continue(credit))
            } else {
                Err(Trap::Interrupt.into())
            }
        });
        let deadline_ms = p.meta.limits.start_deadline_ms.max(1);
        store.set_epoch_deadline(deadline_ms);
        let started = p.pre.instantiate(&mut store).and_then(|instance| {
            let info = instance
                .projector_plugin_projection()
                .call_configure(&mut store, &p.settings)?;
            Ok((instance, info))
        });
        match started {
            Ok((instance, info)) => {
                let info = info.map_err(|e| self.error(format!("configure: {}", e.message)))?;
                self.live = Some((store, instance));
                Ok(info)
            }
            Err(e) => Err(classify(&p.meta.name, e, &mut store, deadline_ms)),
        }
    }

    /// Run `attempt` again while it runs out of time, up to
    /// `timeout_retries` times. Deadlines are wall-clock epochs, so a call
    /// the OS preempted can run out of time through no fault of its own.
    /// Calls are pure functions of their arguments, so a retry is safe.
    fn retrying<R>(
        &mut self,
        mut attempt: impl FnMut(&mut Self) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut retries = self.plugin.meta.limits.timeout_retries;
        loop {
            match attempt(self) {
                Err(Error::OutOfTime { deadline_ms, .. }) if retries > 0 => {
                    retries -= 1;
                    tracing::warn!(
                        plugin = self.plugin.meta.name,
                        deadline_ms,
                        "call ran out of time; retrying"
                    );
                }
                done => return done,
            }
        }
    }

    fn configure(&mut self) -> Result<Info, Error> {
        let info = self.retrying(Self::start)?;
        Ok(Info {
            name: info.name,
            version: info.version,
            population: match info.population {
                wit::Population::Lazy => Population::Lazy,
                wit::Population::Eager => Population::Eager,
            },
            stale_policy: match info.stale_policy {
                wit::StalePolicy::Invalidate => StalePolicy::Invalidate,
                wit::StalePolicy::Ignore => StalePolicy::Ignore,
            },
            render_uses_time: info.render_uses_time,
        })
    }

    /// Run `f` in the live store with a deadline for `events` events,
    /// retried while it runs out of time; on failure, drop the store so
    /// the next call starts clean.
    fn call<R>(
        &mut self,
        events: usize,
        mut f: impl FnMut(&mut Store<HostState>, &bindings::Plugin) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        self.retrying(|session| session.call_once(events, &mut f))
    }

    /// A batch export must answer once per item it was given.
    fn check_count(&self, export: &str, answers: usize, asked: usize) -> Result<(), Error> {
        if answers == asked {
            return Ok(());
        }
        Err(Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message: format!("{export} gave {answers} answers for {asked} items"),
        })
    }

    /// [`WasmSession::call`] without retries.
    fn call_once<R>(
        &mut self,
        events: usize,
        f: &mut impl FnMut(&mut Store<HostState>, &bindings::Plugin) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let deadline_ms = self.plugin.meta.limits.epoch_deadline_ms.max(1) * events.max(1) as u64;
        if self.live.is_none() {
            self.start()?;
        }
        let Some((store, instance)) = self.live.as_mut() else {
            unreachable!("start() leaves a live store or fails");
        };
        store.set_epoch_deadline(deadline_ms);
        store.data_mut().calls += 1;
        store.data_mut().waited_ticks = 0;
        let e = match f(store, instance) {
            Ok(r) => return Ok(r),
            Err(e) => classify(&self.plugin.meta.name, e, store, deadline_ms),
        };
        if let Some((mut store, _)) = self.live.take() {
            drain_stdio(store.data_mut());
        }
        // The batch handed over lived in that store.
        self.open = None;
        Err(e)
    }

    /// The plugin's handle on `batch`: the open one, or a new one made by
    /// handing the batch's events over (closing the one before).
    fn batch_handle(&mut self, batch: &EventBatch) -> Result<ResourceAny, Error> {
        match self.open {
            Some((id, handle)) if id == batch.id() && self.live.is_some() => return Ok(handle),
            _ => self.close_batch(),
        }
        let (text, list) = pack(batch.events()).map_err(|message| Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message,
        })?;
        let work = list.len().min(MAX_BATCH_DEADLINE_EVENTS);
        let handle = self.call_once(work, &mut |s, i| {
            let packed = wit::PackedEvents {
                text: &text,
                events: &list,
            };
            i.projector_plugin_projection()
                .batch()
                .call_constructor(s, packed)
        })?;
        self.open = Some((batch.id(), handle));
        Ok(handle)
    }

    /// Let the plugin free the open batch's events.
    fn close_batch(&mut self) {
        if let Some((_, handle)) = self.open.take() {
            if self.live.is_some() {
                // A failure here retires the store, which frees them too.
                let _ = self.call_once(1, &mut |s, _| handle.resource_drop(s));
            }
        }
    }
}

impl Drop for WasmSession<'_> {
    /// Hand a healthy store back for the next session; retire the others.
    fn drop(&mut self) {
        self.close_batch();
        let Some(mut live) = self.live.take() else {
            return;
        };
        let state = live.0.data_mut();
        drain_stdio(state);
        let worn = state.limiter.current > state.limiter.max / RECYCLE_MEMORY_SHARE
            || state.calls > RECYCLE_CALLS
            || state.drained.iter().any(|n| *n > STDIO_CAPACITY / 2);
        if !worn {
            self.plugin
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(live);
        }
    }
}

/// Copy what the guest wrote to stdout and stderr since the last drain
/// into the plugin's log.
fn drain_stdio(state: &mut HostState) {
    for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
        let pipe = if i == 0 { &state.stdout } else { &state.stderr };
        let bytes = pipe.contents();
        let fresh = &bytes[state.drained[i].min(bytes.len())..];
        state.drained[i] = bytes.len();
        for line in String::from_utf8_lossy(fresh)
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::info!(plugin = &*state.plugin, stream, "{line}");
            state.logs.push(format!("{stream}: {line}"));
        }
    }
}

fn classify(
    plugin: &str,
    e: wasmtime::Error,
    store: &mut Store<HostState>,
    deadline_ms: u64,
) -> Error {
    let plugin = plugin.to_string();
    if let Some((current, requested)) = store.data_mut().limiter.refused.take() {
        let max = store.data().limiter.max;
        return Error::MemoryLimit {
            plugin,
            current,
            requested,
            max,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::OutOfTime {
            plugin,
            deadline_ms,
        },
        _ => Error::Trap {
            plugin,
            message: format!("{e:#}"),
        },
    }
}

fn to_wit(e: &Event) -> wit::Event<'_> {
    wit::Event {
        id: &e.id,
        event_type: &e.event_type,
        source: &e.source,
        key: &e.key,
        version: e.version,
        time_ms: e.time_ms,
        payload: &e.payload,
    }
}

/// The span of `len` items from `start`; every position of a packed call
/// fits a `u32` (the WIT span's), checked up front by [`fits`].
fn span(start: usize, len: usize) -> wit::Span {
    wit::Span {
        start: start as u32,
        len: len as u32,
    }
}

/// Refuse a packed call whose parts do not fit the WIT span's `u32`.
fn fits(what: &str, size: usize) -> Result<(), String> {
    match u32::try_from(size) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{what} of {size} items, over the {} one call can pass",
            u32::MAX
        )),
    }
}

/// `events` as one text holding all their strings, and each event with
/// the spans of its strings in that text (the WIT `packed-events`).
fn pack(events: &[&Event]) -> Result<(String, Vec<wit::PackedEvent>), String> {
    let size: usize = events
        .iter()
        .map(|e| e.id.len() + e.event_type.len() + e.source.len() + e.key.len() + e.payload.len())
        .sum();
    fits("a batch's text", size)?;
    let mut text = String::with_capacity(size);
    let mut put = |s: &str| {
        let at = span(text.len(), s.len());
        text.push_str(s);
        at
    };
    let list = events
        .iter()
        .map(|e| wit::PackedEvent {
            id: put(&e.id),
            event_type: put(&e.event_type),
            source: put(&e.source),
            key: put(&e.key),
            version: e.version,
            time_ms: e.time_ms,
            payload: put(&e.payload),
        })
        .collect();
    Ok((text, list))
}

/// The parts of a WIT `packed-runs`: keys, states, event indexes, and
/// each run's spans in them.
type RunParts = (String, Vec<u8>, Vec<u32>, Vec<wit::KeyRun>);

/// `runs` in one piece (the WIT `packed-runs`).
fn pack_runs(runs: &[KeyRun]) -> Result<RunParts, String> {
    let keys_size: usize = runs.iter().map(|r| r.key.len()).sum();
    let states_size: usize = runs.iter().map(|r| r.state.map_or(0, <[u8]>::len)).sum();
    let events_size: usize = runs.iter().map(|r| r.events.len()).sum();
    fits("a call's keys", keys_size)?;
    fits("a call's states", states_size)?;
    fits("a call's event indexes", events_size)?;
    let mut keys = String::with_capacity(keys_size);
    let mut states = Vec::with_capacity(states_size);
    let mut events = Vec::with_capacity(events_size);
    let mut list = Vec::with_capacity(runs.len());
    for r in runs {
        let key = span(keys.len(), r.key.len());
        keys.push_str(r.key);
        let state = r.state.map(|s| {
            let at = span(states.len(), s.len());
            states.extend_from_slice(s);
            at
        });
        let at = span(events.len(), r.events.len());
        events.extend_from_slice(&r.events);
        list.push(wit::KeyRun {
            key,
            state,
            events: at,
        });
    }
    Ok((keys, states, events, list))
}

fn from_wit_result(r: wit::ApplyResult) -> ApplyResult {
    ApplyResult {
        outcome: match r.outcome {
            wit::Outcome::Put(s) => Outcome::Put(s),
            wit::Outcome::Delete => Outcome::Delete,
            wit::Outcome::Invalidate => Outcome::Invalidate,
            wit::Outcome::Skip => Outcome::Skip,
        },
        applied: r.applied,
        error: r.error.map(from_wit_error),
    }
}

fn from_wit_error(e: wit::PluginError) -> GuestError {
    GuestError {
        kind: match e.kind {
            wit::ErrorKind::BadInput => ErrorKind::BadInput,
            wit::ErrorKind::Transient => ErrorKind::Transient,
            wit::ErrorKind::Internal => ErrorKind::Internal,
        },
        message: e.message,
    }
}

impl Session for WasmSession<'_> {
    fn keys(&mut self, events: &[&Event]) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        let list: Vec<wit::Event> = events.iter().map(|e| to_wit(e)).collect();
        let out = self.call(events.len(), |s, i| {
            i.projector_plugin_projection().call_keys(s, &list)
        })?;
        self.check_count("keys", out.len(), events.len())?;
        Ok(out.into_iter().map(|r| r.map_err(from_wit_error)).collect())
    }

    fn apply(
        &mut self,
        key: &str,
        state: Option<&[u8]>,
        events: &[&Event],
    ) -> Result<ApplyResult, Error> {
        let list: Vec<wit::Event> = events.iter().map(|e| to_wit(e)).collect();
        let r = self.call(events.len(), |s, i| {
            i.projector_plugin_projection()
                .call_apply(s, key, state, &list)
        })?;
        Ok(from_wit_result(r))
    }

    fn batch_keys(
        &mut self,
        batch: &EventBatch,
        start: usize,
        count: usize,
    ) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        let out = self.retrying(|session| {
            let handle = session.batch_handle(batch)?;
            session.call_once(count, &mut |s, i| {
                i.projector_plugin_projection().batch().call_keys(
                    s,
                    handle,
                    start as u32,
                    count as u32,
                )
            })
        })?;
        self.check_count("keys", out.len(), count)?;
        Ok(out.into_iter().map(|r| r.map_err(from_wit_error)).collect())
    }

    fn apply_batch(
        &mut self,
        batch: &EventBatch,
        runs: &[KeyRun],
    ) -> Result<Vec<ApplyResult>, Error> {
        let (keys, states, events, list) = pack_runs(runs).map_err(|message| Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message,
        })?;
        // The deadline grows with the work, up to a bound: a guest stuck on
        // one key must not hold the whole batch for long (the engine then
        // goes key by key, each under its own deadline).
        let work = runs
            .iter()
            .map(|r| r.events.len())
            .sum::<usize>()
            .min(MAX_BATCH_DEADLINE_EVENTS);
        // Not retried when out of time: the engine's key-by-key fallback is
        // the retry, each call there with its own deadline and retries.
        let handle = self.batch_handle(batch)?;
        let out = self.call_once(work, &mut |s, i| {
            let packed = wit::PackedRuns {
                keys: &keys,
                states: &states,
                events: &events,
                runs: &list,
            };
            i.projector_plugin_projection()
                .batch()
                .call_apply(s, handle, packed)
        })?;
        self.check_count("batch.apply", out.len(), runs.len())?;
        Ok(out.into_iter().map(from_wit_result).collect())
    }

    fn render(
        &mut self,
        key: &str,
        state: &[u8],
        now_ms: i64,
    ) -> Result<Result<String, GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_render(s, key, state, now_ms)
        })?;
        Ok(r.map_err(from_wit_error))
    }

    fn snapshot(
        &mut self,
        key: &str,
        answer: &str,
    ) -> Result<Result<(Vec<u8>, Vec<(String, u64)>), GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_from_snapshot(s, key, answer)
        })?;
        Ok(r.map(|s| (s.state, s.versions)).map_err(from_wit_error))
    }

    fn migrate(
        &mut self,
        key: &str,
        state: &[u8],
        from: &str,
    ) -> Result<Result<Option<Vec<u8>>, GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_migrate(s, key, state, from)
        })?;
        Ok(r.map_err(from_wit_error))
    }

    fn compare(
        &mut self,
        key: &str,
        projection: &str,
        source: &str,
    ) -> Result<Vec<Difference>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_comparison()
                .call_compare(s, key, projection, source)
        })?;
        Ok(match r {
            wit::Verdict::Equal => Vec::new(),
            wit::Verdict::Different(d) => d
                .into_iter()
                .map(|d| Difference {
                    path: d.path,
                    reason: d.reason,
                    projection: d.projection,
                    source: d.source,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox(host: &WasmHost) -> WasmPlugin {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/plugins/inbox-unread.wasm");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the suite runs with ./scripts/test.sh, which builds it; or ./scripts/build-plugins.sh)",
                path.display()
            )
        });
        host.load(
            "inbox-unread",
            &bytes,
            Limits::default(),
            &serde_json::json!({}),
        )
        .expect("the inbox plugin loads")
    }

    fn span(start: u32, len: u32) -> wit::Span {
        wit::Span { start, len }
    }

    #[test]
    fn packed_events_hold_every_string_at_its_span() {
        let events = [
            Event {
                id: "e1".into(),
                event_type: "MessageSent".into(),
                source: "inbox".into(),
                key: "s1".into(),
                version: 7,
                time_ms: 9,
                payload: "{\"a\":\"é\"}".into(),
                ..Default::default()
            },
            Event {
                id: "e2".into(),
                event_type: "ConversationRead".into(),
                source: "".into(),
                key: "s2".into(),
                ..Default::default()
            },
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let (text, list) = pack(&refs).expect("packs");
        let at = |s: wit::Span| &text[s.start as usize..(s.start + s.len) as usize];
        for (e, p) in events.iter().zip(&list) {
            assert_eq!(at(p.id), e.id);
            assert_eq!(at(p.event_type), e.event_type);
            assert_eq!(at(p.source), e.source);
            assert_eq!(at(p.key), e.key);
            assert_eq!(at(p.payload), e.payload);
            assert_eq!((p.version, p.time_ms), (e.version, e.time_ms));
        }
    }

    #[test]
    fn a_packed_batch_with_a_bad_span_fails_as_bad_input() {
        let host = WasmHost::new().expect("host");
        let plugin = inbox(&host);
        let mut session = WasmSession::new(&plugin);
        let event = |payload: wit::Span| wit::PackedEvent {
            id: span(0, 1),
            event_type: span(0, 1),
            source: span(0, 1),
            key: span(0, 1),
            version: 1,
            time_ms: 0,
            payload,
        };
        // Past the end of the text, and inside a two-byte character.
        for (text, payload) in [("abc", span(2, 5)), ("aé", span(0, 2))] {
            let keys = session
                .call_once(1, &mut |s, i| {
                    let batch = i.projector_plugin_projection().batch();
                    let events = [event(payload)];
                    let packed = wit::PackedEvents {
                        text,
                        events: &events,
                    };
                    let handle = batch.call_constructor(&mut *s, packed)?;
                    let keys = batch.call_keys(&mut *s, handle, 0, 1)?;
                    handle.resource_drop(s)?;
                    Ok(keys)
                })
                .expect("the calls return");
            assert_eq!(keys.len(), 1);
            let error = keys[0].as_ref().expect_err("a bad span fails");
            assert!(matches!(error.kind, wit::ErrorKind::BadInput), "{error:?}");
            assert!(error.message.contains("span"), "{}", error.message);
        }
    }

    #[test]
    fn a_run_with_a_bad_span_fails_as_bad_input_and_the_others_apply() {
        let host = WasmHost::new().expect("host");
        let plugin = inbox(&host);
        let mut session = WasmSession::new(&plugin);
        let payload = r#"{"conversation_id":"c1","site_id":"s1","sender_id":"u1","participants":["u1","u2"]}"#;
        let sent = Event {
            id: "e1".into(),
            event_type: "MessageSent".into(),
            source: "inbox".into(),
            key: "s1".into(),
            version: 1,
            time_ms: 5,
            payload: payload.into(),
            ..Default::default()
        };
        let (text, list) = pack(&[&sent]).expect("packs");
        let runs = [
            wit::KeyRun {
                key: span(0, 5),
                state: None,
                events: span(0, 1),
            },
            // Its key lies past the end of `keys`.
            wit::KeyRun {
                key: span(3, 9),
                state: None,
                events: span(0, 1),
            },
            // Its events lie past the end of `events`.
            wit::KeyRun {
                key: span(0, 5),
                state: None,
                events: span(1, 1),
            },
        ];
        let results = session
            .call_once(1, &mut |s, i| {
                let batch = i.projector_plugin_projection().batch();
                let packed = wit::PackedEvents {
                    text: &text,
                    events: &list,
                };
                let handle = batch.call_constructor(&mut *s, packed)?;
                let packed = wit::PackedRuns {
                    keys: "u2:s1",
                    states: &[],
                    events: &[0],
                    runs: &runs,
                };
                let results = batch.call_apply(&mut *s, handle, packed)?;
                handle.resource_drop(s)?;
                Ok(results)
            })
            .expect("the calls return");
        assert_eq!(results.len(), 3);
        assert!(
            matches!(results[0].outcome, wit::Outcome::Put(_)),
            "{:?}",
            results[0]
        );
        assert_eq!((results[0].applied, results[0].error.is_none()), (1, true));
        for bad in &results[1..] {
            let error = bad.error.as_ref().expect("a bad span fails");
            assert!(matches!(error.kind, wit::ErrorKind::BadInput), "{error:?}");
            assert!(error.message.contains("span"), "{}", error.message);
            assert_eq!(bad.applied, 0);
        }
    }
}
