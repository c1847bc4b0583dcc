//! The plugin registry: every version of every plugin ever deployed, by
//! content hash (SHA-256 of the `.wasm`), with the active one and the
//! ones it replaced, kept in the store with the code itself; and the
//! [`Deployer`] that compiles a version off the event path and swaps it
//! in at the next batch boundary (`replace` mode).
//!
//! A version that fails to compile, to link, to implement the plugin
//! world or to start is rejected with its reason, and the running one
//! keeps running. Deploying bytes already active is a no-op. At start the
//! active version is loaded from the registry, so a deploy survives a
//! restart (and, with the compile cache, is not compiled again).

use crate::config::Config;
use crate::engine::Engine;
use crate::plugin::wasm::{Services, WasmHost};
use crate::plugin::SharedCode;
use crate::source::log::EmbeddedLog;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("plugin {name}: version {id} rejected: {reason}")]
    Rejected {
        name: String,
        id: String,
        reason: String,
    },
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NoEarlier(String),
    #[error("plugin {name}: version {id} is not in the registry")]
    UnknownVersion { name: String, id: String },
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error("plugin {0:?} has no shadow generation (deploy with mode=shadow)")]
    NoShadow(String),
    #[error("registry entry of {name}: {reason}")]
    Corrupt { name: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One deployed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// SHA-256 of the `.wasm`, hex.
    pub id: String,
    pub size: u64,
    pub deployed_ms: i64,
    /// Where it came from (`plugins_dir`, `api`, a file path...).
    pub from: String,
    /// Why the runtime rolled it back by itself, if it did.
    #[serde(default)]
    pub rolled_back: Option<String>,
}

/// A plugin's versions, the active one and those it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub versions: Vec<Version>,
    pub active: Option<String>,
    /// Versions that were active before, most recent last (rollback pops).
    pub history: Vec<String>,
    /// Where the active version's views live, when not under the
    /// plugin's name (a promoted shadow generation).
    #[serde(default)]
    pub ns: Option<String>,
    /// The version whose generation is kept beside the active one: a
    /// shadow being built or followed, or the old one after a promotion
    /// (until retired).
    #[serde(default)]
    pub shadow: Option<String>,
}

fn entry_setting(name: &str) -> String {
    format!("registry/{name}")
}

/// The registry's view of the store.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    code: sled::Tree,
}

impl Registry {
    pub fn open(store: &Store) -> Result<Self> {
        Ok(Registry {
            store: store.clone(),
            code: store.tree("plugin-code")?,
        })
    }

    pub fn entry(&self, name: &str) -> Result<Option<Entry>> {
        self.store
            .setting(&entry_setting(name))?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                    name: name.into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    fn put(&self, name: &str, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec(entry).expect("an entry serializes");
        self.store.set_setting(&entry_setting(name), Some(&bytes))?;
        Ok(())
    }

    /// The code of version `id`.
    pub fn code(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.code.get(id)?.map(|v| v.to_vec()))
    }

    /// Record `bytes` as a version of `name` (kept once per content).
    pub fn add(&self, name: &str, bytes: &[u8], from: &str) -> Result<Version> {
        let id = content_id(bytes);
        let mut entry = self.entry(name)?.unwrap_or_default();
        if let Some(v) = entry.versions.iter().find(|v| v.id == id) {
            return Ok(v.clone());
        }
        self.code.insert(id.as_bytes(), bytes)?;
        self.code.flush()?;
        let version = Version {
            id,
            size: bytes.len() as u64,
            deployed_ms: crate::engine::now_ms(),
            from: from.into(),
            rolled_back: None,
        };
        entry.versions.push(version.clone());
        self.put(name, &entry)?;
        Ok(version)
    }

