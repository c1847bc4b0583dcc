//! Admin routes: deploys (replace and shadow), rollback, shadow status,
//! comparison, promotion and retirement, the registry, plugin logs,
//! rollout rules and recent mismatches.

use crate::error::{ApiError, ApiResult, Query};
use crate::rollout::Rollout;
use crate::state::{differences_json, rollout_setting, PluginServe, ServeState};
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use projector_common::sync::Recover;
use projector_core::engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest `.wasm` the admin API takes.
pub(crate) const MAX_PLUGIN_BYTES: usize = 64 << 20;

pub(crate) fn deployer(s: &ServeState) -> ApiResult<Arc<projector_deploy::Deployer>> {
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
pub(crate) struct DeployParams {
    /// Where the code came from, for the registry (default `api`).
    from: Option<String>,
    /// `replace` (default) or `shadow`.
    mode: Option<String>,
    /// For shadow: `auto` (default), `rebuild` or `migrate`.
    method: Option<projector_deploy::ShadowMethod>,
    /// Replace the running plugin, or run a component under a name it
    /// does not call itself (refused otherwise: 409 `replace_required`).
    replace: Option<bool>,
    /// Settings over the config's for this version, a JSON object
    /// (URL-encoded), kept with it in the registry.
    settings: Option<String>,
    /// For shadow: `manual` (an operator promotes) or `gated` (the
    /// shadow promotes itself once the plugin's promotion gate holds);
    /// default: as `[plugins.NAME.promote]` says.
    promote: Option<projector_deploy::PromoteMode>,
}

/// The `settings` query parameter of a deploy: a JSON object.
fn deploy_settings(text: Option<&str>) -> ApiResult<Option<projector_deploy::Settings>> {
    let Some(text) = text else {
        return Ok(None);
    };
    serde_json::from_str(text).map(Some).map_err(|e| {
        ApiError::bad_request(
            "bad_settings",
            format!("settings: expected a JSON object ({e})"),
        )
    })
}

/// Run registry work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, projector_deploy::Error> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

pub(crate) async fn shadow_status(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let status = d
        .shadow(&plugin)
        .ok_or_else(|| projector_deploy::Error::NoShadow(plugin.clone()))?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompareParams {
    /// Keys to compare, spread over the key space (default 1000).
    sample: Option<usize>,
}

/// Most mismatches one answer lists.
pub(crate) const MAX_LIMIT: usize = 1_000_000;

/// Most keys one comparison samples.
const MAX_SAMPLE: usize = 100_000;

pub(crate) async fn shadow_compare(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<CompareParams>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let sample = params.sample.unwrap_or(1000);
    if !(1..=MAX_SAMPLE).contains(&sample) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("sample: expected 1 to {MAX_SAMPLE} keys, got {sample}"),
        ));
    }
    let c = blocking(move || d.compare(&plugin, sample)).await?;
    Ok(Json(serde_json::to_value(c).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteParams {
    /// Promote a held shadow anyway (default false).
    force: Option<bool>,
}

pub(crate) async fn shadow_promote(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<PromoteParams>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let force = params.force.unwrap_or(false);
    let status = blocking(move || d.promote(&plugin, force)).await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

pub(crate) async fn shadow_retire(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let ns = blocking(move || d.retire(&plugin)).await?;
    Ok(Json(json!({"retired": ns})))
}

/// `POST /v1/admin/plugins/{plugin}`: the body is the `.wasm`.
pub(crate) async fn deploy(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<DeployParams>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    let mode = params.mode.as_deref().unwrap_or("replace");
    if mode != "replace" || s.engine.projection(&plugin).is_ok() {
        s.plugin(&plugin)?;
    } else {
        check_new_name(&plugin)?;
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "bad_plugin",
            "the body must be the plugin's .wasm",
        ));
    }
    let from = params.from.unwrap_or_else(|| "api".into());
    let replace = params.replace.unwrap_or(false);
    let settings = deploy_settings(params.settings.as_deref())?;
    if params.promote.is_some() && mode != "shadow" {
        return Err(ApiError::bad_request(
            "bad_query",
            "promote: only a shadow deploy is promoted (mode=shadow)",
        ));
    }
    match mode {
        "replace" => {
            let done =
                blocking(move || d.deploy_with(&plugin, &body, &from, replace, settings.as_ref()))
                    .await?;
            Ok(Json(serde_json::to_value(done).unwrap_or_default()))
        }
        "shadow" => {
            let method = params
                .method
                .unwrap_or(projector_deploy::ShadowMethod::Auto);
            let status = blocking(move || {
                let settings = settings.as_ref();
                let promote = params.promote;
                d.deploy_shadow_with(&plugin, &body, &from, method, replace, settings, promote)
            })
            .await?;
            Ok(Json(serde_json::to_value(status).unwrap_or_default()))
        }
        other => Err(ApiError::bad_request(
            "bad_mode",
            format!("deploy mode {other:?}: expected \"replace\" or \"shadow\""),
        )),
    }
}

/// A name for a plugin added at runtime: it names its views' namespace,
/// settings and metrics.
fn check_new_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_plugin_name",
            format!("{name:?}: a new plugin's name is 1 to 64 letters, digits, '-' or '_'"),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveParams {
    /// Delete its views, offsets, counters and audit too.
    drop_views: Option<bool>,
}

/// `DELETE /v1/admin/plugins/{plugin}`: take the plugin out of the runtime.
pub(crate) async fn remove(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<RemoveParams>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let drop_views = params.drop_views.unwrap_or(false);
    let removed = blocking(move || d.remove(&plugin, drop_views)).await?;
    Ok(Json(serde_json::to_value(removed).unwrap_or_default()))
}

/// `GET /v1/admin/plugins/{plugin}/build`: where adding the plugin is.
pub(crate) async fn build_status(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    let status = d.adding(&plugin).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_build",
            format!("plugin {plugin:?} was not added while this runtime runs"),
        )
    })?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

