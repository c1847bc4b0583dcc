//! What every handler shares: the engine, the feed, each plugin's source
//! of truth, rollout and recent mismatches, the metrics.

use crate::error::{ApiError, ApiResult};
use crate::metrics::{Metrics, ResultLabels};
use crate::rollout::{Mode, Rollout};
use crate::token::Token;
use crate::truth::{Truth, TruthConfig};
use crate::HttpConfig;
use axum::http::StatusCode;
use projector_common::sync::Recover;
use projector_core::engine::{Engine, ReadView, Snapshot};
use projector_core::source::Source;
use projector_guest::Difference;
use projector_sources::log::EmbeddedLog;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// One recorded comparison that found differences.
#[derive(Debug, Clone)]
pub(crate) struct Mismatch {
    pub(crate) key: String,
    pub(crate) at_ms: i64,
    pub(crate) mode: Mode,
    pub(crate) projection: Value,
    /// The source of truth's answer.
    pub(crate) truth: Value,
    pub(crate) differences: Vec<Difference>,
}

pub(crate) fn differences_json(list: &[Difference]) -> Value {
    list.iter()
        .map(|d| {
            json!({"path": d.path, "reason": d.reason,
                   "projection": d.projection, "source": d.source})
        })
        .collect()
}

/// What the HTTP layer keeps per plugin.
pub(crate) struct PluginServe {
    /// Its source of truth, when it has one.
    pub(crate) truth: Option<Truth>,
    /// The rollout from the config, restored by `DELETE`.
    pub(crate) configured: Rollout,
    pub(crate) rollout: RwLock<Arc<Rollout>>,
    /// Whether `rollout` was set at runtime (and stored).
    pub(crate) overridden: AtomicBool,
    pub(crate) mismatches: Mutex<VecDeque<Mismatch>>,
}

impl PluginServe {
    /// Its source of truth, or a 409 `no_source_of_truth` saying what
    /// needs one (`to`: e.g. "to verify against").
    pub(crate) fn truth(&self, plugin: &str, to: &str) -> ApiResult<&Truth> {
        self.truth.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_source_of_truth",
                format!("plugin {plugin:?} has no source of truth {to} ([plugins.{plugin}.truth])"),
            )
        })
    }

    /// Plugin `name`'s state from its config table (the defaults when it
    /// has none), with a rollout set at runtime earlier restored from the
    /// store.
    fn new(name: &str, config: &ApiSettings, engine: &Engine) -> anyhow::Result<Self> {
        let own = config.plugins.get(name);
        let truth = own
            .and_then(|c| c.truth.as_ref())
            .map(Truth::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("plugins.{name}.truth.{e}"))?;
        let mut configured = own.and_then(|c| c.rollout.clone()).unwrap_or_default();
        configured
            .validate()
            .map_err(|e| anyhow::anyhow!("plugins.{name}.rollout.{e}"))?;
        let stored = engine.store().setting(&rollout_setting(name))?;
        let (rollout, overridden) = match stored {
            Some(bytes) => {
                let mut stored = serde_json::from_slice::<Rollout>(&bytes)?;
                stored
                    .validate()
                    .map_err(|e| anyhow::anyhow!("stored rollout of {name}: {e}"))?;
                (stored, true)
            }
            None => (configured.clone(), false),
        };
        Ok(PluginServe {
            truth,
            configured,
            rollout: RwLock::new(Arc::new(rollout)),
            overridden: AtomicBool::new(overridden),
            mismatches: Mutex::new(VecDeque::new()),
        })
    }
}

/// One partition's lag for one plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Lag {
    pub(crate) source: String,
    pub(crate) partition: u32,
    /// The partition's end offset.
    pub(crate) end: u64,
    /// Offsets the plugin has applied.
    pub(crate) applied: u64,
    /// Records not yet applied.
    pub(crate) lag: u64,
}

/// What the views follow: the source (positions for staleness, lag and
/// tokens; its own metrics), and the embedded log when events can be
/// ingested through the API.
#[derive(Clone, Default)]
pub struct Feed {
    source: Option<Arc<dyn Source>>,
    pub(crate) log: Option<Arc<EmbeddedLog>>,
}

impl Feed {
    /// No source (a bench or a tool serving a store).
    pub fn none() -> Self {
        Feed::default()
    }

    /// The views follow `source`.
    pub fn new(source: Arc<dyn Source>) -> Self {
        Feed {
            source: Some(source),
            log: None,
        }
    }

    /// Events posted to the API are appended to `log`.
    pub fn with_ingest(mut self, log: Arc<EmbeddedLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Per source id: (partition, end offset) of each partition followed.
    pub fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.source
            .as_ref()
            .map(|s| s.positions())
            .unwrap_or_default()
    }

