//! Assembling a runtime from a [`Config`]: open the store, load every
//! `*.wasm` in the plugins directory with its settings and limits, and
//! hand back an [`Engine`]. The CLI and the end-to-end tests start here.

use crate::config::Config;
use anyhow::Context;
use projector_api::{Feed, ServeState, Serving};
use projector_common::shutdown::Shutdown;
use projector_core::driver::{self, Options, Totals, Until};
use projector_core::engine::{self, Engine};
use projector_core::source::Source;
use projector_core::store::Store;
use projector_deploy::Deployer;
use projector_host::fetch::Fetcher;
use projector_host::wasm::WasmHost;
use projector_sources::kafka::KafkaSource;
use projector_sources::log::{EmbeddedLog, LogSource};
use std::sync::Arc;

/// A runtime assembled from its config: the engine with every plugin
/// loaded, the deployer and the services plugins fetch from.
pub struct App {
    /// The config it was opened with.
    pub config: Config,
    /// The engine, with every plugin in the plugins directory loaded.
    pub engine: Arc<Engine>,
    /// Loads plugin versions and swaps them in (the registry).
    pub deployer: Arc<Deployer>,
    /// The services plugins fetch from.
    pub fetcher: Arc<Fetcher>,
}

/// A runtime at work: the embedded log followed into the engine on its
/// own thread, and the HTTP API.
pub struct Running {
    /// The API's state (also when the API is off).
    pub state: Arc<ServeState>,
    serving: Option<Serving>,
    pipeline: std::thread::JoinHandle<anyhow::Result<Totals>>,
    /// Threads beside the pipeline (the plugins directory's watcher, the
    /// sweep of expired views), each with its stop.
    helpers: Vec<(Shutdown, std::thread::JoinHandle<()>)>,
}

impl Running {
    /// Where the API listens (`None` when it is off).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.serving.as_ref().map(Serving::addr)
    }

    /// Wait for the pipeline to end (on `stop`, or idle with
    /// `exit_when_idle`), then stop the API.
    pub fn wait(mut self) -> anyhow::Result<Totals> {
        let totals = self
            .pipeline
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"));
        self.state.set_ready(false);
        for (stop, handle) in self.helpers.drain(..) {
            stop.stop();
            let _ = handle.join();
        }
        if let Some(serving) = self.serving.take() {
            serving.stop();
        }
        totals?
    }
}

impl Drop for App {
    /// Stop and join the deployer's threads (probation, shadow builds).
    fn drop(&mut self) {
        self.deployer.stop();
    }
}

