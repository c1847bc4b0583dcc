//! Source services for the enrichment tests: each a real HTTP server on
//! `127.0.0.1:0` answering `GET /<service>/<asset>` with the entity it
//! holds, and `POST /batch` (`{"paths": [...]}`) with the answers of many
//! (the batch endpoint of `[services.NAME] batch_path`), able to go down,
//! answer slowly (once per request, however many paths it holds), or
//! answer from a lagging replica (older versions first).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// Asset → answers, oldest first: each request takes the front one
    /// until a single one is left (a replica catching up).
    entities: Mutex<HashMap<String, VecDeque<Value>>>,
    down: AtomicBool,
    delay_ms: AtomicU64,
    requests: AtomicU64,
}

/// One source service.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Count a request and wait out the delay; whether the service is up.
async fn arrive(s: &Shared) -> bool {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let delay = s.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    !s.down.load(Ordering::Relaxed)
}

/// `asset`'s current answer (the front one of a lagging replica's).
fn answer(s: &Shared, asset: &str) -> Option<Value> {
    let mut entities = s.entities.lock().expect("entities");
    match entities.get_mut(asset) {
        Some(answers) if answers.len() > 1 => answers.pop_front(),
        Some(answers) => answers.front().cloned(),
        None => None,
    }
}

async fn entity(
    State(s): State<Arc<Shared>>,
    Path((_, asset)): Path<(String, String)>,
) -> Response {
    if !arrive(&s).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    match answer(&s, &asset) {
        Some(entity) => Json(entity).into_response(),
        None => (StatusCode::NOT_FOUND, "no such entity").into_response(),
    }
}

/// The batch endpoint: `{"paths": ["/<service>/<asset>", ...]}` answered
/// with `{"answers": [{"status", "body"}, ...]}` in order.
async fn batch(State(s): State<Arc<Shared>>, Json(asked): Json<Value>) -> Response {
    if !arrive(&s).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let paths = asked["paths"].as_array().cloned().unwrap_or_default();
    let answers: Vec<Value> = paths
        .iter()
        .map(|p| {
            let asset = p.as_str().and_then(|p| p.rsplit('/').next()).unwrap_or("");
            match answer(&s, asset) {
                Some(entity) => serde_json::json!({"status": 200, "body": entity}),
                None => serde_json::json!({"status": 404}),
            }
        })
        .collect();
    Json(serde_json::json!({ "answers": answers })).into_response()
}

impl Service {
    /// Set `asset`'s answers: older replicas first, the current one last.
    pub fn set(&self, asset: &str, answers: Vec<Value>) {
        self.shared
            .entities
            .lock()
            .expect("entities")
            .insert(asset.to_string(), answers.into());
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

/// Several services on one runtime.
pub struct Services {
    pub list: Vec<Service>,
    _runtime: tokio::runtime::Runtime,
}

impl Services {
    pub fn start(names: &[&str]) -> Services {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut list = Vec::new();
        for name in names {
            let shared = Arc::new(Shared::default());
            let app = Router::new()
                .route("/{service}/{asset}", get(entity))
                .route("/batch", post(batch))
                .with_state(shared.clone());
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind service");
            let addr = listener.local_addr().expect("service addr");
            runtime.spawn(async move { axum::serve(listener, app).await });
            list.push(Service {
                name: name.to_string(),
                addr,
                shared,
            });
        }
        Services {
            list,
            _runtime: runtime,
        }
    }

    pub fn get(&self, name: &str) -> &Service {
        self.list
            .iter()
            .find(|s| s.name == name)
            .expect("a started service")
    }

    /// `[services.<name>]` tables for every service, with `extra` TOML
    /// lines for each (by name).
    pub fn config(&self, extra: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for s in &self.list {
            out.push_str(&format!(
                "[services.{}]\nurl = \"http://{}\"\ntimeout_ms = 300\nretries = 1\nbackoff_ms = 5\n",
                s.name, s.addr
            ));
            for (name, lines) in extra {
                if *name == s.name {
                    out.push_str(lines);
                    out.push('\n');
                }
            }
        }
        out
    }
}