    /// Make `id` the active version of `name`; the previous one goes on
    /// the history (unless this is a rollback to it).
    fn activate(&self, name: &str, id: &str, rollback: bool) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        if rollback {
            entry.history.pop();
        } else if let Some(old) = entry.active.take().filter(|old| old != id) {
            entry.history.push(old);
        }
        entry.active = Some(id.into());
        self.put(name, &entry)
    }

    /// Set the version kept beside the active one.
    fn set_shadow(&self, name: &str, id: Option<&str>) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.shadow = id.map(str::to_string);
        self.put(name, &entry)
    }

    /// Set where the active version's views live.
    fn set_ns(&self, name: &str, ns: &str) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.ns = (ns != name).then(|| ns.to_string());
        self.put(name, &entry)
    }

    /// Note that the runtime rolled `id` of `name` back, and why.
    fn mark_rolled_back(&self, name: &str, id: &str, reason: &str) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        if let Some(v) = entry.versions.iter_mut().find(|v| v.id == id) {
            v.rolled_back = Some(reason.into());
        }
        self.put(name, &entry)
    }

    /// Every plugin with an entry.
    pub fn names(&self) -> Vec<String> {
        self.store.setting_names("registry/")
    }
}

/// SHA-256 of a `.wasm`, hex: a version's id.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    pub plugin: String,
    pub id: String,
    /// The version active before (`None`: the plugin is new).
    pub replaced: Option<String>,
    /// False when these bytes were already active (nothing changed).
    pub changed: bool,
    pub compile_ms: u64,
    /// When the new code took over (between two batches).
    #[serde(skip)]
    pub swapped_at: Option<std::time::Instant>,
}

/// How a shadow generation gets its views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowMethod {
    /// Rebuild when the log reaches back to the beginning, else migrate.
    Auto,
    /// Apply the whole retained log from its start.
    Rebuild,
    /// Convert every live view with the new code's `migrate`; keys it
    /// cannot convert are left absent and populate again from the source
    /// of truth on their next read.
    Migrate,
}

/// A log a shadow generation can be rebuilt from.
pub trait Retained: Send + Sync {
    /// (source id, partition) of every partition this runtime follows.
    fn partitions(&self) -> Vec<(String, u32)>;
    /// Whether every partition still holds its records from offset 0.
    fn complete(&self) -> bool;
    /// Up to `max` records of (source, partition) from `from` on.
    fn read(
        &self,
        source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<crate::engine::Record>>;
}

impl Retained for EmbeddedLog {
    fn partitions(&self) -> Vec<(String, u32)> {
        (0..EmbeddedLog::partitions(self))
            .map(|p| (crate::pipeline::LOG_SOURCE.to_string(), p))
            .collect()
    }

    fn complete(&self) -> bool {
        self.starts().iter().all(|s| *s == 0)
    }

    fn read(
        &self,
        _source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<crate::engine::Record>> {
        Ok(EmbeddedLog::read(self, partition, from, max)?)
    }
}

/// A shadow generation being built or kept beside the live one.
struct ShadowBuild {
    id: String,
    method: ShadowMethod,
    /// Views migrated and left absent (migrate).
    migrated: Mutex<Option<(u64, u64)>>,
    generation: Arc<crate::engine::Projection>,
    started: std::time::Instant,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
    error: Mutex<Option<String>>,
    comparison: Mutex<Option<Comparison>>,
}

/// Where a shadow deploy is.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    pub plugin: String,
    pub id: String,
    /// The generation's namespace.
    pub ns: String,
    /// `building`, `following`, `promoted` or `failed: ...`.
    pub phase: String,
    /// Records rebuilt of the total to rebuild.
    pub done: u64,
    pub total: u64,
    pub percent: f64,
    pub events_per_s: f64,
    pub eta_s: Option<f64>,
    pub comparison: Option<Comparison>,
    pub method: ShadowMethod,
    /// Views migrated, and views left absent to populate from the source.
    pub migrated: Option<u64>,
    pub not_migrated: Option<u64>,
}

/// Sampled keys compared between two generations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    pub compared: u64,
    pub equal: u64,
    pub mismatched: u64,
    /// Keys one of the generations lacks (or holds Invalid).
    pub missing: u64,
    /// Differences by the comparison rule's reason.
    pub reasons: std::collections::BTreeMap<String, u64>,
    pub examples: Vec<serde_json::Value>,
}

