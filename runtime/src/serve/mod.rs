//! The HTTP read API: views in four read modes (seed 000), rollout rules,
//! lazy population from the source of truth, comparison, read-your-writes
//! tokens (seed 004), ingest into the embedded log, metrics and health.
//!
//! The routes, their parameters and answers are described in
//! `runtime/openapi.json`, served at `/openapi.json`. Every error is a JSON
//! object `{"error": <code>, "message": <what and why>}` with a 4xx status
//! for a bad request and a 5xx one when the runtime or the source failed.

pub mod metrics;
pub mod rollout;
pub mod source;
pub mod token;

use crate::config::{Config, HttpConfig};
use crate::engine::{self, Engine, ReadView};
use crate::pipeline::LOG_SOURCE;
use crate::source::log::EmbeddedLog;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics::{Metrics, ModeLabels, PluginLabel, ReadLabels, ReasonLabels, ResultLabels};
use projector_guest::rules::Status;
use projector_guest::Difference;
use rollout::{Mode, Rollout};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use source::{Source, SourceError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use token::Token;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Longest wait a reader may ask for with `wait_ms`.
const MAX_WAIT_MS: u64 = 60_000;

/// Largest ingest request body.
const MAX_BODY_BYTES: usize = 16 << 20;

/// An error answer: status, a stable code, and a message that names the
/// problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Some(map)) = (self.extra, body.as_object_mut()) {
            map.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::registry::Error> for ApiError {
    fn from(e: crate::registry::Error) -> Self {
        use crate::registry::Error as R;
        match e {
            R::Rejected { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e.to_string())
            }
            R::NoEarlier(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_earlier_version", e.to_string())
            }
            R::Engine(e) => e.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "runtime_error",
                other.to_string(),
            ),
        }
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::UnknownPlugin(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_plugin",
                format!("no plugin named {name:?} is loaded"),
            ),
            engine::Error::BadKey { .. } => ApiError::bad_request("bad_key", e.to_string()),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "runtime_error",
                other.to_string(),
            ),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// One recorded comparison that found differences.
#[derive(Debug, Clone)]
struct Mismatch {
    key: String,
    at_ms: i64,
    mode: Mode,
    projection: Value,
    source: Value,
    differences: Vec<Difference>,
}

fn differences_json(list: &[Difference]) -> Value {
    list.iter()
        .map(|d| {
            json!({"path": d.path, "reason": d.reason,
                   "projection": d.projection, "source": d.source})
        })
        .collect()
}

/// What the HTTP layer keeps per plugin.
struct PluginServe {
    source: Option<Source>,
    /// The rollout from the config, restored by `DELETE`.
    configured: Rollout,
    rollout: RwLock<Arc<Rollout>>,
    /// Whether `rollout` was set at runtime (and stored).
    overridden: AtomicBool,
    mismatches: Mutex<VecDeque<Mismatch>>,
}

/// What the views follow: positions for staleness, lag and tokens.
#[derive(Clone)]
pub enum Feed {
    /// No source (a bench or a tool serving a store).
    None,
    Log(Arc<EmbeddedLog>),
    /// Kafka: the source topics' partitions this instance owns.
    Kafka(Arc<crate::source::kafka::KafkaStats>),
}

impl Feed {
    /// Per source id: (partition, end offset) of each partition followed.
    pub fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        match self {
            Feed::None => Vec::new(),
            Feed::Log(log) => vec![(
                LOG_SOURCE.to_string(),
                log.ends()
                    .into_iter()
                    .enumerate()
                    .map(|(p, e)| (p as u32, e))
                    .collect(),
            )],
            Feed::Kafka(stats) => stats.source_positions(),
        }
    }
}

/// Everything a request handler needs.
pub struct ServeState {
    engine: Arc<Engine>,
    log: Option<Arc<EmbeddedLog>>,
    feed: Feed,
    deployer: Option<Arc<crate::registry::Deployer>>,
    plugins: HashMap<String, PluginServe>,
    metrics: Metrics,
    http: HttpConfig,
    ready: AtomicBool,
}

fn rollout_setting(plugin: &str) -> String {
    format!("rollout/{plugin}")
}

