//! Reads routed to the owner: with several instances on Kafka, a view is
//! answered by the instance that owns its partition. A read that arrives
//! elsewhere is forwarded once to the owner (a forwarded read carries
//! `x-projector-forwarded` and is never forwarded again), and its answer
//! (status, body, the owner's staleness and headers) passed back as it
//! is. With no owner now (a rebalance, a restore) the answer is 503 with
//! `Retry-After`, never a wrong view.

use crate::error::ApiError;
use crate::state::ServeState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use projector_core::source::Owner;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Marks a read forwarded by another instance (its value: that instance).
pub(crate) const FORWARDED: &str = "x-projector-forwarded";

/// Names the instance that answered a forwarded read.
const ANSWERED_BY: &str = "x-projector-instance";

/// Seconds a reader is asked to wait when no instance can answer now.
const RETRY_AFTER_S: u64 = 1;

/// How long a forwarded read may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client with timeouts builds")
    })
}

/// 503 with `Retry-After`: nobody can answer this read now.
fn unavailable(code: &'static str, message: String) -> Response {
    let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    r
}

/// Where a read is answered.
pub(crate) enum Routed {
    /// Here, as the owner (or with one instance).
    Here,
    /// Here, from a standby's views: the answer is marked stale.
    Standby,
    /// Elsewhere: the owner's answer, or a 503.
    Answered(Response),
}

/// Where a read of `plugin`'s `key` is answered; `stale_ok`: the reader
/// accepts a standby's views.
pub(crate) async fn route(
    s: &ServeState,
    plugin: &str,
    key: &str,
    stale_ok: bool,
    uri: &Uri,
    headers: &HeaderMap,
) -> Routed {
    let Some(router) = s.feed.router() else {
        return Routed::Here;
    };
    Routed::Answered(match router.owner(plugin, key, stale_ok) {
        Owner::Local => return Routed::Here,
        Owner::Standby => return Routed::Standby,
        Owner::Unavailable { reason, message } => unavailable(reason, message),
        Owner::Remote { instance, .. } if headers.contains_key(FORWARDED) => unavailable(
            "rebalancing",
            format!(
                "this instance does not own the view's partition, and instance {instance} \
                 forwarded the read here (ownership is moving)"
            ),
        ),
        Owner::Remote { instance, url } => {
            forward(&router.instance(), &instance, &url, uri, headers).await
        }
    })
}

/// Marks an answer from a standby's views.
pub(crate) const STANDBY: &str = "x-projector-standby";

/// Forward a read to the owner at `url`, once.
async fn forward(me: &str, owner: &str, url: &str, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let target = format!("{}{path}", url.trim_end_matches('/'));
    let mut request = client().get(&target).header(FORWARDED, me);
    for (name, value) in headers {
        if name != header::HOST && name != header::CONTENT_LENGTH && name.as_str() != FORWARDED {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            return unavailable(
                "owner_unreachable",
                format!(
                "the owner of the view's partition, instance {owner} at {url}, did not answer: {e}"
            ),
            )
        }
    };
    let status = answer.status();
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        if name == header::CONTENT_TYPE
            || name == header::RETRY_AFTER
            || name.as_str().starts_with("x-projector-")
        {
            out = out.header(name, value);
        }
    }
    out = out.header(ANSWERED_BY, owner);
    match answer.bytes().await {
        Ok(body) => out
            .body(Body::from(body))
            .unwrap_or_else(|e| ApiError::internal(e).into_response()),
        Err(e) => unavailable(
            "owner_unreachable",
            format!("reading the answer of instance {owner}: {e}"),
        ),
    }
}

/// `GET /v1/admin/instances`: the instances, what each owns, restores and
/// follows as a standby, and the routing table.
pub(crate) async fn instances(State(s): State<Arc<ServeState>>) -> Response {
    match s.feed.router() {
        Some(r) => Json(r.table()).into_response(),
        None => Json(serde_json::json!({
            "instance": null,
            "members": [],
            "routes": {},
            "message": "one instance: no [source.kafka] with changelog = true",
        }))
        .into_response(),
    }
}