/// Loads plugin versions and swaps them into the engine.
pub struct Deployer {
    config: Config,
    engine: Arc<Engine>,
    host: WasmHost,
    fetcher: Arc<crate::fetch::Fetcher>,
    pub registry: Registry,
    /// The retained log shadow generations rebuild from.
    log: std::sync::OnceLock<Arc<dyn Retained>>,
    /// The shadow build of each plugin (at most one).
    shadows: Mutex<std::collections::HashMap<String, Arc<ShadowBuild>>>,
    /// Each plugin's log ring, shared by its versions.
    logs: Mutex<std::collections::HashMap<String, Arc<crate::plugin::PluginLogs>>>,
    /// One deploy at a time.
    busy: Mutex<()>,
}

impl Deployer {
    pub fn new(
        config: Config,
        engine: Arc<Engine>,
        host: WasmHost,
        fetcher: Arc<crate::fetch::Fetcher>,
    ) -> Result<Self> {
        let registry = Registry::open(engine.store())?;
        Ok(Deployer {
            config,
            engine,
            host,
            fetcher,
            registry,
            log: std::sync::OnceLock::new(),
            shadows: Mutex::new(Default::default()),
            logs: Mutex::new(Default::default()),
            busy: Mutex::new(()),
        })
    }

    pub fn host(&self) -> &WasmHost {
        &self.host
    }

    /// The retained log shadow generations rebuild from: the embedded
    /// log, or Kafka's source topics.
    pub fn set_log(&self, log: Arc<dyn Retained>) {
        let _ = self.log.set(log);
    }

    /// Compile and start `bytes` as plugin `name`, with its settings,
    /// limits and services: everything but the swap.
    fn load(&self, name: &str, bytes: &[u8]) -> Result<SharedCode> {
        let id = content_id(bytes);
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        let code = self
            .host
            .load_logging_to(
                name,
                bytes,
                self.config.limits_of(name),
                &self.config.settings_of(name),
                logs,
            )
            .map_err(|e| Error::Rejected {
                name: name.into(),
                id: id[..12].into(),
                reason: e.to_string(),
            })?;
        let allowed = self
            .config
            .plugins
            .get(name)
            .map(|p| p.services.clone())
            .unwrap_or_default();
        Ok(Arc::new(code.allow(Services {
            fetcher: self.fetcher.clone(),
            allowed,
        })))
    }

    fn population(&self, name: &str) -> Option<projector_guest::Population> {
        self.config.plugins.get(name).and_then(|p| p.population)
    }

    /// Load plugin `name` at start: its active version from the registry
    /// if it has one, else `bytes` (from the plugins directory), which
    /// then becomes its first version.
    pub fn start(&self, name: &str, bytes: &[u8], from: &str) -> Result<SharedCode> {
        let entry = self.registry.entry(name)?.unwrap_or_default();
        let file_id = content_id(bytes);
        let (code, id) = match entry.active.as_deref() {
            Some(active) if active != file_id => match self.registry.code(active)? {
                Some(stored) => {
                    tracing::info!(
                        plugin = name,
                        active = &active[..12],
                        file = &file_id[..12],
                        "loading the deployed version, not the plugins directory's"
                    );
                    (self.load(name, &stored)?, active.to_string())
                }
                None => (self.load(name, bytes)?, file_id),
            },
            _ => (self.load(name, bytes)?, file_id),
        };
        if entry.active.as_deref() != Some(id.as_str()) {
            self.registry.add(name, bytes, from)?;
            self.registry.activate(name, &id, false)?;
        }
        let ns = match (&entry.ns, entry.active.as_deref() == Some(id.as_str())) {
            (Some(ns), true) => ns.clone(),
            _ => name.to_string(),
        };
        self.engine
            .add_in(code.clone(), self.population(name), ns)?;
        Ok(code)
    }

