//! The deployer: compiles a version off the event path and swaps it in
//! at the next batch boundary (`replace` mode), reconfigures the running
//! version when it is deployed again with other settings, or rolls back.

use crate::build::ShadowBuild;
use crate::probation::Before;
use crate::registry::{content_id, Action, Entry, Registry, Settings};
use crate::settings::DeploySettings;
use crate::{Error, Replay, Result};
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::engine::Engine;
use projector_host::fetch::Fetcher;
use projector_host::wasm::{Services, WasmHost};
use projector_host::{PluginLogs, SharedCode};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    /// Name of the plugin.
    pub plugin: String,
    /// Content id of the version now active (SHA-256 of its `.wasm`, hex).
    pub id: String,
    /// The version active before (`None`: the plugin is new).
    pub replaced: Option<String>,
    /// False when nothing changed: these bytes were already active, with
    /// the same settings.
    pub changed: bool,
    /// Time to compile and start the new version, in ms (0 when nothing was compiled).
    pub compile_ms: u64,
    /// When the new code took over (between two batches).
    #[serde(skip)]
    pub swapped_at: Option<std::time::Instant>,
}

/// What a deploy may replace without asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consent {
    /// Nothing: a taken name, or a component under another name than its
    /// own, is refused ([`Error::ReplaceRequired`]).
    None,
    /// A new version of the plugin running under the name (the same own
    /// name), or a new plugin under any name: a file put in the plugins
    /// directory.
    SamePlugin,
    /// Anything (`replace`).
    Any,
}

/// Loads plugin versions and swaps them into the engine.
pub struct Deployer {
    pub(crate) settings: DeploySettings,
    pub(crate) engine: Arc<Engine>,
    pub(crate) host: WasmHost,
    fetcher: Arc<Fetcher>,
    /// The versions of every plugin.
    pub registry: Registry,
    /// The retained records shadow generations rebuild from.
    pub(crate) replay: std::sync::OnceLock<Arc<dyn Replay>>,
    /// The shadow build of each plugin (at most one).
    pub(crate) shadows: Mutex<std::collections::HashMap<String, Arc<ShadowBuild>>>,
    /// The first generation of each plugin added at runtime.
    pub(crate) adds: Mutex<std::collections::HashMap<String, Arc<ShadowBuild>>>,
    /// Generations taken up again at start, built once the source can
    /// replay: (plugin, its build, the generation to catch up).
    pub(crate) resumes: Mutex<Vec<Resume>>,
    /// Each plugin's log ring, shared by its versions.
    logs: Mutex<std::collections::HashMap<String, Arc<PluginLogs>>>,
    /// One deploy at a time.
    pub(crate) busy: Mutex<()>,
    /// Stops the threads below (probation watchers, shadow builds).
    pub(crate) shutdown: Shutdown,
    /// The threads this deployer started, joined by [`Deployer::stop`].
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Verifies views against sources of truth, for promotion gates.
    pub(crate) verifier: std::sync::OnceLock<Arc<dyn crate::gate::Verifier>>,
    /// Gate decisions by plugin, since start.
    pub(crate) decisions:
        Mutex<std::collections::BTreeMap<(String, crate::gatekeeper::Decision), u64>>,
}

/// A generation taken up again at start: (plugin, its build, the
/// generation to catch up).
pub(crate) type Resume = (
    String,
    Arc<ShadowBuild>,
    Arc<projector_core::engine::Projection>,
);

impl Deployer {
    /// A deployer for `engine`, with the registry opened from its store.
    pub fn new(
        settings: DeploySettings,
        engine: Arc<Engine>,
        host: WasmHost,
        fetcher: Arc<Fetcher>,
    ) -> Result<Self> {
        let registry = Registry::open(engine.store())?;
        Ok(Deployer {
            settings,
            engine,
            host,
            fetcher,
            registry,
            replay: std::sync::OnceLock::new(),
            shadows: Mutex::new(Default::default()),
            adds: Mutex::new(Default::default()),
            resumes: Mutex::default(),
            logs: Mutex::new(Default::default()),
            busy: Mutex::new(()),
            shutdown: Shutdown::new(),
            threads: Mutex::default(),
            verifier: std::sync::OnceLock::new(),
            decisions: Mutex::default(),
        })
    }