impl App {
    /// Open the store and load every plugin.
    pub fn open(config: Config) -> anyhow::Result<Self> {
        if config.engine.memory_mb.is_some() {
            // Before the store and the plugins take their memory.
            crate::alloc::tune_for_budget();
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let budget = config
            .engine
            .memory_mb
            .map(projector_core::engine::MemoryBudget::mb);
        let cache_bytes = match budget {
            Some(b) => b.store_cache(),
            None => config.engine.store_cache_mb << 20,
        };
        let segment_bytes = (config.engine.store_segment_kb << 10) as usize;
        let store = Store::open_tuned(&config.data_dir, cache_bytes, segment_bytes)?;
        let mut engine = Engine::new(
            store,
            config.format,
            config.engine.workers,
            std::time::Duration::from_millis(config.engine.commit_interval_ms),
        );
        engine.set_retry(config.retry);
        engine.set_breaker(config.breaker);
        engine.set_view_cache(config.engine.view_cache_entries);
        if let Some(b) = budget {
            engine.set_memory_budget(b);
        }
        for name in config.plugins.keys() {
            let policy = config
                .policy(name)
                .map_err(|e| anyhow::anyhow!("config: {e}"))?;
            engine.set_policy(name, policy);
        }
        let engine = Arc::new(engine);
        let host = match config.engine.compile_cache_dir.as_deref() {
            Some(dir) if dir.as_os_str() != "off" => WasmHost::with_compile_cache(dir)
                .with_context(|| format!("compile cache in {}", dir.display()))?,
            _ => WasmHost::new()?,
        };
        let fetcher =
            Arc::new(Fetcher::new(&config.services).map_err(|e| anyhow::anyhow!("config: {e}"))?);
        let deployer = Arc::new(Deployer::new(
            config.deploy_settings(),
            engine.clone(),
            host,
            fetcher.clone(),
        )?);
        let app = App {
            config,
            engine,
            deployer,
            fetcher,
        };
        app.load_plugins()?;
        Ok(app)
    }

    /// The embedded log in this runtime's store, as `[log]` configures it.
    pub fn open_log(&self) -> anyhow::Result<EmbeddedLog> {
        let log = EmbeddedLog::open(
            self.engine.store(),
            self.config.log.partitions,
            self.config.format,
        )?;
        Ok(log.with_dedup_window(self.config.log.dedup_window)?)
    }

    /// Follow `log` into the engine on a thread until `stop` is set (or,
    /// with `exit_when_idle`, until caught up), and serve the API on
    /// `listen` (`None`: the config's `http.listen`; "off": no API), with
    /// events posted to it appended to `log`.
    pub fn start(
        &self,
        log: Arc<EmbeddedLog>,
        listen: Option<&str>,
        stop: Shutdown,
        exit_when_idle: bool,
    ) -> anyhow::Result<Running> {
        let source = Arc::new(LogSource::new(log.clone()));
        let feed = Feed::new(source.clone()).with_ingest(log);
        let until = if exit_when_idle {
            Until::Idle
        } else {
            Until::Stopped
        };
        self.start_source(source, feed, listen, stop, until)
    }

    /// Consume `[source.kafka]` into the engine until `stop` is set, and
    /// serve the API on `listen` (as [`App::start`]).
    pub fn start_kafka(&self, listen: Option<&str>, stop: Shutdown) -> anyhow::Result<Running> {
        let config = self
            .config
            .source
            .kafka
            .clone()
            .ok_or_else(|| anyhow::anyhow!("config: no [source.kafka]"))?;
        let mut config = config;
        config.placement = self
            .config
            .plugins
            .iter()
            .filter_map(|(name, p)| p.partition_by.clone().map(|k| (name.clone(), k)))
            .collect();
        let source = Arc::new(KafkaSource::new(config)?);
        let feed = Feed::new(source.clone());
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            show_restores(source.stats.clone(), stop.clone())?;
        }
        self.start_source(source, feed, listen, stop, Until::Stopped)
    }

    /// Start `source` here (so that a source that cannot start fails the
    /// call), then drive it into the engine on the pipeline's thread.
    fn start_source(
        &self,
        source: Arc<dyn Source>,
        feed: Feed,
        listen: Option<&str>,
        stop: Shutdown,
        until: Until,
    ) -> anyhow::Result<Running> {
        driver::start(&self.engine, &*source)?;
        if let Some(replay) = source.replay() {
            self.deployer.set_replay(replay);
        }
        let (state, serving) = self.serve(feed, listen)?;
        if let (Some(router), Some(serving)) = (source.router(), &serving) {
            router.advertise(&format!("http://{}", serving.addr()));
        }
        let engine = self.engine.clone();
        let options = Options::new(self.config.engine.batch_size, until);
        let nice = self.config.engine.processing_nice;
        let pipeline = std::thread::Builder::new()
            .name("projector-pipeline".into())
            .spawn(move || {
                // The fold's worker threads start from this one: they
                // inherit its priority.
                if nice > 0 {
                    if let Err(e) = projector_common::priority::lower_this_thread(nice) {
                        tracing::warn!("[engine] processing_nice = {nice}: {e}");
                    }
                }
                let mut last_report = std::time::Instant::now();
                driver::drive(&engine, &*source, &options, &stop, |p| {
                    if last_report.elapsed().as_secs() >= 5 {
                        last_report = std::time::Instant::now();
                        tracing::info!(
                            events = p.totals.records,
                            applied = p.totals.counters.applied,
                            "progress"
                        );
                    }
                })
            })?;
        self.running(state, serving, pipeline)
    }

    /// A started pipeline with its API and the plugins directory's watcher,
    /// ready (before the caller announces the API).
    fn running(
        &self,
        state: Arc<ServeState>,
        serving: Option<Serving>,
        pipeline: std::thread::JoinHandle<anyhow::Result<Totals>>,
    ) -> anyhow::Result<Running> {
        let mut helpers: Vec<_> = self.watch_plugins()?.into_iter().collect();
        let stop = Shutdown::new();
        let sweep =
            engine::spawn_sweep(self.engine.clone(), self.config.sweep_pace(), stop.clone())?;
        helpers.push((stop, sweep));
        state.set_ready(true);
        Ok(Running {
            state,
            serving,
            pipeline,
            helpers,
        })
    }