impl ServeState {
    /// State for the plugins loaded in `engine`, configured by `config`;
    /// rollouts set at runtime earlier are restored from the store.
    pub fn new(
        config: &Config,
        engine: Arc<Engine>,
        feed: Feed,
        fetcher: Option<Arc<crate::fetch::Fetcher>>,
    ) -> anyhow::Result<Self> {
        let log = match &feed {
            Feed::Log(log) => Some(log.clone()),
            _ => None,
        };
        let mut plugins = HashMap::new();
        for p in engine.projections() {
            let name = p.name().to_string();
            let own = config.plugins.get(&name);
            let source = own
                .and_then(|c| c.source.as_ref())
                .map(Source::new)
                .transpose()
                .map_err(|e| anyhow::anyhow!("plugins.{name}.source.{e}"))?;
            let configured = own.and_then(|c| c.rollout.clone()).unwrap_or_default();
            let stored = engine.store().setting(&rollout_setting(&name))?;
            let (rollout, overridden) = match stored {
                Some(bytes) => (serde_json::from_slice::<Rollout>(&bytes)?, true),
                None => (configured.clone(), false),
            };
            plugins.insert(
                name,
                PluginServe {
                    source,
                    configured,
                    rollout: RwLock::new(Arc::new(rollout)),
                    overridden: AtomicBool::new(overridden),
                    mismatches: Mutex::new(VecDeque::new()),
                },
            );
        }
        let metrics = Metrics::new(engine.clone(), feed.clone(), fetcher);
        Ok(ServeState {
            engine,
            log,
            feed,
            deployer: None,
            plugins,
            metrics,
            http: config.http.clone(),
            ready: AtomicBool::new(false),
        })
    }

    /// Report ready on `/readyz` (plugins loaded, source connected).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn plugin(&self, name: &str) -> ApiResult<&PluginServe> {
        self.plugins.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_plugin",
                format!("no plugin named {name:?} is loaded"),
            )
        })
    }

    /// Deploy through `deployer` (the admin API's plugin routes).
    pub fn with_deployer(mut self, deployer: Arc<crate::registry::Deployer>) -> Self {
        self.deployer = Some(deployer);
        self
    }

    /// Applied position against the end of the source, per partition.
    fn staleness(&self, plugin: &str, view: Option<&ReadView>, now: i64) -> Value {
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
    async fn wait_for(&self, plugin: &str, token: &Token, timeout: Duration) -> ApiResult<()> {
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

    fn count_wait(&self, plugin: &str, result: &str) {
        self.metrics
            .consistency_waits
            .get_or_create(&ResultLabels {
                plugin: plugin.into(),
                result: result.into(),
            })
            .inc();
    }
}

/// The HTTP routes over `state`.
pub fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/views/{plugin}/{key}", get(read_view))
        .route(
            "/v1/events",
            axum::routing::post(ingest).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route(
            "/v1/admin/rollout/{plugin}",
            get(get_rollout).put(put_rollout).delete(delete_rollout),
        )
        .route("/v1/admin/mismatches/{plugin}", get(mismatches))
        .route("/v1/admin/plugins", get(registry_list))
        .route(
            "/v1/admin/plugins/{plugin}",
            axum::routing::post(deploy).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route(
            "/v1/admin/plugins/{plugin}/rollback",
            axum::routing::post(rollback),
        )
        .route("/v1/admin/plugins/{plugin}/logs", get(plugin_logs))
        .route("/v1/admin/plugins/{plugin}/shadow", get(shadow_status))
        .route(
            "/v1/admin/plugins/{plugin}/compare",
            axum::routing::post(shadow_compare),
        )
        .route(
            "/v1/admin/plugins/{plugin}/promote",
            axum::routing::post(shadow_promote),
        )
        .route(
            "/v1/admin/plugins/{plugin}/retire",
            axum::routing::post(shadow_retire),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "live"}))
}

async fn readyz(State(s): State<Arc<ServeState>>) -> Response {
    let plugins: Vec<&str> = s.plugins.keys().map(String::as_str).collect();
    if s.ready.load(Ordering::Relaxed) {
        Json(json!({"status": "ready", "plugins": plugins})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting", "plugins": plugins})),
        )
            .into_response()
    }
}

