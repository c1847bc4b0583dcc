//! Overload: at most `[http] max_in_flight` requests are served at once.
//! One more is answered at once with 503 and `Retry-After`, instead of
//! waiting in a queue that grows without bound. Health, readiness and
//! metrics are never shed: an overloaded runtime still tells its state.

use crate::state::ServeState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Seconds a shed client is asked to wait before it tries again.
const RETRY_AFTER_S: u64 = 1;

/// The requests being served, bounded.
pub(crate) struct InFlight {
    permits: Arc<Semaphore>,
}

impl InFlight {
    /// At most `max` at once; `None` when `max` is 0 (no bound).
    pub(crate) fn new(max: usize) -> Option<Self> {
        (max > 0).then(|| InFlight {
            permits: Arc::new(Semaphore::new(max)),
        })
    }
}

/// Serve the request if there is room, else shed it.
pub(crate) async fn shed(
    State(state): State<Arc<ServeState>>,
    request: Request,
    next: Next,
) -> Response {
    let exempt = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let Some(limit) = state.in_flight.as_ref().filter(|_| !exempt) else {
        return next.run(request).await;
    };
    match limit.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => {
            state.metrics().shed.inc();
            let mut response = crate::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "{} requests are being served, the most [http] max_in_flight allows; \
                     try again in {RETRY_AFTER_S} s",
                    state.http.max_in_flight
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            response
        }
    }
}