    /// Run `work` on a thread of its own, joined by [`Deployer::stop`].
    pub(crate) fn spawn(
        &self,
        name: String,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = std::thread::Builder::new().name(name).spawn(work)?;
        let mut threads = self.threads.lock().recover();
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// Stop the threads this deployer started (a shadow build in progress
    /// stops between two batches and is taken up again by a new deploy),
    /// and wait for them.
    pub fn stop(&self) {
        self.shutdown.stop();
        let threads = std::mem::take(&mut *self.threads.lock().recover());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a deploy thread panicked");
            }
        }
    }

    /// How promotion gates verify views against sources of truth (the
    /// HTTP layer, which knows them, gives it; without one a gate's truth
    /// condition does not apply).
    pub fn set_verifier(&self, verifier: Arc<dyn crate::gate::Verifier>) {
        let _ = self.verifier.set(verifier);
    }

    /// The Wasm host versions are compiled and started with.
    pub fn host(&self) -> &WasmHost {
        &self.host
    }

    /// The retained records shadow generations rebuild from: the
    /// embedded log, or Kafka's source topics.
    /// Shadow generations taken up again at start continue building now,
    /// and a generation the live path finds lacking records is caught up
    /// from it.
    pub fn set_replay(self: &Arc<Self>, replay: Arc<dyn Replay>) {
        if self.replay.set(replay.clone()).is_ok() {
            self.watch_behind(replay);
        }
        self.resume_shadows();
    }

    /// The settings plugin `name` is configured with: the config's, with
    /// `overrides` (a deploy's) over them.
    fn settings_for(&self, name: &str, overrides: Option<&Settings>) -> serde_json::Value {
        let mut settings = self.settings.of(name).settings.clone();
        if let (Some(over), Some(base)) = (overrides, settings.as_object_mut()) {
            base.extend(over.clone());
        }
        settings
    }

    /// Compile and start `bytes` as plugin `name`, with its settings
    /// (the config's, with `overrides` over them), limits and services:
    /// everything but the swap.
    pub(crate) fn load(
        &self,
        name: &str,
        bytes: &[u8],
        overrides: Option<&Settings>,
    ) -> Result<SharedCode> {
        let id = content_id(bytes);
        let settings = self.settings_for(name, overrides);
        let logs = self
            .logs
            .lock()
            .recover()
            .entry(name.to_string())
            .or_default()
            .clone();
        let code = self
            .host
            .load_logging_to(
                name,
                bytes,
                self.settings.of(name).limits.clone(),
                &settings,
                logs,
            )
            .map_err(|e| Error::Rejected {
                name: name.into(),
                id: id[..12].into(),
                reason: e.to_string(),
            })?;
        let allowed = self.settings.of(name).services.clone();
        let record = self
            .engine
            .fetch_record(name)?
            .map(|r| r as Arc<dyn projector_host::fetch_record::FetchRecord>);
        Ok(Arc::new(code.allow(Services {
            fetcher: self.fetcher.clone(),
            allowed,
            record,
            prefetch: self.settings.of(name).prefetch,
        })))
    }

    pub(crate) fn population(&self, name: &str) -> Option<projector_guest::Population> {
        self.settings.of(name).population
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
                    let over = entry.settings_of(active);
                    (self.load(name, &stored, over)?, active.to_string())
                }
                None => (self.load(name, bytes, None)?, file_id),
            },
            _ => (
                self.load(name, bytes, entry.settings_of(&file_id))?,
                file_id,
            ),
        };
        if entry.active.as_deref() != Some(id.as_str()) {
            self.registry.add(name, bytes, from)?;
            self.registry.activate(name, &id, false)?;
            let previous = entry.active.as_deref();
            self.registry
                .record(name, Action::Deploy, &id, previous, None)?;
        }
        let ns = match (&entry.ns, entry.active.as_deref() == Some(id.as_str())) {
            (Some(ns), true) => ns.clone(),
            _ => name.to_string(),
        };
        self.engine
            .add_in(code.clone(), self.population(name), ns)?;
        self.restore_shadow(name, &entry)?;
        Ok(code)
    }

    /// Deploy `bytes` as the new version of `name` in `replace` mode: it
    /// is compiled and started here, off the event path, then takes over
    /// at the next batch boundary. A plugin not loaded yet is added: its
    /// views are built first ([`Deployer::adding`] shows how far).
    ///
    /// Without `replace`, a deploy onto a running plugin, or under a name
    /// the component does not call itself, is refused
    /// ([`Error::ReplaceRequired`], see [`crate::guard`]). A replacing
    /// version renders a sample of the views it inherits right after the
    /// swap, and is rolled back and rejected when too many fail.
    pub fn deploy(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        replace: bool,
    ) -> Result<Deployed> {
        self.deploy_with(name, bytes, from, replace, None)
    }

    /// [`Deployer::deploy`] with `settings` over the config's, kept with
    /// the version in the registry (a restart or a rollback to it loads
    /// it with them again). The version already running, deployed with
    /// the settings it runs with, changes nothing; with others it is
    /// reconfigured: loaded with them and swapped in as a replace is
    /// (which takes `replace`), noted in the history as `reconfigure`.
    pub fn deploy_with(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        replace: bool,
        settings: Option<&Settings>,
    ) -> Result<Deployed> {
        let consent = match replace {
            true => Consent::Any,
            false => Consent::None,
        };
        self.deploy_as(name, bytes, from, consent, settings)
    }

    /// A deploy with the operator's `consent` to replace.
    pub(crate) fn deploy_as(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        consent: Consent,
        settings: Option<&Settings>,
    ) -> Result<Deployed> {
        let replace = consent != Consent::None;
        let _one = self.busy.lock().recover();
        let id = content_id(bytes);
        if self.is_adding(name, &id) {
            return Ok(Deployed {
                plugin: name.into(),
                id,
                replaced: None,
                changed: false,
                compile_ms: 0,
                swapped_at: None,
            });
        }
        let current = self
            .engine
            .projection(name)
            .ok()
            .map(|p| p.code().id().to_string());
        if current.as_deref() == Some(id.as_str()) {
            self.registry.add(name, bytes, from)?;
            return self.reconfigure(name, bytes, replace, settings);
        }
        let started = std::time::Instant::now();
        let code = self.load(name, bytes, settings)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let old = self.engine.projection(name).ok();
        let running = old.as_ref().map(|p| p.code().info());
        match (consent, running) {
            (Consent::Any, _) | (Consent::SamePlugin, None) => {}
            (Consent::None, _) => crate::guard::check(name, running, code.info(), false)
                .map_err(Error::ReplaceRequired)?,
            // A new version of the plugin running there: the rule of a
            // shadow deploy (the same own name).
            (Consent::SamePlugin, Some(_)) => crate::guard::check(name, running, code.info(), true)
                .map_err(Error::ReplaceRequired)?,
        }
        self.registry.add(name, bytes, from)?;
        self.registry.set_settings(name, &id, settings)?;
        let Some(old) = old else {
            let added = self.add(name, code, &id, compile_ms)?;
            self.registry
                .record(name, Action::Deploy, &id, None, None)?;
            return Ok(added);
        };
        self.take_over(name, code, &id, Before::Version(old), compile_ms)
    }

    /// Deploy `bytes`, the version `name` runs, again with `settings` over
    /// the config's. Settings that come to those it runs with change
    /// nothing. Others reconfigure it: the same code is loaded with them
    /// (a setting the plugin refuses rejects the deploy) and swapped in as
    /// a replace is, which takes `replace` ([`Refusal::reconfigure`]), is
    /// on probation (a failure restores the settings it ran with), and is
    /// noted in the registry (`reconfigure`, with the new settings kept
    /// with the version).
    ///
    /// [`Refusal::reconfigure`]: crate::guard::Refusal::reconfigure
    fn reconfigure(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        replace: bool,
        settings: Option<&Settings>,
    ) -> Result<Deployed> {
        let id = content_id(bytes);
        let entry = self.registry.entry(name)?.unwrap_or_default();
        let deployed_with = entry.settings_of(&id).cloned();
        let (from, to) = (
            self.settings_for(name, deployed_with.as_ref()),
            self.settings_for(name, settings),
        );
        if from == to {
            return Ok(Deployed {
                plugin: name.into(),
                id: id.clone(),
                replaced: Some(id),
                changed: false,
                compile_ms: 0,
                swapped_at: None,
            });
        }
        let started = std::time::Instant::now();
        let code = self.load(name, bytes, settings)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let old = self.engine.projection(name)?;
        if !replace {
            let refusal = crate::guard::Refusal::reconfigure(name, code.info(), from, to);
            return Err(Error::ReplaceRequired(refusal));
        }
        self.registry.set_settings(name, &id, settings)?;
        let before = Before::Settings(old, deployed_with);
        self.take_over(name, code, &id, before, compile_ms)
    }

    /// Swap `code`, version `id`, in for the running `name`; note it in
    /// the registry (a replace, or a reconfigure when `before` is the same
    /// version); and put it on probation, `before` to go back to.
    fn take_over(
        &self,
        name: &str,
        code: SharedCode,
        id: &str,
        before: Before,
        compile_ms: u64,
    ) -> Result<Deployed> {
        self.swap(name, code, true)?;
        let swapped_at = std::time::Instant::now();
        self.registry.activate(name, id, false)?;
        let previous = before.projection().code().id().to_string();
        let (action, what) = match before {
            Before::Version(_) => (Action::Replace, "deployed (replace)"),
            Before::Settings(..) => (Action::Reconfigure, "reconfigured (its settings changed)"),
        };
        let changed_version = (previous != id).then_some(previous.as_str());
        self.registry
            .record(name, action, id, changed_version, None)?;
        self.render_inherited(name, &before, id)?;
        self.watch(name, before, id);
        tracing::info!(plugin = name, id = &id[..12], compile_ms, "{what}");
        Ok(Deployed {
            plugin: name.into(),
            id: id.to_string(),
            replaced: Some(previous),
            changed: true,
            compile_ms,
            swapped_at: Some(swapped_at),
        })
    }

    pub(crate) fn swap(&self, name: &str, code: SharedCode, loaded: bool) -> Result<()> {
        if loaded {
            self.engine.replace(code, self.population(name))?;
        } else {
            self.engine.add(code, self.population(name))?;
        }
        Ok(())
    }

    /// Return `name` to the version active before the current one.
    pub fn rollback(&self, name: &str) -> Result<Deployed> {
        let _one = self.busy.lock().recover();
        if let Ok(b) = self.shadow_build(name) {
            let promoted = self
                .engine
                .projection(name)
                .is_ok_and(|p| p.ns() == b.generation.ns());
            if promoted {
                return self.demote(name, &b, Action::Rollback, None);
            }
        }
        let entry = self.registry.entry(name)?.unwrap_or_default();
        let previous = entry
            .rollback
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
        let code = self.load(name, &bytes, entry.settings_of(&previous))?;
        let compile_ms = started.elapsed().as_millis() as u64;
        self.swap(name, code, true)?;
        self.registry.activate(name, &previous, true)?;
        let replaced = entry.active.as_deref();
        self.registry
            .record(name, Action::Rollback, &previous, replaced, None)?;
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
