//! Error answers: a JSON object `{"error": <code>, "message": <what and
//! why>}` with a 4xx status for a bad request and a 5xx one when the
//! runtime or the source of truth failed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use projector_core::engine;
use serde_json::{json, Value};

/// An error answer: status, a stable code, and a message that names the
/// problem.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    extra: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// A failure of the runtime itself (500, `runtime_error`).
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "runtime_error",
            e.to_string(),
        )
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn with(mut self, extra: Value) -> Self {
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

impl From<projector_deploy::Error> for ApiError {
    fn from(e: projector_deploy::Error) -> Self {
        use projector_deploy::Error as R;
        match e {
            R::Rejected { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e.to_string())
            }
            R::NoEarlier(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_earlier_version", e.to_string())
            }
            R::NoShadow(_) => ApiError::new(StatusCode::CONFLICT, "no_shadow", e.to_string()),
            R::Held { .. } => ApiError::new(StatusCode::CONFLICT, "promotion_held", e.to_string()),
            R::ReplaceRequired(refusal) => {
                let extra = serde_json::to_value(&refusal).unwrap_or_default();
                ApiError::new(
                    StatusCode::CONFLICT,
                    "replace_required",
                    refusal.to_string(),
                )
                .with(extra)
            }
            R::Stopped(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string())
            }
            R::Engine(e) => e.into(),
            other => ApiError::internal(other),
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
            engine::Error::NoHistory(_) => {
                ApiError::new(StatusCode::CONFLICT, "history_off", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A query string, parsed into `T`; one that does not parse is answered
/// 400 `bad_query` as JSON, like every other error.
pub(crate) struct Query<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Query(t))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}
