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
}

/// Loads plugin versions and swaps them into the engine.
pub struct Deployer {
    config: Config,
    engine: Arc<Engine>,
    host: WasmHost,
    fetcher: Arc<crate::fetch::Fetcher>,
    pub registry: Registry,
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
            logs: Mutex::new(Default::default()),
            busy: Mutex::new(()),
        })
    }

    pub fn host(&self) -> &WasmHost {
        &self.host
    }

    /// Compile and start `bytes` as plugin `name`, with its settings,
    /// limits and services: everything but the swap.
    fn load(&self, name: &str, bytes: &[u8]) -> Result<SharedCode> {
        let id = content_id(bytes);
        let code = self
            .host
            .load(
                name,
                bytes,
                self.config.limits_of(name),
                &self.config.settings_of(name),
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
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(Arc::new(code.log_to(logs).allow(Services {
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
        self.engine.add(code.clone(), self.population(name))?;
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
            });
        }
        let started = std::time::Instant::now();
        let code = self.load(name, bytes)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        self.registry.add(name, bytes, from)?;
        let old = self.engine.projection(name).ok();
        self.swap(name, code, current.is_some())?;
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
        })
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

    /// The recent log lines of the running version of `name`.
    pub fn logs(&self, name: &str) -> Result<Vec<String>> {
        Ok(self.engine.projection(name)?.code().logs().recent())
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
