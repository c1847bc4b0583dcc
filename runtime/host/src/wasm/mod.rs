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

use crate::{Code, Error, EventBatch, GuestError, KeyRun, Limits, Meta, PluginLogs, Session};
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
        world: "prefetching-plugin",
        // Arguments borrow from the host's data: lowering copies them into
        // the guest once, with no owned copy made first.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use crate::fetch_record::AnswerUsed;
use bindings::projector::plugin::{enrichment, host, types as wit};
use exports::PluginPre;
use session::WasmSession;

mod exports;
mod pack;
mod session;
#[cfg(test)]
mod tests;

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
        bindings::PrefetchingPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
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
        if is_core_module(bytes) {
            return Err(load_error(
                "a core Wasm module, not a component: build the plugin for \
                 `wasm32-wasip2` (cargo build --target wasm32-wasip2 --profile plugin)"
                    .into(),
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| load_error(format!("compile: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_error(format!("link: {e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| {
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
            peak_memory: Default::default(),
        };
        let info = WasmSession::new(&plugin).configure()?;
        plugin.meta.info = info;
        Ok(plugin)
    }
}

/// Whether `bytes` are a core Wasm module (binary version 1), which the
/// host cannot load: a plugin is a component.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// The services one plugin may fetch from.
#[derive(Debug, Clone)]
pub struct Services {
    /// The configured services, shared by every plugin.
    pub fetcher: Arc<crate::fetch::Fetcher>,
    /// Names of the services this plugin may fetch from (its allow-list).
    pub allowed: Vec<String>,
    /// Where its fetched answers are recorded for replay, if they are.
    pub record: Option<Arc<dyn crate::fetch_record::FetchRecord>>,
    /// Whether the fetches it names ahead (the WIT `prefetch`) are
    /// fetched before each batch (`[plugins.NAME] prefetch`, default on).
    pub prefetch: bool,
}

/// Compiled, pre-instantiated plugin code.
pub struct WasmPlugin {
    meta: Meta,
    settings: String,
    services: Option<Arc<Services>>,
    pre: PluginPre,
    /// Healthy stores handed back by finished sessions, reused by the next
    /// ones so a batch does not pay for instantiation and fresh pages.
    idle: std::sync::Mutex<Vec<Live>>,
    /// Instances started so far, the one that ran `configure` included.
    started: std::sync::atomic::AtomicU64,
    /// The most linear memory one instance held at the end of a session.
    peak_memory: std::sync::atomic::AtomicUsize,
}

/// A configured instance in its store.
type Live = (Store<HostState>, exports::Plugin);

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

    /// The most linear memory one instance of this plugin held at the end
    /// of a session, in bytes: what its memory cap must leave room for.
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
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
    fn services_down(&self) -> bool {
        self.services
            .as_ref()
            .is_some_and(|s| s.fetcher.any_open(&s.allowed))
    }
    fn records_fetches(&self) -> bool {
        self.services.as_ref().is_some_and(|s| s.record.is_some())
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
    /// The events are a replay: fetches take recorded answers first.
    replay: bool,
    /// Answers fetched ahead for the current batch.
    ahead: Option<Arc<crate::fetch::Ahead>>,
    /// The answers fetched ahead the current call used (service, path).
    taken: Vec<(String, String)>,
    /// The answers used since [`Session::answers_used`] was last asked
    /// (kept for plugins that record their fetches).
    used: Vec<crate::fetch_record::AnswerUsed>,
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
        // A replay takes what the live path saw, when it was recorded.
        let record = services.record.as_ref();
        if let (true, false, Some(r)) = (self.replay, fresh, record) {
            if let Some(f) = r.recorded(&service, &path) {
                services.fetcher.count_from_record(&service);
                self.used.push(AnswerUsed::of(&service, &path, &f, true));
                return Ok(wit::Fetched {
                    status: f.status,
                    body: f.body,
                    stale: f.stale,
                });
            }
        }
        let started = std::time::Instant::now();
        let ahead = self.ahead.as_ref().filter(|_| !fresh);
        let answer = match ahead.and_then(|a| a.get(&service, &path)) {
            Some(answer) => {
                self.taken.push((service.clone(), path.clone()));
                answer
            }
            None => services
                .fetcher
                .fetch(&services.allowed, &service, &path, fresh),
        };
        self.waited_ticks += started.elapsed().as_millis() as u64 + 1;
        if let (Ok(f), Some(r)) = (&answer, record) {
            self.used.push(AnswerUsed::of(&service, &path, f, false));
            if !f.stale {
                r.record(&service, &path, f);
                services.fetcher.count_recorded(&service);
            }
        }
        use projector_guest::FetchError as E;
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
