//! Bearer tokens. On loopback a route whose token is not set is open;
//! beyond loopback every guarded route needs its token: the admin routes
//! (`/v1/admin/...`: deploys, promotions, rollouts, backfills) `[http]
//! admin_token`, view reads `read_token` and ingest `ingest_token`, unless
//! `public_reads` or `public_ingest` says those are meant to be open. An
//! API beyond loopback that lacks one is refused at start
//! ([`check_listen`], [`check_addr`]); [`decide`] is the policy each
//! request goes through, by [`Exposure`]. The admin token opens reads and
//! ingest too. A token is at least [`MIN_TOKEN_BYTES`] long
//! ([`HttpConfig::check_tokens`], called at config load and at start).
//! The `Bearer` scheme is matched in any case; tokens are compared in
//! constant time.

use crate::error::ApiError;
use crate::state::ServeState;
use crate::HttpConfig;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The shortest token taken, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

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

/// Who can reach the API, judged by the address it listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exposure {
    /// Only this machine (127.0.0.0/8, ::1).
    Loopback,
    /// Anyone with a route to it (0.0.0.0, ::, any other address).
    Beyond,
}

impl Exposure {
    pub(crate) fn of(addr: SocketAddr) -> Exposure {
        match addr.ip().is_loopback() {
            true => Exposure::Loopback,
            false => Exposure::Beyond,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// No token sent (or not as `Bearer`).
    Missing(&'static str),
    /// A token sent, not the route's (nor the admin one).
    Wrong(&'static str),
    /// Beyond loopback with the route's token unset and not public.
    Unset(&'static str),
}

/// Whether a request to `path` carrying `authorization` goes through, on
/// an API exposed as `exposure`.
fn decide(
    http: &HttpConfig,
    exposure: Exposure,
    path: &str,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    let (own, what, public) = match need(path) {
        Need::Admin => (http.admin_token.as_deref(), "admin", false),
        Need::Read => (http.read_token.as_deref(), "read", http.public_reads),
        Need::Ingest => (http.ingest_token.as_deref(), "ingest", http.public_ingest),
        Need::Nothing => return Ok(()),
    };
    let Some(own) = own else {
        return match exposure == Exposure::Loopback || public {
            true => Ok(()),
            false => Err(Refusal::Unset(what)),
        };
    };
    let Some(presented) = authorization.and_then(bearer) else {
        return Err(Refusal::Missing(what));
    };
    // Both compared, whatever the first gives.
    let mine = tokens_match(presented, own);
    let admins = http
        .admin_token
        .as_deref()
        .is_some_and(|a| tokens_match(presented, a));
    match mine | admins {
        true => Ok(()),
        false => Err(Refusal::Wrong(what)),
    }
}

/// The token of an `Authorization` value, its scheme `Bearer` in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `presented` is `expected`, in time that does not depend on
/// where they first differ.
pub(crate) fn tokens_match(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

impl HttpConfig {
    /// Refuse a token shorter than [`MIN_TOKEN_BYTES`], naming its key.
    pub fn check_tokens(&self) -> Result<(), String> {
        for (key, var, token) in [
            ("admin_token", "PROJECTOR_ADMIN_TOKEN", &self.admin_token),
            ("read_token", "PROJECTOR_READ_TOKEN", &self.read_token),
            ("ingest_token", "PROJECTOR_INGEST_TOKEN", &self.ingest_token),
        ] {
            let Some(t) = token.as_deref() else { continue };
            if t.trim().len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "http.{key} (or {var}): {} bytes; a token needs at least \
                     {MIN_TOKEN_BYTES} (leave it out for none)",
                    t.trim().len()
                ));
            }
        }
        Ok(())
    }
}

/// Refuse an API on a non-loopback address that leaves a guarded route
/// without its token (see [`check_addr`]).
pub(crate) fn check_listen(http: &HttpConfig, listen: &str) -> anyhow::Result<()> {
    http.check_tokens().map_err(anyhow::Error::msg)?;
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        // A host name: resolved by the bind, judged after it.
        return Ok(());
    };
    check_addr(http, addr)
}

/// As [`check_listen`], for the address bound: beyond loopback the admin
/// token must be set (anyone reaching the port could deploy code), and
/// the read and ingest tokens unless `public_reads`, `public_ingest`.
pub(crate) fn check_addr(http: &HttpConfig, addr: SocketAddr) -> anyhow::Result<()> {
    if Exposure::of(addr) == Exposure::Loopback {
        return Ok(());
    }
    let mut lacking = Vec::new();
    if http.admin_token.is_none() {
        lacking.push(
            "[http] admin_token (or PROJECTOR_ADMIN_TOKEN): anyone reaching it could deploy plugins",
        );
    }
    if http.read_token.is_none() && !http.public_reads {
        lacking.push(
            "[http] read_token (or PROJECTOR_READ_TOKEN), or public_reads = true to serve views to anyone",
        );
    }
    if http.ingest_token.is_none() && !http.public_ingest {
        lacking.push(
            "[http] ingest_token (or PROJECTOR_INGEST_TOKEN), or public_ingest = true to take events from anyone",
        );
    }
    if lacking.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "http.listen {addr} is reachable beyond this machine; set {}; or listen on 127.0.0.1",
        lacking.join("; set ")
    )
}

/// Let the request through if [`decide`] says so.
pub(crate) async fn check(
    State(s): State<Arc<ServeState>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refusal = match decide(&s.http, s.exposure(), request.uri().path(), authorization) {
        Ok(()) => return next.run(request).await,
        Err(r) => r,
    };
    let message = match refusal {
        Refusal::Missing(what) => {
            format!("this route needs the {what} token: send `Authorization: Bearer <token>`")
        }
        Refusal::Wrong(what) => format!("the token sent is not the {what} token"),
        Refusal::Unset(what) => format!(
            "this API is reachable beyond this machine and no {what} token is set: the route is closed"
        ),
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

    const ADMIN: &str = "admin-0123456789abcdef";
    const READ: &str = "read-0123456789abcdef";
    const INGEST: &str = "ingest-0123456789abcdef";

    fn guarded() -> HttpConfig {
        HttpConfig {
            admin_token: Some(ADMIN.into()),
            read_token: Some(READ.into()),
            ingest_token: Some(INGEST.into()),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn exposure_is_judged_by_the_listen_address() {
        for loopback in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080"] {
            let addr = loopback.parse().expect("addr");
            assert_eq!(Exposure::of(addr), Exposure::Loopback, "{loopback}");
        }
        for beyond in ["0.0.0.0:8080", "[::]:0", "10.0.0.5:8080", "192.168.1.2:80"] {
            let addr = beyond.parse().expect("addr");
            assert_eq!(Exposure::of(addr), Exposure::Beyond, "{beyond}");
        }
    }

    #[test]
    fn beyond_loopback_reads_and_ingest_without_their_tokens_are_refused() {
        let open = HttpConfig::default();
        for path in ["/v1/views/p/k", "/v1/events", "/v1/admin/plugins"] {
            assert_eq!(
                decide(&open, Exposure::Loopback, path, None),
                Ok(()),
                "{path}"
            );
        }
        assert_eq!(
            decide(&open, Exposure::Beyond, "/v1/views/p/k", None),
            Err(Refusal::Unset("read"))
        );
        assert_eq!(
            decide(&open, Exposure::Beyond, "/v1/events", None),
            Err(Refusal::Unset("ingest"))
        );
        assert_eq!(
            decide(&open, Exposure::Beyond, "/v1/admin/plugins", None),
            Err(Refusal::Unset("admin"))
        );
        assert_eq!(decide(&open, Exposure::Beyond, "/metrics", None), Ok(()));
        let public = HttpConfig {
            public_reads: true,
            public_ingest: true,
            ..HttpConfig::default()
        };
        assert_eq!(
            decide(&public, Exposure::Beyond, "/v1/views/p/k", None),
            Ok(())
        );
        assert_eq!(
            decide(&public, Exposure::Beyond, "/v1/events", None),
            Ok(())
        );
        // A token set guards its route wherever the API listens.
        let http = guarded();
        for exposure in [Exposure::Loopback, Exposure::Beyond] {
            assert_eq!(
                decide(&http, exposure, "/v1/events", None),
                Err(Refusal::Missing("ingest"))
            );
            let read = format!("Bearer {INGEST}");
            assert_eq!(
                decide(&http, exposure, "/v1/views/p/k", Some(&read)),
                Err(Refusal::Wrong("read"))
            );
        }
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let http = guarded();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} {READ}");
            assert_eq!(
                decide(&http, Exposure::Beyond, "/v1/views/p/k", Some(&value)),
                Ok(()),
                "{value}"
            );
        }
        for value in [READ.to_string(), format!("Basic {READ}"), "Bearer ".into()] {
            assert!(
                decide(&http, Exposure::Beyond, "/v1/views/p/k", Some(&value)).is_err(),
                "{value}"
            );
        }
        let admin = format!("bearer {ADMIN}");
        assert_eq!(
            decide(&http, Exposure::Beyond, "/v1/events", Some(&admin)),
            Ok(())
        );
    }

    #[test]
    fn tokens_shorter_than_sixteen_bytes_are_refused_naming_the_key() {
        assert!(guarded().check_tokens().is_ok());
        for (short, key) in [
            (
                HttpConfig {
                    admin_token: Some("s3cret".into()),
                    ..guarded()
                },
                "http.admin_token",
            ),
            (
                HttpConfig {
                    read_token: Some("x".repeat(15)),
                    ..guarded()
                },
                "http.read_token",
            ),
            (
                HttpConfig {
                    ingest_token: Some(" ".into()),
                    ..guarded()
                },
                "http.ingest_token",
            ),
        ] {
            let refused = short.check_tokens().expect_err("refused");
            assert!(refused.contains(key) && refused.contains("16"), "{refused}");
        }
        let refused = check_listen(
            &HttpConfig {
                read_token: Some("short".into()),
                ..guarded()
            },
            "127.0.0.1:0",
        )
        .expect_err("refused at start too");
        assert!(
            refused.to_string().contains("PROJECTOR_READ_TOKEN"),
            "{refused}"
        );
    }

    #[test]
    fn an_api_beyond_loopback_needs_every_token_or_public_routes() {
        let mut http = HttpConfig::default();
        assert!(check_listen(&http, "127.0.0.1:8080").is_ok());
        assert!(check_listen(&http, "[::1]:8080").is_ok());
        let refused = check_listen(&http, "0.0.0.0:8080")
            .expect_err("refused")
            .to_string();
        for key in [
            "admin_token",
            "PROJECTOR_ADMIN_TOKEN",
            "read_token",
            "public_reads",
        ] {
            assert!(refused.contains(key), "{key}: {refused}");
        }
        assert!(refused.contains("ingest_token") && refused.contains("public_ingest"));
        http.admin_token = Some(ADMIN.into());
        let refused = check_listen(&http, "0.0.0.0:8080")
            .expect_err("refused")
            .to_string();
        assert!(!refused.contains("admin_token") && refused.contains("read_token"));
        http.public_reads = true;
        http.ingest_token = Some(INGEST.into());
        assert!(check_listen(&http, "0.0.0.0:8080").is_ok());
        assert!(check_listen(&http, "[::]:8080").is_ok());
    }
}
