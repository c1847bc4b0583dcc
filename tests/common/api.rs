//! The one HTTP client of the end-to-end tests: a runtime's API at a base
//! URL, asked with blocking requests whose answers come back as a status
//! and a JSON body. [`crate::Served`] (a runtime in the test's process) and
//! [`crate::process::Projector`] (`projector run` in its own) both read
//! their API through it. It knows nothing of how the runtime was started.

use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// A runtime's API at `base` (`http://127.0.0.1:port`).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: Client,
}

/// An answer in full: its status, headers and body (JSON, or the text as
/// a JSON string when it is not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    fn of(response: Response) -> reqwest::Result<Answer> {
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

impl Api {
    /// The API at `base`, with the client's default timeouts.
    pub fn new(base: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            client: Client::new(),
        }
    }

    /// The API at `base`, each request given up after `timeout`.
    pub fn with_timeout(base: impl Into<String>, timeout: Duration) -> Api {
        Api {
            base: base.into(),
            client: Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` in full, or the error when no answer came.
    pub fn try_get(&self, path: &str) -> reqwest::Result<Answer> {
        Answer::of(self.client.get(self.url(path)).send()?)
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let a = self
            .try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (a.status, a.body)
    }

    /// GET `path`: the body as text, or the error when none came.
    pub fn try_get_text(&self, path: &str) -> reqwest::Result<String> {
        self.client.get(self.url(path)).send()?.text()
    }

    /// GET `path`: the body as text.
    pub fn get_text(&self, path: &str) -> String {
        self.try_get_text(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `method path` with a JSON `body`: status and body.
    pub fn send(&self, method: Method, path: &str, body: &str) -> (u16, Value) {
        let request = self
            .client
            .request(method.clone(), self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        Self::answer(request, &method, path)
    }

    /// POST `body` (NDJSON, keys one a line, a module's bytes...) to
    /// `path`: status and body.
    pub fn post(&self, path: &str, body: impl Into<Body>) -> (u16, Value) {
        let request = self.client.post(self.url(path)).body(body);
        Self::answer(request, &Method::POST, path)
    }

    fn answer(request: RequestBuilder, method: &Method, path: &str) -> (u16, Value) {
        let a = request
            .send()
            .and_then(Answer::of)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (a.status, a.body)
    }

    /// Ingest events (NDJSON); the position token.
    pub fn ingest(&self, events: &[String]) -> String {
        let (status, body) = self.send(Method::POST, "/v1/events", &events.join("\n"));
        assert_eq!(status, 200, "ingest: {body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// Set a plugin's rollout.
    pub fn rollout(&self, plugin: &str, rollout: Value) {
        let (status, body) = self.send(
            Method::PUT,
            &format!("/v1/admin/rollout/{plugin}"),
            &rollout.to_string(),
        );
        assert_eq!(status, 200, "rollout: {body}");
    }

    /// A sample of a metric from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.get_text("/metrics");
        let prefix = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }
}