    /// Per partition of every source followed: how far `plugin` has
    /// applied it and how many records it has left (`/metrics`' lag, the
    /// history's and the console's).
    pub(crate) fn lags(&self, engine: &Engine, plugin: &str) -> Vec<Lag> {
        let mut out = Vec::new();
        let unknown = self
            .source
            .as_ref()
            .map(|s| s.unknown_ends())
            .unwrap_or_default();
        for (source, ends) in self.positions() {
            for (partition, end) in ends {
                // Its end not known yet: no lag rather than a lag of 0.
                if unknown.iter().any(|(s, p)| *s == source && *p == partition) {
                    continue;
                }
                let applied = engine.applied(plugin, &source, partition).unwrap_or(0);
                out.push(Lag {
                    source: source.clone(),
                    partition,
                    end,
                    applied,
                    lag: end.saturating_sub(applied),
                });
            }
        }
        out
    }

    /// Which instance answers each view, when several share the source.
    pub(crate) fn router(&self) -> Option<Arc<dyn projector_core::source::Router>> {
        self.source.as_ref().and_then(|s| s.router())
    }

    /// The source's own metrics.
    pub(crate) fn metrics(&self) -> Vec<projector_core::source::SourceMetric> {
        self.source
            .as_ref()
            .map(|s| s.metrics())
            .unwrap_or_default()
    }
}

/// What the HTTP layer is told by the configuration.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// `[http]`.
    pub http: HttpConfig,
    /// The source of truth and rollout of each plugin that has them.
    pub plugins: BTreeMap<String, PluginApi>,
}

/// What the HTTP layer is told of one plugin.
#[derive(Debug, Clone, Default)]
pub struct PluginApi {
    /// The source of truth reads fall back to.
    pub truth: Option<TruthConfig>,
    /// The read modes per request.
    pub rollout: Option<Rollout>,
}

/// Everything a request handler needs.
pub struct ServeState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) feed: Feed,
    pub(crate) deployer: Option<Arc<projector_deploy::Deployer>>,
    /// Per plugin: source of truth, rollout, mismatches (see [`ServeState::plugin`]).
    plugins: RwLock<HashMap<String, Arc<PluginServe>>>,
    /// The config tables of every plugin, loaded or not yet.
    settings: ApiSettings,
    pub(crate) metrics: Metrics,
    pub(crate) http: HttpConfig,
    /// Who can reach the API, set once it is bound (until then: beyond).
    pub(crate) exposure: std::sync::OnceLock<crate::auth::Exposure>,
    pub(crate) ready: AtomicBool,
    /// Requests being served, bounded by `http.max_in_flight`.
    pub(crate) in_flight: Option<crate::shed::InFlight>,
    /// Backfills from the sources of truth, by plugin.
    pub(crate) backfills: crate::backfill::Backfills,
    /// Operator numbers over the last minutes, per plugin.
    pub(crate) history: crate::history::History,
    /// The enrichment services, for the operators' view of them.
    pub(crate) fetcher: Option<Arc<projector_host::fetch::Fetcher>>,
}

pub(crate) fn rollout_setting(plugin: &str) -> String {
    format!("rollout/{plugin}")
}

impl ServeState {
    /// State for the plugins loaded in `engine`, configured by `config`;
    /// rollouts set at runtime earlier are restored from the store.
    pub fn new(
        config: &ApiSettings,
        engine: Arc<Engine>,
        feed: Feed,
        fetcher: Option<Arc<projector_host::fetch::Fetcher>>,
    ) -> anyhow::Result<Self> {
        let mut plugins = HashMap::new();
        for p in engine.projections() {
            let name = p.name().to_string();
            let own = PluginServe::new(&name, config, &engine)?;
            plugins.insert(name, Arc::new(own));
        }
        let metrics = Metrics::new(engine.clone(), feed.clone(), fetcher.clone());
        Ok(ServeState {
            engine,
            feed,
            deployer: None,
            plugins: RwLock::new(plugins),
            settings: config.clone(),
            metrics,
            http: config.http.clone(),
            exposure: Default::default(),
            ready: AtomicBool::new(false),
            in_flight: crate::shed::InFlight::new(config.http.max_in_flight),
            backfills: Default::default(),
            history: Default::default(),
            fetcher,
        })
    }

    /// Who can reach the API: beyond loopback until it is bound.
    pub(crate) fn exposure(&self) -> crate::auth::Exposure {
        self.exposure
            .get()
            .copied()
            .unwrap_or(crate::auth::Exposure::Beyond)
    }