    /// Watch the plugins directory, when the config asks to.
    fn watch_plugins(&self) -> anyhow::Result<Option<(Shutdown, std::thread::JoinHandle<()>)>> {
        if !self.config.engine.watch_plugins {
            return Ok(None);
        }
        let stop = Shutdown::new();
        let handle = projector_deploy::watch_dir(
            self.deployer.clone(),
            &self.config.plugins_dir,
            stop.clone(),
        )
        .with_context(|| format!("watching {}", self.config.plugins_dir.display()))?;
        Ok(Some((stop, handle)))
    }

    /// The API's state, and the server when `listen` is not "off".
    fn serve(
        &self,
        feed: Feed,
        listen: Option<&str>,
    ) -> anyhow::Result<(Arc<ServeState>, Option<Serving>)> {
        let state = Arc::new(
            ServeState::new(
                &self.config.api_settings(),
                self.engine.clone(),
                feed,
                Some(self.fetcher.clone()),
            )?
            .with_deployer(self.deployer.clone()),
        );
        let listen = listen.unwrap_or(&self.config.http.listen);
        let serving = match listen {
            "off" => None,
            addr => Some(Serving::start(state.clone(), addr)?),
        };
        Ok((state, serving))
    }

    fn load_plugins(&self) -> anyhow::Result<()> {
        let dir = &self.config.plugins_dir;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading plugins_dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        let registered = self.deployer.registry.names();
        for name in self.config.plugins.keys() {
            let has_file = files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == name.as_str()));
            if !has_file && !registered.contains(name) {
                tracing::warn!(
                    "config: [plugins.{name}] is set but there is no {name}.wasm in {}; it applies when a plugin of that name is added",
                    dir.display()
                );
            }
        }
        let mut loaded = Vec::new();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let entry = self.deployer.registry.entry(&name)?.unwrap_or_default();
            if entry.removed {
                tracing::info!(
                    plugin = name,
                    "{}: the plugin was removed at runtime and is not loaded (deploy it to add it back)",
                    path.display()
                );
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let code = self
                .deployer
                .start(&name, &bytes, &path.display().to_string())?;
            tracing::info!(plugin = name, id = &code.id()[..12], "loaded");
            loaded.push(name);
        }
        // Plugins added at runtime whose file is not in the directory: the
        // registry is the record.
        for name in registered.iter().filter(|n| !loaded.contains(n)) {
            let entry = self.deployer.registry.entry(name)?.unwrap_or_default();
            let (false, Some(active)) = (entry.removed, entry.active.as_deref()) else {
                continue;
            };
            let Some(bytes) = self.deployer.registry.code(active)? else {
                tracing::warn!(
                    plugin = name,
                    "its active version's code is not in the registry; not loaded"
                );
                continue;
            };
            let code = self.deployer.start(name, &bytes, "registry")?;
            tracing::info!(
                plugin = name,
                id = &code.id()[..12],
                "loaded from the registry"
            );
        }
        Ok(())
    }
}

/// On a terminal: a progress bar while a partition is restored from its
/// changelog, until `stop`.
fn show_restores(
    stats: Arc<projector_sources::kafka::KafkaStats>,
    stop: Shutdown,
) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    use projector_common::sync::Recover;
    std::thread::Builder::new()
        .name("projector-restore-bar".into())
        .spawn(move || {
            let mut bar: Option<ProgressBar> = None;
            while !stop.wait(std::time::Duration::from_millis(200)) {
                let progress = *stats.restore_progress.lock().recover();
                match (progress, &bar) {
                    (Some((read, total)), Some(b)) => {
                        b.set_length(total);
                        b.set_position(read);
                    }
                    (Some((read, total)), None) => {
                        let b = ProgressBar::new(total);
                        b.set_style(
                            ProgressStyle::with_template(
                                "restoring [{bar:40}] {pos}/{len} changelog records ({per_sec}, eta {eta})",
                            )
                            .expect("a valid template")
                            .progress_chars("=> "),
                        );
                        b.set_position(read);
                        bar = Some(b);
                    }
                    (None, Some(b)) => {
                        b.finish_and_clear();
                        bar = None;
                    }
                    (None, None) => {}
                }
            }
        })?;
    Ok(())
}
