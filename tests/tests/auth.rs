//! Tokens: every admin route of `openapi.json` answers 401 without the
//! admin token (so a new route cannot be left open), reads and ingest take
//! their own tokens when set (the `Bearer` scheme in any case), the CLI
//! sends the admin token, an API beyond loopback is refused at start
//! unless every guarded route has its token or is declared public, and a
//! short token is refused at load. Traffic goes to loopback only: an API
//! bound to `0.0.0.0` is reached through 127.0.0.1.

use projector_tests::{projector_bin, write_config, Launch, Served};
use reqwest::Method;
use serde_json::Value;

const ADMIN: &str = "admin-s3cret-0123456789";
const READ: &str = "read-s3cret-0123456789";
const INGEST: &str = "ingest-s3cret-0123456789";

fn served() -> Served {
    // Keys first: they land in the `[http]` table `Served` opens last.
    Served::start(
        &["inbox-unread"],
        &format!(
            "admin_token = \"{ADMIN}\"\nread_token = \"{READ}\"\ningest_token = \"{INGEST}\"\n"
        ),
    )
}

/// The status of `method path` with `token` (if any) as its bearer.
fn status(s: &Served, method: Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = s
        .client
        .request(method, format!("{}{path}", s.base))
        .body("{}");
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().expect("request");
    let code = response.status().as_u16();
    let body = serde_json::from_str(&response.text().expect("body")).unwrap_or(Value::Null);
    (code, body)
}

#[test]
fn every_admin_route_of_the_openapi_document_needs_the_admin_token() {
    let s = served();
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(projector_tests::root().join("runtime/api/openapi.json"))
            .expect("openapi.json"),
    )
    .expect("json");
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/admin/") {
            continue;
        }
        let concrete = path.replace("{plugin}", "inbox-unread");
        for method in ops.as_object().expect("ops").keys() {
            let Some(method) = projector_tests::http_method(method) else {
                continue;
            };
            for token in [None, Some("wrong"), Some(READ), Some(INGEST)] {
                let (code, body) = status(&s, method.clone(), &concrete, token);
                assert_eq!(code, 401, "{method} {concrete} with {token:?}: {body}");
                assert_eq!(body["error"], "unauthorized");
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} admin operations");
    // With the token: through to the route (whatever it answers then).
    let (code, body) = status(&s, Method::GET, "/v1/admin/plugins", Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let (code, _) = status(
        &s,
        Method::GET,
        "/v1/admin/plugins/inbox-unread/audit",
        Some(ADMIN),
    );
    assert_eq!(code, 200);
}

#[test]
fn reads_and_ingest_take_their_own_token_or_the_admin_one() {
    let s = served();
    let event = r#"{"id":"1","type":"T","source":"s","key":"k","version":1,"payload":{}}"#;
    let post = |token: Option<&str>| {
        let mut r = s.client.post(format!("{}/v1/events", s.base)).body(event);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().expect("post").status().as_u16()
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some(READ)), 401);
    assert_eq!(post(Some(INGEST)), 200);
    assert_eq!(post(Some(ADMIN)), 200);
    let read = "/v1/views/inbox-unread/u1:s1";
    assert_eq!(status(&s, Method::GET, read, None).0, 401);
    assert_eq!(status(&s, Method::GET, read, Some(INGEST)).0, 401);
    assert_ne!(status(&s, Method::GET, read, Some(READ)).0, 401);
    assert_ne!(status(&s, Method::GET, read, Some(ADMIN)).0, 401);
    // Health and metrics stay open.
    assert_eq!(status(&s, Method::GET, "/healthz", None).0, 200);
    assert_eq!(status(&s, Method::GET, "/metrics", None).0, 200);
    let response = s
        .client
        .get(format!("{}/v1/admin/plugins", s.base))
        .send()
        .expect("get");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"projector\""
    );
}