async fn metrics_text(State(s): State<Arc<ServeState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Largest `.wasm` the admin API takes.
const MAX_PLUGIN_BYTES: usize = 64 << 20;

fn deployer(s: &ServeState) -> ApiResult<Arc<crate::registry::Deployer>> {
    s.deployer.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_registry",
            "this server does not deploy plugins",
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployParams {
    /// Where the code came from, for the registry (default `api`).
    from: Option<String>,
    /// `replace` (default) or `shadow`.
    mode: Option<String>,
    /// For shadow: `auto` (default), `rebuild` or `migrate`.
    method: Option<crate::registry::ShadowMethod>,
}

/// Run registry work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::registry::Error> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "runtime_error",
                e.to_string(),
            )
        })?
        .map_err(ApiError::from)
}

async fn shadow_status(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let status = d
        .shadow(&plugin)
        .ok_or_else(|| crate::registry::Error::NoShadow(plugin.clone()))?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareParams {
    /// Keys to compare, spread over the key space (default 1000).
    sample: Option<usize>,
}

async fn shadow_compare(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<CompareParams>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let sample = params.sample.unwrap_or(1000);
    let c = blocking(move || d.compare(&plugin, sample)).await?;
    Ok(Json(serde_json::to_value(c).unwrap_or_default()))
}

async fn shadow_promote(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let status = blocking(move || d.promote(&plugin)).await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

async fn shadow_retire(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let ns = blocking(move || d.retire(&plugin)).await?;
    Ok(Json(json!({"retired": ns})))
}

/// `POST /v1/admin/plugins/{plugin}`: the body is the `.wasm`.
async fn deploy(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<DeployParams>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "bad_plugin",
            "the body must be the plugin's .wasm",
        ));
    }
    let from = params.from.unwrap_or_else(|| "api".into());
    match params.mode.as_deref().unwrap_or("replace") {
        "replace" => {
            let done = blocking(move || d.deploy(&plugin, &body, &from)).await?;
            Ok(Json(serde_json::to_value(done).unwrap_or_default()))
        }
        "shadow" => {
            let method = params.method.unwrap_or(crate::registry::ShadowMethod::Auto);
            let status = blocking(move || d.deploy_shadow(&plugin, &body, &from, method)).await?;
            Ok(Json(serde_json::to_value(status).unwrap_or_default()))
        }
        other => Err(ApiError::bad_request(
            "bad_mode",
            format!("deploy mode {other:?}: expected \"replace\" or \"shadow\""),
        )),
    }
}

async fn rollback(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let done = blocking(move || d.rollback(&plugin)).await?;
    Ok(Json(serde_json::to_value(done).unwrap_or_default()))
}

async fn registry_list(State(s): State<Arc<ServeState>>) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    let list: Vec<Value> = d
        .list()?
        .into_iter()
        .map(|(name, e)| {
            let running = s
                .engine
                .projection(&name)
                .ok()
                .map(|p| p.code().id().to_string());
            json!({"plugin": name, "active": e.active, "running": running,
                   "history": e.history, "versions": e.versions})
        })
        .collect();
    Ok(Json(json!({"plugins": list})))
}

async fn plugin_logs(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = s.engine.projection(&plugin)?;
    Ok(Json(
        json!({"plugin": plugin, "id": p.code().id(), "lines": p.code().logs().recent()}),
    ))
}

async fn list_plugins(State(s): State<Arc<ServeState>>) -> Json<Value> {
    let list: Vec<Value> = s
        .engine
        .projections()
        .iter()
        .map(|p| {
            let c = p.counters();
            let own = s.plugins.get(p.name());
            json!({
                "plugin": p.name(), "id": p.code().id(), "version": p.code().info().version,
                "population": format!("{:?}", p.population()).to_lowercase(),
                "source_of_truth": own.is_some_and(|o| o.source.is_some()),
                "events": {"received": c.received, "applied": c.applied, "skipped": c.skipped,
                           "invalidated": c.invalidated, "dead_lettered": c.dead_lettered},
            })
        })
        .collect();
    Json(json!({"plugins": list}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    /// Force a read mode, bypassing the rollout rules.
    mode: Option<String>,
    /// Position token to wait for.
    token: Option<String>,
    /// How long to wait for the token, in ms.
    wait_ms: Option<u64>,
    /// Read time for `render`, in ms since the epoch (default: now).
    at_ms: Option<i64>,
}

/// What the projection had for a key.
enum Lookup {
    Hit {
        view: ReadView,
        answer: Arc<RawValue>,
    },
    Miss {
        reason: &'static str,
        view: Option<ReadView>,
    },
}

fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Valid => "valid",
        Status::Invalid => "invalid",
    }
}

