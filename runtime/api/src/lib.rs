//! projector-api: the HTTP API: views in four read modes (seed 000), rollout rules,
//! lazy population from the source of truth, comparison, read-your-writes
//! tokens (seed 004), ingest into the embedded log, metrics and health.
//!
//! The routes, their parameters and answers are described in
//! `runtime/api/openapi.json`, served at `/openapi.json`. Every error is a JSON
//! object `{"error": <code>, "message": <what and why>}` with a 4xx status
//! for a bad request and a 5xx one when the runtime or the source failed.

//!
//!
//! Map: [`state`] (what handlers share, the [`Feed`]), `read` (view
//! reads), `ingest`, `admin` (deploys, shadow, rollout, mismatches),
//! `audit` (which version applied which offsets), `verify` (views against
//! the source of truth), `backfill` (views from it, paced and resumable),
//! `health` (health, readiness, metrics, plugin list), `exposition`
//! (the two formats of `/metrics`), `history` and
//! `overview` (operator numbers), `console` (the operator console's page),
//! `auth` (tokens), `shed` (overload:
//! 503 past `max_in_flight`), [`error`],
//! [`metrics`], [`rollout`], [`token`], [`truth`] (the source of truth),
//! [`server`]. It sits above the deploys crate and below the binary.

#![deny(missing_docs)]

mod admin;
mod audit;
mod auth;
mod backfill;
mod collector;
mod console;
mod dead_letters;
pub mod error;
mod exposition;
mod health;
mod history;
mod ingest;
pub mod metrics;
mod overview;
mod past;
mod read;
pub mod rollout;
mod route;
pub mod server;
mod shed;
mod slow;
pub mod state;
pub mod token;
pub mod truth;
mod verify;

pub use error::ApiError;
pub use server::Serving;
pub use state::{ApiSettings, Feed, PluginApi, ServeState};

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::sync::Arc;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the read API, or "off".
    pub listen: String,
    /// How long a read carrying a position token waits by default.
    pub consistency_timeout_ms: u64,
    /// Recent mismatches kept per plugin for `/v1/admin/mismatches`.
    pub mismatches_kept: usize,
    /// Request header naming the user (rollout rules).
    pub user_header: String,
    /// Request header listing the user's groups, comma-separated.
    pub groups_header: String,
    /// Requests served at once, at most; one more is answered 503 with
    /// `Retry-After` (0: no bound). Health, readiness and metrics are
    /// never refused.
    pub max_in_flight: usize,
    /// A request's body must arrive within this (ms), or it is answered
    /// 408 `slow_client` (0: no deadline).
    pub body_timeout_ms: u64,
    /// Bearer token of the admin routes (`/v1/admin/...`); required to
    /// listen beyond loopback. Also `PROJECTOR_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// Bearer token of view reads. Also `PROJECTOR_READ_TOKEN`. On
    /// loopback none is needed; beyond it, one is, unless `public_reads`.
    pub read_token: Option<String>,
    /// Bearer token of `POST /v1/events`. Also `PROJECTOR_INGEST_TOKEN`.
    /// On loopback none is needed; beyond it, one is, unless
    /// `public_ingest`.
    pub ingest_token: Option<String>,
    /// Beyond loopback, serve view reads with no read token set.
    pub public_reads: bool,
    /// Beyond loopback, take `POST /v1/events` with no ingest token set.
    pub public_ingest: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            consistency_timeout_ms: 2000,
            mismatches_kept: 100,
            user_header: "x-user-id".into(),
            groups_header: "x-groups".into(),
            max_in_flight: 1024,
            body_timeout_ms: 10_000,
            admin_token: None,
            read_token: None,
            ingest_token: None,
            public_reads: false,
            public_ingest: false,
        }
    }
}

/// The HTTP routes over `state`.
pub(crate) fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics_text))
        .route("/openapi.json", get(health::openapi))
        .route("/console", get(console::page))
        .route("/console/", get(console::slash))
        .route("/console/assets/{*file}", get(console::file))
        .route("/v1/plugins", get(health::list_plugins))
        .route("/v1/views/{plugin}/{key}", get(read::read_view))
        .route("/v1/views/{plugin}/{key}/history", get(past::history))
        .route(
            "/v1/events",
            axum::routing::post(ingest::ingest)
                .layer(DefaultBodyLimit::max(ingest::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/admin/rollout/{plugin}",
            get(admin::get_rollout)
                .put(admin::put_rollout)
                .delete(admin::delete_rollout),
        )
        .route("/v1/admin/mismatches/{plugin}", get(admin::mismatches))
        .route("/v1/admin/dead-letters", get(dead_letters::list))
        .route(
            "/v1/admin/dead-letters/redrive",
            axum::routing::post(dead_letters::redrive),
        )
        .route("/v1/admin/history", get(history::history))
        .route("/v1/admin/overview", get(overview::overview))
        .route("/v1/admin/instances", get(route::instances))
        .route(
            "/v1/admin/plugins/{plugin}/views/{key}",
            get(admin::stored_view),
        )
        .route("/v1/admin/plugins", get(admin::registry_list))
        .route(
            "/v1/admin/plugins/{plugin}",
            axum::routing::post(admin::deploy)
                .delete(admin::remove)
                .layer(DefaultBodyLimit::max(admin::MAX_PLUGIN_BYTES)),
        )
        .route(
            "/v1/admin/plugins/{plugin}/rollback",
            axum::routing::post(admin::rollback),
        )
        .route("/v1/admin/plugins/{plugin}/logs", get(admin::plugin_logs))
        .route("/v1/admin/plugins/{plugin}/audit", get(audit::plugin_audit))
        .route("/v1/admin/plugins/{plugin}/build", get(admin::build_status))
        .route(
            "/v1/admin/plugins/{plugin}/backfill",
            get(backfill::status)
                .post(backfill::start)
                .delete(backfill::cancel)
                .layer(DefaultBodyLimit::max(64 << 20)),
        )
        .route(
            "/v1/admin/plugins/{plugin}/verify",
            axum::routing::post(verify::verify).layer(DefaultBodyLimit::max(64 << 20)),
        )
        .route(
            "/v1/admin/plugins/{plugin}/shadow",
            get(admin::shadow_status),
        )
        .route(
            "/v1/admin/plugins/{plugin}/compare",
            axum::routing::post(admin::shadow_compare),
        )
        .route(
            "/v1/admin/plugins/{plugin}/promote",
            axum::routing::post(admin::shadow_promote),
        )
        .route(
            "/v1/admin/plugins/{plugin}/retire",
            axum::routing::post(admin::shadow_retire),
        )
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            slow::read_body_in_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            shed::shed,
        ))
        .with_state(state)
}