    /// Report ready on `/readyz` (plugins loaded, source connected).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The HTTP layer's metrics, shared by every handler.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the HTTP layer keeps of plugin `name`. Plugins come and go
    /// at runtime (deploys, removals): a plugin the engine has loaded
    /// since gets its state here from its config table, and one it no
    /// longer has is forgotten.
    pub(crate) fn plugin(&self, name: &str) -> ApiResult<Arc<PluginServe>> {
        let unknown = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_plugin",
                format!("no plugin named {name:?} is loaded"),
            )
        };
        let loaded = self.engine.projection(name).is_ok();
        if let Some(own) = self.plugins.read().recover().get(name) {
            if loaded {
                return Ok(own.clone());
            }
        }
        let mut plugins = self.plugins.write().recover();
        if !loaded {
            plugins.remove(name);
            let building = self.deployer.as_ref().and_then(|d| d.adding(name));
            if let Some(b) = building.filter(|b| !b.phase.starts_with("failed")) {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "plugin_building",
                    format!(
                        "plugin {name:?} is being added: its views are {:.0}% built ({} of {} records); it serves reads once it is live",
                        b.percent, b.done, b.total
                    ),
                ));
            }
            return Err(unknown());
        }
        if let Some(own) = plugins.get(name) {
            return Ok(own.clone());
        }
        let own = PluginServe::new(name, &self.settings, &self.engine).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad_plugin_config",
                format!("plugin {name:?}: {e:#}"),
            )
        })?;
        let own = Arc::new(own);
        plugins.insert(name.to_string(), own.clone());
        Ok(own)
    }

    /// The plugins the HTTP layer serves now, by name.
    pub(crate) fn plugin_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .projections()
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        names.sort();
        names
    }

    /// Deploy through `deployer` (the admin API's plugin routes).
    pub fn with_deployer(mut self, deployer: Arc<projector_deploy::Deployer>) -> Self {
        let _ = self.metrics.deployer.set(deployer.clone());
        self.deployer = Some(deployer);
        self
    }

    /// Applied position against the end of the source, per partition.
    pub(crate) fn staleness(&self, plugin: &str, view: Option<&ReadView>, now: i64) -> Value {
        let mut partitions = Vec::new();
        let mut lag = 0u64;
        let feeds = self.feed.positions();
        let source: Value = match feeds.as_slice() {
            [] => Value::Null,
            [(id, _)] => id.as_str().into(),
            many => many
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .into(),
        };
        for (id, ends) in &feeds {
            for &(p, end) in ends {
                let applied = self.engine.applied(plugin, id, p).unwrap_or(0);
                lag += end.saturating_sub(applied);
                let mut entry = json!({"partition": p, "applied": applied, "end": end});
                if feeds.len() > 1 {
                    entry["source"] = id.as_str().into();
                }
                partitions.push(entry);
            }
        }
        json!({
            "source": source,
            "partitions": partitions,
            "lag": lag,
            "last_event_age_ms": view.map(|v| (now - v.updated_ms).max(0)),
        })
    }

    /// Wait until `plugin` has applied every record `token` names.
    pub(crate) async fn wait_for(
        &self,
        plugin: &str,
        token: &Token,
        timeout: Duration,
    ) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut progress = self.engine.progress();
        loop {
            progress.borrow_and_update();
            let mut behind = BTreeMap::new();
            for (p, offset) in &token.offsets {
                let applied = self.engine.applied(plugin, &token.source, *p)?;
                if applied <= *offset {
                    behind.insert(*p, applied);
                }
            }
            if behind.is_empty() {
                self.count_wait(plugin, "reached");
                return Ok(());
            }
            let timed_out = tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err();
            if timed_out {
                self.count_wait(plugin, "timeout");
                let current: BTreeMap<u32, Value> = token
                    .offsets
                    .keys()
                    .map(|p| {
                        let applied = self.engine.applied(plugin, &token.source, *p).ok();
                        (*p, applied.map_or(Value::Null, |a| a.into()))
                    })
                    .collect();
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "position_not_reached",
                    format!(
                        "{plugin} did not apply {token} within {} ms",
                        timeout.as_millis()
                    ),
                )
                .with(json!({"wanted": token.to_string(), "applied_next_offsets": current})));
            }
        }
    }

    pub(crate) fn count_wait(&self, plugin: &str, result: &str) {
        self.metrics
            .consistency_waits
            .get_or_create(&ResultLabels {
                plugin: plugin.into(),
                result: result.into(),
            })
            .inc();
    }
}

impl ServeState {
    /// Store the source of truth's `answer` as the view of `key` (off the
    /// async workers), counted in `projector_snapshots_total` when stored.
    pub(crate) async fn store_snapshot(
        &self,
        plugin: &str,
        key: &str,
        answer: String,
    ) -> Result<Snapshot, String> {
        let engine = self.engine.clone();
        let (p, k) = (plugin.to_string(), key.to_string());
        let stored = tokio::task::spawn_blocking(move || engine.snapshot(&p, &k, &answer))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if stored == Ok(Snapshot::Stored) {
            self.metrics
                .snapshots
                .get_or_create(&crate::metrics::PluginLabel {
                    plugin: plugin.into(),
                })
                .inc();
        }
        stored
    }
}
