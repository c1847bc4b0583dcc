//! Tokens: every admin route of `openapi.json` answers 401 without the
//! admin token (so a new route cannot be left open), reads and ingest take
//! their own tokens when set, the CLI sends the admin token, and an API
//! beyond loopback with no admin token is refused at start.

use projector_tests::{projector_bin, Served};
use reqwest::Method;
use serde_json::Value;

const ADMIN: &str = "admin-s3cret";
const READ: &str = "read-s3cret";
const INGEST: &str = "ingest-s3cret";

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