    /// Deploy `bytes` as the new version of `name` in `replace` mode: it
    /// is compiled and started here, off the event path, then takes over
    /// at the next batch boundary. A plugin not loaded yet is added.
    pub fn deploy(&self, name: &str, bytes: &[u8], from: &str) -> Result<Deployed> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let id = content_id(bytes);
        let current = self
            .engine
            .projection(name)
            .ok()
            .map(|p| p.code().id().to_string());
        if current.as_deref() == Some(id.as_str()) {
            self.registry.add(name, bytes, from)?;
            return Ok(Deployed {
                plugin: name.into(),
                id,
                replaced: current,
                changed: false,
                compile_ms: 0,
                swapped_at: None,
            });
        }
        let started = std::time::Instant::now();
        let code = self.load(name, bytes)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        self.registry.add(name, bytes, from)?;
        let old = self.engine.projection(name).ok();
        self.swap(name, code, current.is_some())?;
        let swapped_at = std::time::Instant::now();
        self.registry.activate(name, &id, false)?;
        if let Some(old) = old {
            self.watch(name, old, &id);
        }
        tracing::info!(
            plugin = name,
            id = &id[..12],
            compile_ms,
            "deployed (replace)"
        );
        Ok(Deployed {
            plugin: name.into(),
            id,
            replaced: current,
            changed: true,
            compile_ms,
            swapped_at: Some(swapped_at),
        })
    }

    fn swap(&self, name: &str, code: SharedCode, loaded: bool) -> Result<()> {
        if loaded {
            self.engine.replace(code, self.population(name))?;
        } else {
            self.engine.add(code, self.population(name))?;
        }
        Ok(())
    }

    /// Watch a version on probation: if too many of its first events fail,
    /// swap the version it replaced (still loaded) back in.
    fn watch(&self, name: &str, old: Arc<crate::engine::Projection>, id: &str) {
        let deploy = self.config.deploy;
        if deploy.probation_events == 0 {
            return;
        }
        // Weak: a stopped runtime is not kept open by its watchers.
        let weak = Arc::downgrade(&self.engine);
        let (name, id) = (name.to_string(), id.to_string());
        let population = self.population(&name);
        let base = match self.engine.projection(&name) {
            Ok(p) => p.counters(),
            Err(_) => return,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("probation-{name}"))
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(10));
                let Some(engine) = weak.upgrade() else {
                    return;
                };
                let Ok(p) = engine.projection(&name) else {
                    return;
                };
                if p.code().id() != id {
                    return; // another deploy took over
                }
                let now = p.counters();
                let seen = now.received.saturating_sub(base.received);
                let failed = now.dead_lettered.saturating_sub(base.dead_lettered);
                let ratio = failed as f64 / seen.max(1) as f64;
                // Decided early once the failures exceed what the whole
                // probation allows, else at its end.
                let budget = (deploy.max_failure_ratio * deploy.probation_events as f64) as u64;
                let done = seen >= deploy.probation_events;
                if failed > budget || (done && ratio > deploy.max_failure_ratio) {
                    let reason = format!(
                        "{failed} of its first {seen} events failed (over {:.0} %)",
                        deploy.max_failure_ratio * 100.0
                    );
                    tracing::warn!(plugin = name, id = &id[..12], "{reason}: rolling back");
                    let back = engine
                        .replace(old.code().clone(), population)
                        .map_err(Error::from)
                        .and_then(|()| Registry::open(engine.store()))
                        .and_then(|registry| {
                            registry.activate(&name, old.code().id(), true)?;
                            registry.mark_rolled_back(&name, &id, &reason)
                        });
                    if let Err(e) = back {
                        tracing::error!(plugin = name, "automatic rollback failed: {e}");
                    }
                    return;
                }
                if done {
                    tracing::info!(
                        plugin = name,
                        id = &id[..12],
                        seen,
                        failed,
                        "probation passed"
                    );
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot watch a deploy on probation: {e}");
        }
    }

    /// Return `name` to the version active before the current one.
    pub fn rollback(&self, name: &str) -> Result<Deployed> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(b) = self.shadow_build(name) {
            let promoted = self
                .engine
                .projection(name)
                .is_ok_and(|p| p.ns() == b.generation.ns());
            if promoted {
                return self.demote(name, &b);
            }
        }
        let entry = self.registry.entry(name)?.unwrap_or_default();
        let previous = entry
            .history
            .last()
            .cloned()
            .ok_or_else(|| Error::NoEarlier(name.into()))?;
        let bytes = self
            .registry
            .code(&previous)?
            .ok_or_else(|| Error::UnknownVersion {
                name: name.into(),
                id: previous.clone(),
            })?;
        let started = std::time::Instant::now();
        let code = self.load(name, &bytes)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        self.swap(name, code, true)?;
        self.registry.activate(name, &previous, true)?;
        tracing::info!(plugin = name, id = &previous[..12], "rolled back");
        Ok(Deployed {
            plugin: name.into(),
            id: previous,
            replaced: entry.active,
            changed: true,
            compile_ms,
            swapped_at: Some(std::time::Instant::now()),
        })
    }

    /// Start a shadow deploy of `bytes` as plugin `name`: a new
    /// generation of its views is rebuilt from the start of the embedded
    /// log beside the live one, then follows live events; compare it,
    /// then promote it (or retire it). Progress in [`Deployer::shadow`].
    pub fn deploy_shadow(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        method: ShadowMethod,
    ) -> Result<ShadowStatus> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let reject = |reason: String| Error::Rejected {
            name: name.into(),
            id: content_id(bytes)[..12].into(),
            reason,
        };
        let log = self.log.get().cloned();
        let complete = log.as_ref().is_some_and(|l| l.complete());
        let method = match (method, &log) {
            (ShadowMethod::Auto, _) if complete => ShadowMethod::Rebuild,
            (ShadowMethod::Auto, _) => ShadowMethod::Migrate,
            (ShadowMethod::Rebuild, None) => {
                return Err(reject(
                    "this runtime follows no retained log to rebuild from; use migrate".into(),
                ))
            }
            (ShadowMethod::Rebuild, Some(_)) if !complete => {
                return Err(reject(
                    "the log no longer reaches back to the beginning (retention); use migrate"
                        .into(),
                ))
            }
            (m, _) => m,
        };
        let active = self.engine.projection(name)?;
        if let Some(s) = self
            .shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            if s.generation.is_building() {
                return Err(Error::Rejected {
                    name: name.into(),
                    id: s.id[..12].into(),
                    reason: "a shadow build of this plugin is in progress".into(),
                });
            }
        }
        let id = content_id(bytes);
        if active.code().id() == id {
            return Err(Error::Rejected {
                name: name.into(),
                id: id[..12].into(),
                reason: "this version is the active one".into(),
            });
        }
        let code = self.load(name, bytes)?;
        self.registry.add(name, bytes, from)?;
        let generation = self.engine.new_generation(code, self.population(name))?;
        self.registry.set_shadow(name, Some(&id))?;
        let build = Arc::new(ShadowBuild {
            id: id.clone(),
            method,
            migrated: Mutex::new(None),
            generation,
            started: std::time::Instant::now(),
            done: std::sync::atomic::AtomicU64::new(0),
            total: std::sync::atomic::AtomicU64::new(0),
            error: Mutex::new(None),
            comparison: Mutex::new(None),
        });
        self.shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), build.clone());
        let (me, name_owned) = (self.clone(), name.to_string());
        std::thread::Builder::new()
            .name(format!("shadow-{name}"))
            .spawn(move || {
                let built = match (method, log) {
                    (ShadowMethod::Rebuild, Some(log)) => {
                        me.rebuild(&name_owned, &build, log.as_ref())
                    }
                    _ => me.migrate(&name_owned, &build),
                };
                if let Err(e) = built {
                    tracing::error!(plugin = name_owned, "shadow build failed: {e}");
                    *build.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
            })
            .map_err(|e| Error::Corrupt {
                name: name.into(),
                reason: e.to_string(),
            })?;
        tracing::info!(plugin = name, id = &id[..12], "shadow build started");
        Ok(self.shadow(name).expect("just inserted"))
    }

    /// Rebuild a generation from the start of the log until it is within
    /// a batch of the live path, then join it.
    fn rebuild(&self, name: &str, build: &ShadowBuild, log: &dyn Retained) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        const BATCH: usize = 4096;
        let g = &build.generation;
        let parts = log.partitions();
        let read = |source: &str, p: u32, from: u64| {
            log.read(source, p, from, BATCH)
                .map_err(|e| crate::engine::Error::Guest {
                    plugin: name.into(),
                    message: format!("reading {source}/{p} from {from}: {e:#}"),
                })
        };
        loop {
            let mut behind = 0u64;
            for (source, p) in &parts {
                let from = self.engine.generation_offset(g, source, *p)?;
                let to = self.engine.applied(name, source, *p)?;
                if from >= to {
                    continue;
                }
                let mut batch = read(source, *p, from)?;
                batch.retain(|r| r.offset < to);
                let n = batch.len() as u64;
                if n == 0 {
                    return Err(Error::Corrupt {
                        name: name.into(),
                        reason: format!("{source}/{p}: no records between {from} and {to}"),
                    });
                }
                self.engine.build(g, source, *p, &batch)?;
                build.done.fetch_add(n, Relaxed);
                behind += to - from - n.min(to - from);
            }
            build
                .total
                .store(build.done.load(Relaxed) + behind, Relaxed);
            if behind <= BATCH as u64 {
                break;
            }
        }
        self.engine.follow(g, &parts, |source, p, from| {
            let to = self.engine.applied(name, source, p)?;
            let mut out = Vec::new();
            let mut at = from;
            while at < to {
                let batch = read(source, p, at)?;
                let Some(last) = batch.last().map(|r| r.offset) else {
                    break;
                };
                out.extend(batch.into_iter().filter(|r| r.offset < to));
                at = last + 1;
            }
            build.done.fetch_add(out.len() as u64, Relaxed);
            Ok(out)
        })?;
        build.total.store(build.done.load(Relaxed), Relaxed);
        tracing::info!(
            plugin = name,
            events = build.done.load(Relaxed),
            secs = build.started.elapsed().as_secs_f64(),
            "shadow generation built; following live events"
        );
        Ok(())
    }

    /// Seed a generation by migrating every live view with the new code's
    /// `migrate`, then join it to the live path.
    fn migrate(&self, name: &str, build: &ShadowBuild) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let active = self.engine.projection(name)?;
        let from_version = active.code().info().version.clone();
        let g = &build.generation;
        let mut session = g.code().session();
        let (migrated, absent) = self.engine.seed(
            g,
            &active,
            |key, record| {
                let state = record.view.state.as_deref()?;
                match session.migrate(key, state, &from_version) {
                    Ok(Ok(Some(new))) => {
                        let mut r = record.clone();
                        r.view.state = Some(new);
                        Some(r)
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(plugin = name, key, "not migrated: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(plugin = name, key, "not migrated: {e}");
                        None
                    }
                }
            },
            |done, total| {
                build.done.store(done, Relaxed);
                build.total.store(total, Relaxed);
            },
        )?;
        *build.migrated.lock().unwrap_or_else(|e| e.into_inner()) = Some((migrated, absent));
        tracing::info!(
            plugin = name,
            migrated,
            absent,
            "shadow generation migrated; following live events"
        );
        Ok(())
    }

    /// The shadow build of `name`, if any.
    pub fn shadow(&self, name: &str) -> Option<ShadowStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let b = self
            .shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)?
            .clone();
        let error = b.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let comparison = b
            .comparison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let migrated = *b.migrated.lock().unwrap_or_else(|e| e.into_inner());
        let done = b.done.load(Relaxed);
        let total = b.total.load(Relaxed).max(done);
        let secs = b.started.elapsed().as_secs_f64();
        let building = b.generation.is_building();
        let rate = done as f64 / secs.max(1e-3);
        let active = self
            .engine
            .projection(name)
            .map(|p| p.ns() == b.generation.ns())
            .unwrap_or(false);
        Some(ShadowStatus {
            plugin: name.into(),
            id: b.id.clone(),
            ns: b.generation.ns().into(),
            phase: match (error, building, active) {
                (Some(e), _, _) => format!("failed: {e}"),
                (None, true, _) => "building".into(),
                (None, false, true) => "promoted".into(),
                (None, false, false) => "following".into(),
            },
            done,
            total,
            percent: if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            },
            events_per_s: rate,
            eta_s: building.then(|| (total - done) as f64 / rate.max(1e-9)),
            comparison,
            method: b.method,
            migrated: migrated.map(|m| m.0),
            not_migrated: migrated.map(|m| m.1),
        })
    }

    fn shadow_build(&self, name: &str) -> Result<Arc<ShadowBuild>> {
        self.shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoShadow(name.into()))
    }

    /// Compare up to `sample` keys (spread over the key space) between the
    /// generation serving reads and the other one, with the plugin's
    /// comparison rule.
    pub fn compare(&self, name: &str, sample: usize) -> Result<Comparison> {
        let b = self.shadow_build(name)?;
        let active = self.engine.projection(name)?;
        let other = if active.ns() == b.generation.ns() {
            self.engine
                .shadows(name)
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoShadow(name.into()))?
        } else {
            b.generation.clone()
        };
        if other.is_building() {
            return Err(Error::Rejected {
                name: name.into(),
                id: b.id[..12].into(),
                reason: "the shadow generation is still being built".into(),
            });
        }
        let keys: Vec<String> = self
            .engine
            .store()
            .views(active.ns())
            .filter_map(|v| v.ok().map(|(k, _)| k))
            .collect();
        let step = keys.len().div_ceil(sample.max(1)).max(1);
        let now = crate::engine::now_ms();
        let mut c = Comparison::default();
        let mut session = other.code().session();
        for key in keys.iter().step_by(step) {
            let a = self
                .engine
                .read_in(&active, key, now)?
                .and_then(|v| v.json());
            let b = self
                .engine
                .read_in(&other, key, now)?
                .and_then(|v| v.json());
            c.compared += 1;
            let (Some(a), Some(b)) = (a, b) else {
                c.missing += 1;
                continue;
            };
            if a == b {
                c.equal += 1;
                continue;
            }
            let differences = session
                .compare(key, &b.to_string(), &a.to_string())
                .map_err(crate::engine::Error::from)?;
            if differences.is_empty() {
                c.equal += 1;
                continue;
            }
            c.mismatched += 1;
            for d in &differences {
                *c.reasons.entry(d.reason.clone()).or_default() += 1;
            }
            if c.examples.len() < 10 {
                c.examples.push(serde_json::json!({
                    "key": key, "serving": a, "other": b,
                    "differences": differences.iter().map(|d| serde_json::json!({
                        "path": d.path, "reason": d.reason})).collect::<Vec<_>>(),
                }));
            }
        }
        *b.comparison.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Make the shadow generation of `name` serve reads (and the live
    /// path), keeping the old one current beside it for a rollback.
    pub fn promote(&self, name: &str) -> Result<ShadowStatus> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let b = self.shadow_build(name)?;
        let old = self.engine.projection(name)?.code().id().to_string();
        self.engine.switch(&b.generation)?;
        self.registry.activate(name, &b.id, false)?;
        self.registry.set_ns(name, b.generation.ns())?;
        self.registry.set_shadow(name, Some(&old))?;
        tracing::info!(plugin = name, id = &b.id[..12], "promoted");
        drop(_one);
        Ok(self.shadow(name).expect("a shadow build"))
    }

    /// Undo a promotion: the previous generation serves again.
    fn demote(&self, name: &str, b: &ShadowBuild) -> Result<Deployed> {
        let old = self
            .engine
            .shadows(name)
            .into_iter()
            .find(|p| p.ns() != b.generation.ns())
            .ok_or_else(|| Error::NoEarlier(name.into()))?;
        self.engine.switch(&old)?;
        self.registry.activate(name, old.code().id(), true)?;
        self.registry.set_ns(name, old.ns())?;
        self.registry.set_shadow(name, Some(&b.id))?;
        tracing::info!(plugin = name, "promotion rolled back");
        Ok(Deployed {
            plugin: name.into(),
            id: old.code().id().into(),
            replaced: Some(b.id.clone()),
            changed: true,
            compile_ms: 0,
            swapped_at: None,
        })
    }

    /// Delete the generation of `name` that does not serve reads (the old
    /// one after a promotion, or an unwanted shadow).
    pub fn retire(&self, name: &str) -> Result<String> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let b = self.shadow_build(name)?;
        let victim = self
            .engine
            .shadows(name)
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoShadow(name.into()))?;
        if victim.is_building() {
            return Err(Error::Rejected {
                name: name.into(),
                id: b.id[..12].into(),
                reason: "the shadow generation is still being built".into(),
            });
        }
        self.engine.retire(&victim)?;
        self.registry.set_shadow(name, None)?;
        if victim.ns() == b.generation.ns() {
            self.shadows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
        } else {
            self.shadows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            let mut entry = self.registry.entry(name)?.unwrap_or_default();
            entry.history.retain(|h| h != victim.code().id());
            self.registry.put(name, &entry)?;
        }
        tracing::info!(plugin = name, ns = victim.ns(), "generation retired");
        Ok(victim.ns().to_string())
    }

    /// Every plugin's registry entry.
    pub fn list(&self) -> Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        for name in self.registry.names() {
            if let Some(e) = self.registry.entry(&name)? {
                out.push((name, e));
            }
        }
        Ok(out)
    }
}