fn view_json(view: Option<&ReadView>) -> Value {
    match view {
        Some(v) => {
            json!({"status": status_name(&v.status), "versions": v.versions.json(), "updated_ms": v.updated_ms})
        }
        None => Value::Null,
    }
}

/// One read in progress: what the handler learns along the way.
struct Read<'a> {
    s: &'a ServeState,
    plugin: &'a str,
    key: &'a str,
    own: &'a PluginServe,
    mode: Mode,
    now: i64,
    served_by: &'static str,
    populated: Option<Value>,
    comparison: Option<Value>,
}

impl Read<'_> {
    fn lookup(&self) -> ApiResult<Lookup> {
        let found = match self.s.engine.read(self.plugin, self.key, self.now) {
            Ok(found) => found,
            Err(e @ (engine::Error::Plugin(_) | engine::Error::Guest { .. })) => {
                tracing::warn!(plugin = self.plugin, key = self.key, "render failed: {e}");
                let result = Lookup::Miss {
                    reason: "render_error",
                    view: None,
                };
                self.s.metrics.lookup(self.plugin, "invalid");
                return Ok(result);
            }
            Err(e) => return Err(e.into()),
        };
        let (result, lookup) = match found {
            Some(view) if view.status == Status::Valid && view.body.is_some() => {
                let answer = view.body.clone().expect("checked just above");
                ("hit", Lookup::Hit { view, answer })
            }
            Some(view) => (
                "invalid",
                Lookup::Miss {
                    reason: "invalid",
                    view: Some(view),
                },
            ),
            None => (
                "absent",
                Lookup::Miss {
                    reason: "absent",
                    view: None,
                },
            ),
        };
        self.s.metrics.lookup(self.plugin, result);
        Ok(lookup)
    }

    fn source(&self) -> ApiResult<&Source> {
        self.own.source.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "no_source",
                format!(
                    "plugin {:?} has no source of truth configured ([plugins.{}.source]); only mode projection is available",
                    self.plugin, self.plugin
                ),
            )
        })
    }

    async fn fetch(&self) -> ApiResult<Value> {
        let source = self.source()?;
        match source.fetch(self.key).await {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "source_invalid",
                    format!("source of truth answered invalid JSON: {e}"),
                )
            }),
            Err(SourceError::BadKey(why)) => Err(ApiError::bad_request(
                "bad_key",
                format!("key {:?}: {why}", self.key),
            )),
            Err(e @ SourceError::Unavailable { .. }) => {
                self.s
                    .metrics
                    .source_errors
                    .get_or_create(&PluginLabel {
                        plugin: self.plugin.into(),
                    })
                    .inc();
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "source_unavailable",
                    format!("source of truth of {}: {e}", self.plugin),
                ))
            }
        }
    }

    /// Store the source's answer as the key's view (lazy population).
    async fn populate(&mut self, answer: &Value) {
        let engine = self.s.engine.clone();
        let (plugin, key, text) = (
            self.plugin.to_string(),
            self.key.to_string(),
            answer.to_string(),
        );
        let stored = tokio::task::spawn_blocking(move || engine.snapshot(&plugin, &key, &text))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        self.populated = Some(match stored {
            Ok(()) => {
                self.s
                    .metrics
                    .snapshots
                    .get_or_create(&PluginLabel {
                        plugin: self.plugin.into(),
                    })
                    .inc();
                json!({"stored": true})
            }
            Err(e) => {
                tracing::warn!(
                    plugin = self.plugin,
                    key = self.key,
                    "snapshot not stored: {e}"
                );
                json!({"stored": false, "error": e})
            }
        });
    }

    /// The source answers instead of the projection, and populates it.
    async fn fall_back(&mut self, reason: &'static str) -> ApiResult<Value> {
        if self.own.source.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "view_not_found",
                format!(
                    "no valid view of {:?} in {} ({reason}), and the plugin has no source of truth to fall back to",
                    self.key, self.plugin
                ),
            ));
        }
        self.s
            .metrics
            .fallbacks
            .get_or_create(&ReasonLabels {
                plugin: self.plugin.into(),
                reason: reason.into(),
            })
            .inc();
        let answer = self.fetch().await?;
        self.populate(&answer).await;
        self.served_by = "source";
        Ok(answer)
    }

    /// Compare both answers with the plugin's rule and record the result.
    fn compare(&mut self, projection: &RawValue, source: &Value) -> ApiResult<()> {
        let p = self.s.engine.projection(self.plugin)?;
        let differences = p
            .code()
            .session()
            .compare(self.key, projection.get(), &source.to_string())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "plugin_error",
                    e.to_string(),
                )
            })?;
        let result = if differences.is_empty() {
            "equal"
        } else {
            "mismatch"
        };
        let m = &self.s.metrics;
        m.comparisons
            .get_or_create(&ResultLabels {
                plugin: self.plugin.into(),
                result: result.into(),
            })
            .inc();
        for d in &differences {
            m.mismatches
                .get_or_create(&ReasonLabels {
                    plugin: self.plugin.into(),
                    reason: d.reason.clone(),
                })
                .inc();
        }
        self.comparison = Some(json!({
            "equal": differences.is_empty(),
            "differences": differences_json(&differences),
        }));
        if !differences.is_empty() {
            let mut recent = self
                .own
                .mismatches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if recent.len() >= self.s.http.mismatches_kept.max(1) {
                recent.pop_front();
            }
            recent.push_back(Mismatch {
                key: self.key.into(),
                at_ms: self.now,
                mode: self.mode,
                projection: serde_json::from_str(projection.get()).unwrap_or(Value::Null),
                source: source.clone(),
                differences,
            });
        }
        Ok(())
    }

    /// Answer in the chosen mode; the view as it was read (or populated).
    async fn answer(&mut self) -> ApiResult<(Answer, Option<ReadView>)> {
        match self.mode {
            Mode::Source => {
                self.served_by = "source";
                Ok((Answer::Source(self.fetch().await?), None))
            }
            Mode::Projection => match self.lookup()? {
                Lookup::Hit { view, answer } => Ok((Answer::View(answer), Some(view))),
                Lookup::Miss { reason, .. } => {
                    Ok((Answer::Source(self.fall_back(reason).await?), None))
                }
            },
            Mode::CompareReturnSource => {
                let source = self.fetch().await?;
                self.served_by = "source";
                match self.lookup()? {
                    Lookup::Hit { view, answer } => {
                        self.compare(&answer, &source)?;
                        Ok((Answer::Source(source), Some(view)))
                    }
                    Lookup::Miss { view, .. } => {
                        self.populate(&source).await;
                        Ok((Answer::Source(source), view))
                    }
                }
            }
            Mode::CompareReturnProjection => match self.lookup()? {
                Lookup::Hit { view, answer } => {
                    match self.fetch().await {
                        Ok(source) => self.compare(&answer, &source)?,
                        Err(e) => {
                            self.comparison = Some(json!({"skipped": e.message}));
                        }
                    }
                    Ok((Answer::View(answer), Some(view)))
                }
                Lookup::Miss { reason, .. } => {
                    Ok((Answer::Source(self.fall_back(reason).await?), None))
                }
            },
        }
    }
}

