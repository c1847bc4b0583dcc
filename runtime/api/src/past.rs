//! Views as they were (plugins with `history`): `GET
//! /v1/views/{plugin}/{key}?as_of=<ms>` or `?as_of_position=<token>`
//! answers the view as the last change committed then left it, with the
//! plugin version and the offsets that produced it; `GET
//! /v1/views/{plugin}/{key}/history` lists its changes kept.

use crate::error::{ApiError, ApiResult};
use crate::read::view_json;
use crate::route::{route, Routed};
use crate::state::ServeState;
use crate::token::Token;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use projector_core::engine::{self, AsOf, Past};
use serde_json::{json, Value};
use std::sync::Arc;

/// `as_of_position=<token>`: the view as of the token's records (each
/// partition's named offset applied).
pub(crate) fn position(text: &str) -> ApiResult<AsOf> {
    let t = Token::parse(text).map_err(|e| ApiError::bad_request("bad_token", e))?;
    Ok(t.as_of())
}

/// One change as JSON: when, which version, the offsets, and the view
/// then (`answer`: its rendered answer, null when deleted or Invalid;
/// `fetched`: the fetched answers it was built from, when the plugin
/// records its fetches).
fn past_json(p: &Past) -> Value {
    let offsets: Vec<Value> = p
        .offsets
        .iter()
        .map(|(source, partition, next)| json!({"source": source, "partition": partition, "next": next}))
        .collect();
    let answer = p
        .view
        .as_ref()
        .and_then(|v| v.body.as_ref())
        .and_then(|b| serde_json::from_str::<Value>(b.get()).ok())
        .unwrap_or(Value::Null);
    let mut out = json!({
        "at_ms": p.at_ms,
        "version": p.version,
        "offsets": offsets,
        "deleted": p.view.is_none(),
        "view": view_json(p.view.as_ref()),
        "answer": answer,
    });
    // Plugins that record their fetches: the answers the change used.
    if !p.answers.is_empty() {
        out["fetched"] = json!(p.answers);
    }
    out
}

/// Answer a read of `plugin`'s `key` as of `at` (rendered at `now`).
pub(crate) async fn as_of(
    s: &Arc<ServeState>,
    plugin: &str,
    key: &str,
    at: AsOf,
    now: i64,
    standby: bool,
) -> ApiResult<Response> {
    let (engine, p, k, when) = (
        s.engine.clone(),
        plugin.to_string(),
        key.to_string(),
        at.clone(),
    );
    let past = tokio::task::spawn_blocking(move || engine.view_as_of(&p, &k, &when, now))
        .await
        .map_err(ApiError::internal)??;
    let asked = match &at {
        AsOf::Time(ms) => json!({"as_of": ms}),
        AsOf::Position(offsets) => json!({"as_of_position": offsets
            .iter()
            .map(|(source, partition, next)| json!({"source": source, "partition": partition, "next": next}))
            .collect::<Vec<_>>()}),
    };
    let Some(past) = past.filter(|p| p.view.is_some()) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "view_not_found",
            format!("{plugin} had no view of {key:?} then (none kept from that time or before, or it was deleted)"),
        ));
    };
    let mut body = past_json(&past);
    body["plugin"] = json!(plugin);
    body["key"] = json!(key);
    body["asked"] = asked;
    if standby {
        body["standby"] = json!(true);
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/views/{plugin}/{key}/history`: the view's changes kept,
/// oldest first; with several instances, asked of the view's owner.
pub(crate) async fn history(
    State(s): State<Arc<ServeState>>,
    Path((plugin, key)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let code = s.engine.projection(&plugin)?;
    engine::check_key(&key, code.code().limits())?;
    if let Routed::Answered(answer) = route(&s, &plugin, &key, false, &uri, &headers).await {
        return Ok(answer);
    }
    let bounds = code.history();
    let (engine, p, k) = (s.engine.clone(), plugin.clone(), key.clone());
    let now = projector_core::now_ms();
    let changes = tokio::task::spawn_blocking(move || engine.view_history(&p, &k, now))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(json!({
        "plugin": plugin,
        "key": key,
        "kept": bounds.map(|b| json!({"versions": b.versions, "ms": b.ms})),
        "changes": changes.iter().map(past_json).collect::<Vec<_>>(),
    }))
    .into_response())
}