/// How long a file must stay unchanged before it is deployed: a copy in
/// progress keeps changing it.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// Watch `dir` and deploy (replace mode) each `<plugin>.wasm` of a loaded
/// plugin that appears or changes, once it has stopped changing. Write a
/// new version elsewhere and rename it into place for an atomic swap; a
/// file still being written is not deployed, and one that does not
/// compile is rejected with a warning while the running version goes on.
/// Hidden files (`.name`) are ignored. Runs until `stop` is set.
pub fn watch_dir(
    deployer: Arc<Deployer>,
    dir: &std::path::Path,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use notify::Watcher;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    let dir = dir.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("plugin-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut pending: std::collections::HashMap<std::path::PathBuf, std::time::Instant> =
                Default::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(path) = rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    let wanted = path.extension().is_some_and(|x| x == "wasm")
                        && path.parent() == Some(dir.as_path())
                        && !path
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    if wanted {
                        pending.insert(path, std::time::Instant::now());
                    }
                    continue;
                }
                let quiet: Vec<_> = pending
                    .iter()
                    .filter(|(_, at)| at.elapsed() >= QUIET)
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in quiet {
                    pending.remove(&path);
                    deploy_file(&deployer, &path);
                }
            }
        })?;
    Ok(handle)
}

fn deploy_file(deployer: &Deployer, path: &std::path::Path) {
    let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return;
    };
    let Ok(bytes) = std::fs::read(path) else {
        return; // removed or renamed away meanwhile
    };
    if deployer.engine.projection(&name).is_err() {
        tracing::warn!(
            plugin = name,
            "{}: new plugins are loaded at start; restart to load it",
            path.display()
        );
        return;
    }
    match deployer.deploy(&name, &bytes, &path.display().to_string()) {
        Ok(d) if d.changed => tracing::info!(
            plugin = name,
            id = &d.id[..12],
            "deployed from the plugins directory"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            plugin = name,
            "{}: {e}; the running version goes on",
            path.display()
        ),
    }
}
