//! Slow clients: a request's body must arrive within `[http]
//! body_timeout_ms`, or the request is answered 408 `slow_client` and its
//! connection closed, so a client that trickles its body cannot hold a
//! request slot (and a `max_in_flight` permit) for long. The body is read
//! here, bounded by the largest body any route takes; each route's own
//! limit still applies when its handler reads it.

use crate::state::ServeState;
use crate::{admin, ingest, ApiError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// Read the request's body within the deadline, then serve it.
pub(crate) async fn read_body_in_time(
    State(state): State<Arc<ServeState>>,
    request: Request,
    next: Next,
) -> Response {
    let timeout_ms = state.http.body_timeout_ms;
    if timeout_ms == 0 {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = ingest::MAX_BODY_BYTES.max(admin::MAX_PLUGIN_BYTES);
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(Duration::from_millis(timeout_ms), read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body could not be read within {limit} bytes: {e}"),
        )
        .into_response(),
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "slow_client",
                format!(
                    "the request body did not arrive within {timeout_ms} ms ([http] body_timeout_ms)"
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}
