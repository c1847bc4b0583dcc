//! `POST /v1/events`: events appended to the embedded log, answered with
//! a position token.

use crate::error::{ApiError, ApiResult};
use crate::state::ServeState;
use crate::token::Token;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use projector_sources::log::LOG_SOURCE;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest ingest request body.
pub(crate) const MAX_BODY_BYTES: usize = 16 << 20;

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

pub(crate) async fn ingest(
    State(s): State<Arc<ServeState>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Some(log) = s.feed.log.clone() else {
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
        .map_err(ApiError::internal)?;
    let appended = appended.map_err(|e| match e {
        projector_sources::log::Error::Decode { index, error } => ApiError::bad_request(
            "bad_event",
            format!(
                "event {} (of {count}): {error}; nothing was appended",
                index + 1
            ),
        ),
        other => ApiError::internal(other),
    })?;
    let duplicates = appended.duplicates;
    s.metrics.ingested.inc_by((count - duplicates) as u64);
    s.metrics.ingest_duplicates.inc_by(duplicates as u64);
    let mut offsets = BTreeMap::new();
    for p in &appended.positions {
        let slot = offsets.entry(p.partition).or_insert(p.offset);
        *slot = (*slot).max(p.offset);
    }
    let token = Token {
        source: LOG_SOURCE.into(),
        offsets,
    };
    Ok(Json(json!({
        "count": count,
        "duplicates": duplicates,
        "token": token.to_string(),
    })))
}