/// The request's user for rollout rules: the user header, else the key's
/// `user` field (by the source's key pattern), else the whole key.
fn request_user<'a>(
    headers: &'a HeaderMap,
    http: &HttpConfig,
    own: &PluginServe,
    key: &'a str,
) -> &'a str {
    if let Some(u) = headers
        .get(http.user_header.as_str())
        .and_then(|v| v.to_str().ok())
    {
        return u;
    }
    own.source
        .as_ref()
        .and_then(|s| s.fields(key).ok())
        .and_then(|f| f.get("user").copied())
        .unwrap_or(key)
}

async fn read_view(
    State(s): State<Arc<ServeState>>,
    Path((plugin, key)): Path<(String, String)>,
    params: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let started = Instant::now();
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let own = s.plugin(&plugin)?;
    let code = s.engine.projection(&plugin)?;
    engine::check_key(&key, code.code().limits())?;
    let token = params
        .token
        .as_deref()
        .or_else(|| {
            headers
                .get("x-projector-token")
                .and_then(|v| v.to_str().ok())
        })
        .map(Token::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_token", e))?;
    if let Some(t) = &token {
        let feeds = s.feed.positions();
        if !feeds.is_empty() {
            let Some((_, ends)) = feeds.iter().find(|(id, _)| *id == t.source) else {
                let ids: Vec<&str> = feeds.iter().map(|(id, _)| id.as_str()).collect();
                return Err(ApiError::bad_request(
                    "bad_token",
                    format!(
                        "token is for source {:?}; views here follow {}",
                        t.source,
                        ids.join(", ")
                    ),
                ));
            };
            if let Some(p) = t
                .offsets
                .keys()
                .find(|p| !ends.iter().any(|(q, _)| q == *p))
            {
                let have: Vec<String> = ends.iter().map(|(q, _)| q.to_string()).collect();
                return Err(ApiError::bad_request(
                    "bad_token",
                    format!(
                        "token names partition {p}; this runtime follows partitions {} of {}",
                        have.join(","),
                        t.source
                    ),
                ));
            }
        }
    }
    let wait_ms = params.wait_ms.unwrap_or(s.http.consistency_timeout_ms);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("wait_ms: expected at most {MAX_WAIT_MS}, got {wait_ms}"),
        ));
    }
    let mode = match params.mode.as_deref() {
        Some(m) => Mode::parse(m).map_err(|e| ApiError::bad_request("bad_mode", e))?,
        None if own.source.is_none() => Mode::Projection,
        None => {
            let groups: Vec<&str> = headers
                .get(s.http.groups_header.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let request = rollout::Request {
                user: request_user(&headers, &s.http, own, &key),
                groups: &groups,
                key: &key,
            };
            let rollout = own
                .rollout
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            rollout.choose(request, rand::random::<f64>())
        }
    };
    if mode.needs_source() && own.source.is_none() {
        return Err(ApiError::bad_request(
            "no_source",
            format!(
                "mode {} needs a source of truth, and plugin {plugin:?} has none configured",
                mode.as_str()
            ),
        ));
    }
    if let Some(t) = &token {
        if mode != Mode::Source {
            s.wait_for(&plugin, t, Duration::from_millis(wait_ms))
                .await?;
        }
    }
    let now = params.at_ms.unwrap_or_else(engine::now_ms);
    let mut read = Read {
        s: &s,
        plugin: &plugin,
        key: &key,
        own,
        mode,
        now,
        served_by: "projection",
        populated: None,
        comparison: None,
    };
    let (answer, mut view) = read.answer().await?;
    if read.populated.is_some() {
        view = s.engine.read(&plugin, &key, now).ok().flatten();
    }
    let served_by = read.served_by;
    let body = ReadAnswer {
        plugin: &plugin,
        key: &key,
        mode: mode.as_str(),
        served_by,
        answer: &answer,
        view: view_json(view.as_ref()),
        staleness: s.staleness(&plugin, view.as_ref(), engine::now_ms()),
        populated: read.populated.take(),
        comparison: read.comparison.take(),
    };
    let response = Json(body).into_response();
    s.metrics
        .reads
        .get_or_create(&ReadLabels {
            plugin: plugin.clone(),
            mode: mode.as_str().into(),
            served_by: served_by.into(),
        })
        .inc();
    s.metrics
        .read_seconds
        .get_or_create(&ModeLabels {
            plugin,
            mode: mode.as_str().into(),
        })
        .observe(started.elapsed().as_secs_f64());
    Ok(response)
}

