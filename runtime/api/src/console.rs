//! The operator console at `/console`: a page and its scripts, built into
//! the binary from `runtime/api/console/` (no CDN, no Node at run time).
//! The page holds no data: it reads and acts through the admin API with
//! the token the operator enters, so it needs no route or rights of its
//! own, and every refusal is the API's.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

/// What the console's page may load and call: only this server, no
/// inline script, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// `GET /console`: the page.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    asset("index.html", &headers)
}

/// `GET /console/` sends the browser to `/console`, so that relative
/// asset paths resolve one way.
pub(crate) async fn slash() -> Redirect {
    Redirect::permanent("/console")
}

/// `GET /console/assets/{*file}`: a script, a style sheet or an image.
pub(crate) async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    if file == "index.html" {
        return not_found();
    }
    asset(&file, &headers)
}

fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some(found) = Assets::get(name) else {
        return not_found();
    };
    let etag = format!("\"{}\"", hex(&found.metadata.sha256_hash()[..12]));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        found.data.into_owned().into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(found.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated on every load: a new binary serves new scripts at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn not_found() -> Response {
    crate::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file").into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: Response) -> (StatusCode, HeaderMap) {
        (r.status(), r.headers().clone())
    }

    #[test]
    fn the_page_and_its_scripts_are_built_in_with_their_types_and_policy() {
        let (status, h) = body(asset("index.html", &HeaderMap::new()));
        assert_eq!(status, StatusCode::OK);
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/html"));
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("script-src 'self'"));
        for script in ["app.js", "vendor/htm-preact-3.1.1.mjs"] {
            let (status, h) = body(asset(script, &HeaderMap::new()));
            assert_eq!(status, StatusCode::OK, "{script}");
            assert!(
                h[header::CONTENT_TYPE]
                    .to_str()
                    .expect("ascii")
                    .contains("javascript"),
                "{script}: {:?}",
                h[header::CONTENT_TYPE]
            );
        }
        let (status, _) = body(asset("style.css", &HeaderMap::new()));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body(asset("nope.js", &HeaderMap::new())).0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn an_unchanged_asset_is_answered_not_modified() {
        let (_, h) = body(asset("app.js", &HeaderMap::new()));
        let mut ask = HeaderMap::new();
        ask.insert(header::IF_NONE_MATCH, h[header::ETAG].clone());
        assert_eq!(body(asset("app.js", &ask)).0, StatusCode::NOT_MODIFIED);
    }
}