#[test]
fn the_cli_sends_the_admin_token_and_beyond_loopback_one_is_required() {
    let s = served();
    let dir = tempfile::tempdir().expect("tempdir");
    let with = dir.path().join("with.toml");
    std::fs::write(&with, format!("[http]\nadmin_token = \"{ADMIN}\"\n")).expect("config");
    let without = dir.path().join("without.toml");
    std::fs::write(&without, "").expect("config");
    let cli = |config: &std::path::Path, env: Option<&str>| {
        let mut c = std::process::Command::new(projector_bin());
        c.arg("--config")
            .arg(config)
            .args(["plugin", "list", "--api", &s.base])
            .env_remove("PROJECTOR_ADMIN_TOKEN");
        if let Some(t) = env {
            c.env("PROJECTOR_ADMIN_TOKEN", t);
        }
        c.output().expect("projector plugin list")
    };
    let ok = cli(&with, None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = cli(&without, None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let from_env = cli(&without, Some(ADMIN));
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );

    // `run` on a non-loopback address with no admin token: refused, saying how.
    let data = tempfile::tempdir().expect("tempdir");
    projector_tests::plugins_dir(data.path(), &["inbox-unread"]);
    let open = data.path().join("open.toml");
    std::fs::write(
        &open,
        "data_dir = \"data\"\nplugins_dir = \"plugins\"\n[http]\nlisten = \"0.0.0.0:0\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(projector_bin())
        .arg("--config")
        .arg(&open)
        .args(["run", "--exit-when-idle"])
        .env_remove("PROJECTOR_ADMIN_TOKEN")
        .output()
        .expect("projector run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin_token") && err.contains("PROJECTOR_ADMIN_TOKEN"),
        "{err}"
    );
}

const EVENT: &str = r#"{"id":"1","type":"T","source":"s","key":"k","version":1,"payload":{}}"#;

/// `projector run` in a fresh directory with `http` as its `[http]` table
/// (besides `listen = "0.0.0.0:0"`): its exit when it refused to start.
fn run_beyond_loopback(http: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &["inbox-unread"],
        &format!("[http]\nlisten = \"0.0.0.0:0\"\n{http}"),
    );
    std::process::Command::new(projector_bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--exit-when-idle"])
        .env_remove("PROJECTOR_ADMIN_TOKEN")
        .env_remove("PROJECTOR_READ_TOKEN")
        .env_remove("PROJECTOR_INGEST_TOKEN")
        .output()
        .expect("projector run")
}

/// The status of `method path` on an API bound to `0.0.0.0`, sent to
/// 127.0.0.1, with `authorization` as the header if any.
fn beyond_status(announced: &str, method: Method, path: &str, authorization: Option<&str>) -> u16 {
    let base = announced.replace("0.0.0.0", "127.0.0.1");
    assert!(base.starts_with("http://127.0.0.1:"), "{announced}");
    let mut request = reqwest::blocking::Client::new()
        .request(method, format!("{base}{path}"))
        .body(EVENT);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    request.send().expect("request").status().as_u16()
}

#[test]
fn beyond_loopback_reads_and_ingest_need_their_tokens_unless_public() {
    // Without the read and ingest tokens: refused, naming the keys.
    let out = run_beyond_loopback(&format!("admin_token = \"{ADMIN}\"\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "read_token",
        "public_reads",
        "ingest_token",
        "public_ingest",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(!err.contains("admin_token"), "{err}");

    // With every token: each route answers 401 without its own.
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &["inbox-unread"],
        &format!(
            "[http]\nlisten = \"0.0.0.0:0\"\nadmin_token = \"{ADMIN}\"\n\
             read_token = \"{READ}\"\ningest_token = \"{INGEST}\"\n"
        ),
    );
    let guarded = Launch::in_dir(dir.path(), &["run"]).start();
    let at = guarded.announced().to_string();
    let read = "/v1/views/inbox-unread/u1:s1";
    assert_eq!(beyond_status(&at, Method::POST, "/v1/events", None), 401);
    assert_eq!(beyond_status(&at, Method::GET, read, None), 401);
    let ingest = format!("bearer {INGEST}");
    assert_eq!(
        beyond_status(&at, Method::POST, "/v1/events", Some(&ingest)),
        200
    );
    let reader = format!("BEARER {READ}");
    assert_ne!(beyond_status(&at, Method::GET, read, Some(&reader)), 401);
    guarded.stop();

    // Declared public: open with no token, the admin routes still guarded.
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &["inbox-unread"],
        &format!(
            "[http]\nlisten = \"0.0.0.0:0\"\nadmin_token = \"{ADMIN}\"\n\
             public_reads = true\npublic_ingest = true\n"
        ),
    );
    let public = Launch::in_dir(dir.path(), &["run"]).start();
    let at = public.announced().to_string();
    assert_eq!(beyond_status(&at, Method::POST, "/v1/events", None), 200);
    assert_ne!(beyond_status(&at, Method::GET, read, None), 401);
    assert_eq!(
        beyond_status(&at, Method::GET, "/v1/admin/plugins", None),
        401
    );
    public.stop();
}

#[test]
fn a_token_shorter_than_sixteen_bytes_is_refused_naming_its_key() {
    let out = run_beyond_loopback("admin_token = \"s3cret\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.admin_token") && err.contains("16"),
        "{err}"
    );
}

#[test]
fn the_bearer_scheme_is_taken_in_any_case() {
    let s = served();
    let read = "/v1/views/inbox-unread/u1:s1";
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = s
            .client
            .get(format!("{}{read}", s.base))
            .header("authorization", format!("{scheme} {READ}"))
            .send()
            .expect("get");
        assert_ne!(response.status().as_u16(), 401, "{scheme}");
    }
    let response = s
        .client
        .get(format!("{}{read}", s.base))
        .header("authorization", format!("Basic {READ}"))
        .send()
        .expect("get");
    assert_eq!(response.status().as_u16(), 401);
}