/// Who answered a read: the plugin's rendered view (kept as checked raw
/// JSON, never re-parsed) or the source of truth.
enum Answer {
    View(Arc<RawValue>),
    Source(Value),
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::View(raw) => raw.serialize(s),
            Answer::Source(value) => value.serialize(s),
        }
    }
}

/// The body of a view read.
#[derive(serde::Serialize)]
struct ReadAnswer<'a> {
    plugin: &'a str,
    key: &'a str,
    mode: &'static str,
    served_by: &'static str,
    answer: &'a Answer,
    view: Value,
    staleness: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    populated: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison: Option<Value>,
}

/// Split an ingest body into events: a JSON object, a JSON array of
/// objects, or NDJSON (one event per line).
fn split_events(body: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request("bad_event", format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ApiError::bad_request("bad_event", "empty body: no events"));
    }
    if trimmed.starts_with('[') {
        let list: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(trimmed)
            .map_err(|e| ApiError::bad_request("bad_event", format!("JSON array: {e}")))?;
        if list.is_empty() {
            return Err(ApiError::bad_request("bad_event", "empty array: no events"));
        }
        return Ok(list.iter().map(|v| v.get().as_bytes().to_vec()).collect());
    }
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect())
}

async fn ingest(State(s): State<Arc<ServeState>>, body: Bytes) -> ApiResult<Json<Value>> {
    let Some(log) = s.log.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_embedded_log",
            "this runtime does not read the embedded log; produce to its source instead",
        ));
    };
    let events = split_events(&body)?;
    let count = events.len();
    let appended = tokio::task::spawn_blocking(move || log.append(&events))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "runtime_error",
                e.to_string(),
            )
        })?;
    let positions = appended.map_err(|e| match e {
        crate::source::log::Error::Decode { index, error } => ApiError::bad_request(
            "bad_event",
            format!(
                "event {} (of {count}): {error}; nothing was appended",
                index + 1
            ),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "runtime_error",
            other.to_string(),
        ),
    })?;
    s.metrics.ingested.inc_by(count as u64);
    let mut offsets = BTreeMap::new();
    for p in &positions {
        let slot = offsets.entry(p.partition).or_insert(p.offset);
        *slot = (*slot).max(p.offset);
    }
    let token = Token {
        source: LOG_SOURCE.into(),
        offsets,
    };
    Ok(Json(json!({"count": count, "token": token.to_string()})))
}

