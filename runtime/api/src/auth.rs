//! Bearer tokens. The admin routes (`/v1/admin/...`: deploys, promotions,
//! rollouts, backfills) need `[http] admin_token` once one is set; view
//! reads and ingest can have tokens of their own (`read_token`,
//! `ingest_token`, off by default), and the admin token opens them too.
//! Tokens are compared in constant time. An API that listens beyond
//! loopback with no admin token is refused at start ([`check_listen`]).

use crate::error::ApiError;
use crate::state::ServeState;
use crate::HttpConfig;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Admin,
    Read,
    Ingest,
    Nothing,
}

fn need(path: &str) -> Need {
    if path == "/v1/admin" || path.starts_with("/v1/admin/") {
        Need::Admin
    } else if path.starts_with("/v1/views/") {
        Need::Read
    } else if path == "/v1/events" {
        Need::Ingest
    } else {
        Need::Nothing
    }
}

/// Whether `presented` is `expected`, in time that does not depend on
/// where they first differ.
pub(crate) fn tokens_match(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Refuse an API on a non-loopback address with no admin token: anyone
/// who can reach it could deploy code.
pub(crate) fn check_listen(http: &HttpConfig, listen: &str) -> anyhow::Result<()> {
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        // A host name: resolved by the bind, judged after it.
        return Ok(());
    };
    check_addr(http, addr)
}

/// As [`check_listen`], for the address bound.
pub(crate) fn check_addr(http: &HttpConfig, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || http.admin_token.is_some() {
        return Ok(());
    }
    anyhow::bail!(
        "http.listen {addr} is reachable beyond this machine and no admin token is set: \
         anyone reaching it could deploy plugins. Set [http] admin_token (or the \
         PROJECTOR_ADMIN_TOKEN variable), or listen on 127.0.0.1"
    )
}

/// Let the request through if it carries a token its route accepts.
pub(crate) async fn check(
    State(s): State<Arc<ServeState>>,
    request: Request,
    next: Next,
) -> Response {
    let http = &s.http;
    let (own, what) = match need(request.uri().path()) {
        Need::Admin => (http.admin_token.as_deref(), "admin"),
        Need::Read => (http.read_token.as_deref(), "read"),
        Need::Ingest => (http.ingest_token.as_deref(), "ingest"),
        Need::Nothing => return next.run(request).await,
    };
    // A route whose token is not set is open (admin routes only on
    // loopback: see `check_listen`).
    let Some(own) = own else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let admin = http.admin_token.as_deref();
    let ok = presented.is_some_and(|p| {
        // Both compared, whatever the first gives.
        let mine = tokens_match(p, own);
        let admins = admin.is_some_and(|a| tokens_match(p, a));
        mine | admins
    });
    if ok {
        return next.run(request).await;
    }
    let message = match presented {
        None => format!("this route needs the {what} token: send `Authorization: Bearer <token>`"),
        Some(_) => format!("the token sent is not the {what} token"),
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"projector\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(tokens_match("s3cret", "s3cret"));
        assert!(!tokens_match("s3cres", "s3cret"));
        assert!(!tokens_match("s3cre", "s3cret"));
        assert!(!tokens_match("", "s3cret"));
        assert!(!tokens_match("s3cret ", "s3cret"));
    }

    #[test]
    fn routes_need_their_own_token() {
        assert_eq!(need("/v1/admin/plugins"), Need::Admin);
        assert_eq!(need("/v1/admin/rollout/p"), Need::Admin);
        assert_eq!(need("/v1/views/p/k"), Need::Read);
        assert_eq!(need("/v1/events"), Need::Ingest);
        assert_eq!(need("/metrics"), Need::Nothing);
        assert_eq!(need("/v1/administer"), Need::Nothing);
    }

    #[test]
    fn an_api_beyond_loopback_needs_an_admin_token() {
        let mut http = HttpConfig::default();
        assert!(check_listen(&http, "127.0.0.1:8080").is_ok());
        assert!(check_listen(&http, "[::1]:8080").is_ok());
        let refused = check_listen(&http, "0.0.0.0:8080").expect_err("refused");
        assert!(
            refused.to_string().contains("PROJECTOR_ADMIN_TOKEN"),
            "{refused}"
        );
        http.admin_token = Some("t".into());
        assert!(check_listen(&http, "0.0.0.0:8080").is_ok());
    }
}
