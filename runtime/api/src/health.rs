//! Health, readiness, metrics, the OpenAPI document, the plugin list, and
//! the answers for unknown routes.

use crate::error::ApiError;
use crate::state::ServeState;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use projector_core::source::CAUGHT_UP_RECORDS;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /openapi.json",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /readyz?require=caught_up`.
#[derive(serde::Deserialize)]
pub(crate) struct ReadyQuery {
    require: Option<String>,
}

pub(crate) async fn readyz(
    State(s): State<Arc<ServeState>>,
    Query(q): Query<ReadyQuery>,
) -> Result<Response, ApiError> {
    let want_caught_up = match q.require.as_deref() {
        None => false,
        Some("caught_up") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("require: expected caught_up, got {other:?}"),
            ))
        }
    };
    let plugins = s.plugin_names();
    if !s.ready.load(Ordering::Relaxed) {
        let body = json!({"status": "starting", "plugins": plugins});
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    let restoring = s.feed.router().map(|r| r.restoring()).unwrap_or_default();
    let partitions = partitions(&s);
    let caught_up = restoring.is_empty() && partitions.iter().all(|p| p.caught_up);
    // Ready: partitions being restored are answered 503 meanwhile.
    let (code, status) = match (want_caught_up, caught_up) {
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "catching_up"),
        _ => (StatusCode::OK, "ready"),
    };
    let body = json!({"status": status, "plugins": plugins, "restoring": restoring,
                      "caught_up": caught_up, "partitions": partitions});
    Ok((code, Json(body)).into_response())
}

/// One partition followed here, for `/readyz`.
#[derive(serde::Serialize)]
struct Partition {
    source: String,
    partition: u32,
    /// The most records any plugin has not applied; `None` while the
    /// partition's end is not known.
    lag: Option<u64>,
    caught_up: bool,
}

/// Each partition followed here with the most any plugin is behind.
fn partitions(s: &ServeState) -> Vec<Partition> {
    let mut out: BTreeMap<(String, u32), Option<u64>> = BTreeMap::new();
    for (source, ends) in s.feed.positions() {
        for (partition, _) in ends {
            out.insert((source.clone(), partition), None);
        }
    }
    let plugins = s.plugin_names();
    if plugins.is_empty() {
        // Nothing to apply: every partition whose end is known is caught up.
        for most in out.values_mut() {
            *most = Some(0);
        }
    }
    for plugin in plugins {
        for l in s.feed.lags(&s.engine, &plugin) {
            let most = out.entry((l.source, l.partition)).or_default();
            *most = Some(most.unwrap_or(0).max(l.lag));
        }
    }
    out.into_iter()
        .map(|((source, partition), lag)| Partition {
            source,
            partition,
            lag,
            caught_up: lag.is_some_and(|l| l <= CAUGHT_UP_RECORDS as u64),
        })
        .collect()
}

/// `/metrics`: Prometheus text 0.0.4, or OpenMetrics when `Accept` asks.
pub(crate) async fn metrics_text(
    State(s): State<Arc<ServeState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    use crate::exposition;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let text = s.metrics.render();
    match exposition::wants_openmetrics(accept) {
        true => ([(header::CONTENT_TYPE, exposition::OPENMETRICS)], text).into_response(),
        false => (
            [(header::CONTENT_TYPE, exposition::PROMETHEUS)],
            exposition::to_prometheus(&text),
        )
            .into_response(),
    }
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

/// A plugin's deliveries since start, by outcome.
pub(crate) fn events_json(p: &projector_core::engine::Projection) -> Value {
    let c = p.counters();
    json!({"received": c.received, "applied": c.applied, "skipped": c.skipped,
           "invalidated": c.invalidated, "dead_lettered": c.dead_lettered})
}

/// A plugin's breaker: its state, why and since when it is paused, when
/// the next probe is, and how often it opened.
pub(crate) fn breaker_json(p: &projector_core::engine::Projection) -> Value {
    use projector_core::breaker::BreakerState;
    let state = p.breaker();
    let mut out = json!({"state": state.name(), "opened": p.breaker_opened()});
    match state {
        BreakerState::Closed => {}
        BreakerState::Open {
            reason,
            since_ms,
            probe_at_ms,
        } => {
            out["reason"] = reason.into();
            out["since_ms"] = since_ms.into();
            out["probe_at_ms"] = probe_at_ms.into();
        }
        BreakerState::CatchingUp { since_ms } => out["since_ms"] = since_ms.into(),
    }
    out
}

pub(crate) async fn list_plugins(State(s): State<Arc<ServeState>>) -> Json<Value> {
    let list: Vec<Value> = s
        .engine
        .projections()
        .iter()
        .map(|p| {
            let own = s.plugin(p.name()).ok();
            json!({
                "plugin": p.name(), "id": p.code().id(), "version": p.code().info().version,
                "population": format!("{:?}", p.population()).to_lowercase(),
                "source_of_truth": own.is_some_and(|o| o.truth.is_some()),
                "events": events_json(p),
                "breaker": breaker_json(p),
                "ttl_ms": p.ttl_ms(),
                "expired": {"swept": p.expired_swept(), "reads": p.expired_reads()},
            })
        })
        .collect();
    // `projector status` shows the retry queue from here too.
    let retry_queue = s.engine.store().retry_count();
    Json(json!({"plugins": list, "retry_queue": retry_queue}))
}