fn rollout_json(plugin: &str, own: &PluginServe) -> Value {
    let rollout = own
        .rollout
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let from = if own.overridden.load(Ordering::Relaxed) {
        "runtime"
    } else {
        "config"
    };
    json!({"plugin": plugin, "rollout": *rollout, "from": from})
}

async fn get_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    Ok(Json(rollout_json(&plugin, own)))
}

async fn put_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    body: Result<Json<Rollout>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    let Json(rollout) = body.map_err(|e| ApiError::bad_request("bad_rollout", e.body_text()))?;
    rollout
        .validate()
        .map_err(|e| ApiError::bad_request("bad_rollout", e))?;
    if own.source.is_none()
        && (rollout.default.needs_source() || rollout.rules.iter().any(|r| r.mode.needs_source()))
    {
        return Err(ApiError::bad_request(
            "bad_rollout",
            format!("plugin {plugin:?} has no source of truth; every mode must be projection"),
        ));
    }
    let bytes = serde_json::to_vec(&rollout).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "runtime_error",
            e.to_string(),
        )
    })?;
    s.engine
        .store()
        .set_setting(&rollout_setting(&plugin), Some(&bytes))
        .map_err(|e| ApiError::from(engine::Error::from(e)))?;
    *own.rollout.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rollout);
    own.overridden.store(true, Ordering::Relaxed);
    tracing::info!(plugin, "rollout changed");
    Ok(Json(rollout_json(&plugin, own)))
}

async fn delete_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    s.engine
        .store()
        .set_setting(&rollout_setting(&plugin), None)
        .map_err(|e| ApiError::from(engine::Error::from(e)))?;
    *own.rollout.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(own.configured.clone());
    own.overridden.store(false, Ordering::Relaxed);
    tracing::info!(plugin, "rollout reset to the config");
    Ok(Json(rollout_json(&plugin, own)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MismatchParams {
    limit: Option<usize>,
}

async fn mismatches(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    params: Result<Query<MismatchParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let own = s.plugin(&plugin)?;
    let limit = params.limit.unwrap_or(usize::MAX);
    let recent = own.mismatches.lock().unwrap_or_else(|e| e.into_inner());
    let list: Vec<Value> = recent
        .iter()
        .rev()
        .take(limit)
        .map(|m| {
            json!({"key": m.key, "at_ms": m.at_ms, "mode": m.mode.as_str(),
                   "projection": m.projection, "source": m.source,
                   "differences": differences_json(&m.differences)})
        })
        .collect();
    Ok(Json(
        json!({"plugin": plugin, "kept": recent.len(), "mismatches": list}),
    ))
}

/// The API listening on its own runtime threads until stopped.
pub struct Serving {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Serving {
    /// Bind `listen` and serve `state` on a two-thread runtime.
    pub fn start(state: Arc<ServeState>, listen: &str) -> anyhow::Result<Serving> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("projector-http")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| anyhow::anyhow!("http.listen {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        // Answers are small and latency matters: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        let task = runtime.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("http server stopped: {e}");
            }
        });
        Ok(Serving {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight finish (bounded), and stop.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            if let Some(task) = self.task.take() {
                let drained =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
                if drained.is_err() {
                    tracing::warn!("requests still in flight after 5 s; stopping anyway");
                }
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