pub(crate) async fn rollback(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = deployer(&s)?;
    s.plugin(&plugin)?;
    let done = blocking(move || d.rollback(&plugin)).await?;
    Ok(Json(serde_json::to_value(done).unwrap_or_default()))
}

pub(crate) async fn registry_list(State(s): State<Arc<ServeState>>) -> ApiResult<Json<Value>> {
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
            let (kept, shadow) = match e.promoted {
                true => (e.shadow, None),
                false => (None, e.shadow),
            };
            json!({"plugin": name, "active": e.active, "running": running,
                   "shadow": shadow, "kept": kept,
                   "history": e.history, "rollback": e.rollback,
                   "versions": e.versions})
        })
        .collect();
    Ok(Json(json!({"plugins": list})))
}

pub(crate) async fn plugin_logs(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = s.engine.projection(&plugin)?;
    Ok(Json(
        json!({"plugin": plugin, "id": p.code().id(), "lines": p.code().logs().recent()}),
    ))
}

fn rollout_json(plugin: &str, own: &PluginServe) -> Value {
    let rollout = own.rollout.read().recover().clone();
    let from = if own.overridden.load(Ordering::Relaxed) {
        "runtime"
    } else {
        "config"
    };
    json!({"plugin": plugin, "rollout": *rollout, "from": from})
}

pub(crate) async fn get_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    Ok(Json(rollout_json(&plugin, &own)))
}

pub(crate) async fn put_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    body: Result<Json<Rollout>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    let Json(mut rollout) =
        body.map_err(|e| ApiError::bad_request("bad_rollout", e.body_text()))?;
    rollout
        .validate()
        .map_err(|e| ApiError::bad_request("bad_rollout", e))?;
    if own.truth.is_none()
        && (rollout.default.needs_truth() || rollout.rules.iter().any(|r| r.mode.needs_truth()))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_source_of_truth",
            format!("plugin {plugin:?} has no source of truth; every mode must be projection"),
        ));
    }
    let bytes = serde_json::to_vec(&rollout).map_err(ApiError::internal)?;
    s.engine
        .store()
        .set_setting(&rollout_setting(&plugin), Some(&bytes))
        .map_err(|e| ApiError::from(engine::Error::from(e)))?;
    *own.rollout.write().recover() = Arc::new(rollout);
    own.overridden.store(true, Ordering::Relaxed);
    tracing::info!(plugin, "rollout changed");
    Ok(Json(rollout_json(&plugin, &own)))
}

pub(crate) async fn delete_rollout(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    s.engine
        .store()
        .set_setting(&rollout_setting(&plugin), None)
        .map_err(|e| ApiError::from(engine::Error::from(e)))?;
    *own.rollout.write().recover() = Arc::new(own.configured.clone());
    own.overridden.store(false, Ordering::Relaxed);
    tracing::info!(plugin, "rollout reset to the config");
    Ok(Json(rollout_json(&plugin, &own)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MismatchParams {
    limit: Option<usize>,
}

pub(crate) async fn mismatches(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<MismatchParams>,
) -> ApiResult<Json<Value>> {
    let own = s.plugin(&plugin)?;
    let limit = params.limit.unwrap_or(MAX_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit: expected at most {MAX_LIMIT}, got {limit}"),
        ));
    }
    let recent = own.mismatches.lock().recover();
    let list: Vec<Value> = recent
        .iter()
        .rev()
        .take(limit)
        .map(|m| {
            json!({"key": m.key, "at_ms": m.at_ms, "mode": m.mode.as_str(),
                   "projection": m.projection, "source": m.truth,
                   "differences": differences_json(&m.differences)})
        })
        .collect();
    Ok(Json(
        json!({"plugin": plugin, "kept": recent.len(), "mismatches": list}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ViewParams {
    /// Read time for `render`, in ms since the epoch (default: now).
    at_ms: Option<i64>,
}

/// `GET /v1/admin/plugins/{plugin}/views/{key}`: the stored view as it is,
/// with no read mode, fallback or population (what `projector get` shows).
pub(crate) async fn stored_view(
    State(s): State<Arc<ServeState>>,
    Path((plugin, key)): Path<(String, String)>,
    Query(params): Query<ViewParams>,
) -> ApiResult<Json<Value>> {
    s.plugin(&plugin)?;
    let at = params.at_ms.unwrap_or_else(projector_core::now_ms);
    let engine = s.engine.clone();
    let (p, k) = (plugin.clone(), key.clone());
    let view = tokio::task::spawn_blocking(move || engine.read(&p, &k, at))
        .await
        .map_err(ApiError::internal)??;
    let Some(v) = view else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "view_not_found",
            format!("no view for {key:?} in {plugin}"),
        ));
    };
    Ok(Json(json!({
        "plugin": plugin, "key": key,
        "status": format!("{:?}", v.status).to_lowercase(),
        "versions": v.versions.json(), "updated_ms": v.updated_ms, "view": v.json(),
    })))
}
