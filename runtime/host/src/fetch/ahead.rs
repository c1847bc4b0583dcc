//! Fetches named ahead (the WIT `prefetch`, seed 002 at the speed of its
//! services). Before a batch is applied, the plugin names the answers its
//! events will fetch; they are fetched here at once: up to a service's
//! `max_in_flight` requests at a time, or, for a service that declares a
//! batch endpoint (`batch_path`), up to `batch_max` paths per request.
//! A fetch during `apply` for a path fetched ahead is answered from
//! [`Ahead`] without waiting.
//!
//! Why a step before `apply` rather than an async `fetch`: the answers of
//! a whole batch are known before any of its events is folded, so they
//! can go to a batch endpoint as one request; each key's events still
//! fold in order on one instance; and plugins stay synchronous code in
//! any language with a component toolchain (wasmtime 48's async component
//! model would need every guest SDK to be async, and one guest instance
//! would still wait on each answer in turn).
//!
//! A batch endpoint is asked `POST {url}{batch_path}` with
//! `{"paths": ["/billing/a1", ...]}` and answers 200 with
//! `{"answers": [{"status": 200, "body": {...}}, ...]}`: one answer per
//! path, in order, each with the status and the JSON body a `GET` of that
//! path would have given (`body` absent or `null`: empty).
//!
//! What is fetched ahead goes through the same cache, breaker, retries and
//! counts as a plugin's own fetch, and a failure is kept like an answer:
//! `apply`'s fetch of that path fails as it would have, without asking
//! the failing service again (a stale cached answer stands in where
//! `stale_ms` allows, as for any fetch). Needs left out (not allowed, a
//! bad path, an open breaker) are fetched by `apply` itself.

use super::{check_path, Fetcher, Service};
use projector_common::sync::Recover;
use projector_guest::{FetchError, Fetched};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a fetch ahead got: an answer, or why there was none.
pub type Answer = Result<Fetched, FetchError>;

/// One need's answer: on its way, or come.
enum Slot {
    Pending,
    Done(Answer),
}

/// Answers fetched ahead for one batch, by service and path. The fetches
/// run while the batch is folded: a fetch of a path still on its way
/// waits for that answer (and no other) instead of asking again. An
/// answer that led to a transient failure is forgotten, so the `apply`
/// tried again asks the service (a lagging replica is asked again).
#[derive(Default)]
pub struct Ahead {
    slots: Mutex<HashMap<String, HashMap<String, Slot>>>,
    came: Condvar,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead").field("named", &self.len()).finish()
    }
}

impl Ahead {
    /// What the fetch ahead of `path` from `service` got, waiting for it
    /// while it is on its way: `None` when it was not fetched ahead (or
    /// was forgotten).
    pub fn get(&self, service: &str, path: &str) -> Option<Answer> {
        let mut slots = self.slots.lock().recover();
        loop {
            match slots.get(service)?.get(path)? {
                Slot::Done(answer) => return Some(answer.clone()),
                Slot::Pending => slots = self.came.wait(slots).recover(),
            }
        }
    }

    /// Forget the answer of `path` from `service`: later fetches ask.
    pub fn forget(&self, service: &str, path: &str) {
        if let Some(of) = self.slots.lock().recover().get_mut(service) {
            of.remove(path);
        }
    }

    /// How many needs it was given (come or on their way).
    pub fn len(&self) -> usize {
        self.slots.lock().recover().values().map(HashMap::len).sum()
    }

    /// Whether it was given none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expect(&self, service: &str, path: &str) {
        let mut slots = self.slots.lock().recover();
        let of = slots.entry(service.to_string()).or_default();
        of.insert(path.to_string(), Slot::Pending);
    }

    fn settle(&self, service: &str, answers: Vec<(String, Answer)>) {
        let mut slots = self.slots.lock().recover();
        let of = slots.entry(service.to_string()).or_default();
        for (path, answer) in answers {
            of.insert(path, Slot::Done(answer));
        }
        drop(slots);
        self.came.notify_all();
    }
}

/// One request to make ahead: a path, or a batch of them.
enum Job {
    One(String),
    Many(Vec<String>),
}

impl Job {
    fn paths(&self) -> &[String] {
        match self {
            Job::One(path) => std::slice::from_ref(path),
            Job::Many(paths) => paths,
        }
    }
}

/// One service's requests ahead, taken in turn by its fetching threads.
struct Plan {
    service: String,
    jobs: Vec<Job>,
    next: AtomicUsize,
}

impl Fetcher {
    /// Start fetching `needs` (service, path) ahead for a plugin allowed
    /// `allowed`, in the order named, and return at once: the answers
    /// land in the [`Ahead`] as they come. Left out (fetched by `apply`
    /// itself if it asks): needs of services not allowed or whose breaker
    /// is open, bad paths, answers the cache holds within their time to
    /// live, and needs `skip` says are answered elsewhere (a replay's
    /// recorded answers).
    pub fn prefetch(
        self: &Arc<Self>,
        allowed: &[String],
        needs: impl IntoIterator<Item = (String, String)>,
        skip: impl Fn(&str, &str) -> bool,
    ) -> Arc<Ahead> {
        let ahead = Arc::new(Ahead::default());
        let mut by_service: BTreeMap<&str, (&Service, Vec<String>)> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (service, path) in needs {
            let Some((name, s)) = self
                .services
                .get_key_value(service.as_str())
                .filter(|_| allowed.contains(&service))
            else {
                continue;
            };
            if check_path(&path).is_err() || s.stats.breaker_open.load(Ordering::Relaxed) {
                continue;
            }
            if s.cached_within_ttl(&path) || skip(name, &path) {
                continue;
            }
            if seen.insert((name.as_str(), path.clone())) {
                ahead.expect(name, &path);
                let paths = &mut by_service.entry(name.as_str()).or_insert((s, Vec::new())).1;
                paths.push(path);
            }
        }
        for (name, (s, paths)) in by_service {
            let jobs: Vec<Job> = match &s.config.batch_path {
                Some(_) => paths
                    .chunks(s.config.batch_max.max(1))
                    .map(|c| Job::Many(c.to_vec()))
                    .collect(),
                None => paths.into_iter().map(Job::One).collect(),
            };
            let workers = s.config.max_in_flight.clamp(1, jobs.len().max(1));
            let plan = Arc::new(Plan {
                service: name.to_string(),
                jobs,
                next: AtomicUsize::new(0),
            });
            for _ in 0..workers {
                let (fetcher, mine, theirs) = (self.clone(), plan.clone(), ahead.clone());
                let permitted = allowed.to_vec();
                let task = Box::new(move || fetcher.work(&permitted, &mine, &theirs));
                if let Err(e) = s.lanes.run(task) {
                    // No lane runs: `apply` must not wait for answers
                    // nobody fetches, so the jobs are done here.
                    tracing::warn!("prefetch thread: {e}");
                    self.work(allowed, &plan, &ahead);
                }
            }
        }
        ahead
    }

    /// Take `plan`'s jobs in turn until none is left, settling each.
    fn work(&self, allowed: &[String], plan: &Plan, ahead: &Ahead) {
        let Some(s) = self.services.get(&plan.service) else {
            return;
        };
        while let Some(job) = plan.jobs.get(plan.next.fetch_add(1, Ordering::Relaxed)) {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                Job::One(path) => {
                    vec![(
                        path.clone(),
                        self.fetch(allowed, &plan.service, path, false),
                    )]
                }
                Job::Many(paths) => s.ask_many(paths),
            }));
            // A panic must not leave `apply` waiting for its answers.
            let answers = run.unwrap_or_else(|_| {
                let why = || FetchError::Unavailable("fetching ahead failed".into());
                job.paths()
                    .iter()
                    .map(|p| (p.clone(), Err(why())))
                    .collect()
            });
            let got = answers.iter().filter(|(_, a)| a.is_ok()).count();
            s.stats.prefetched.fetch_add(got as u64, Ordering::Relaxed);
            ahead.settle(&plan.service, answers);
        }
    }
}

/// A batch endpoint's answer.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    answers: Vec<OneAnswer>,
}

#[derive(serde::Deserialize)]
struct OneAnswer {
    status: u16,
    /// Kept as the service wrote it: the plugin gets its bytes.
    #[serde(default)]
    body: Option<Box<serde_json::value::RawValue>>,
}

impl Service {
    /// Whether the cache answers `path` without asking the service.
    fn cached_within_ttl(&self, path: &str) -> bool {
        let ttl = Duration::from_millis(self.config.cache_ttl_ms);
        !ttl.is_zero()
            && self
                .cache
                .lock()
                .recover()
                .get(path)
                .is_some_and(|c| c.at.elapsed() < ttl)
    }

    /// `paths` in one request to the batch endpoint (retries included),
    /// counted like fetches and told to the breaker. When it fails, each
    /// path gets the error (or a stale cached answer, where allowed).
    fn ask_many(&self, paths: &[String]) -> Vec<(String, Answer)> {
        let n = paths.len() as u64;
        self.stats.fetches.fetch_add(n, Ordering::Relaxed);
        let answer = match self.refused_for() {
            Some(left) => {
                self.stats.refused.fetch_add(n, Ordering::Relaxed);
                Err(self.refusal(left))
            }
            None => {
                self.stats.entered(n as i64);
                let answer = self.request_many(paths);
                self.stats.in_flight.fetch_sub(n as i64, Ordering::Relaxed);
                self.tell_breaker(answer.as_ref().map(|_| ()));
                answer
            }
        };
        match answer {
            Ok(answers) => {
                self.stats.batched.fetch_add(n, Ordering::Relaxed);
                for (path, answer) in &answers {
                    if let Ok(fetched) = answer {
                        self.keep(path, fetched);
                    }
                }
                answers
            }
            Err(e) => {
                tracing::debug!(url = self.base, "batch fetch failed: {e:?}");
                paths
                    .iter()
                    .map(|p| (p.clone(), self.stale_or(p, e.clone())))
                    .collect()
            }
        }
    }

    fn request_many(&self, paths: &[String]) -> Result<Vec<(String, Answer)>, FetchError> {
        let route = self.config.batch_path.as_deref().unwrap_or_default();
        let url = format!("{}{route}", self.base);
        let body = serde_json::json!({ "paths": paths }).to_string();
        self.retrying(|| self.attempt_many(&url, &body, paths))
    }

    fn attempt_many(
        &self,
        url: &str,
        body: &str,
        paths: &[String],
    ) -> Result<Vec<(String, Answer)>, FetchError> {
        let started = Instant::now();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self
            .agent
            .post(url)
            .set("content-type", "application/json")
            .send_string(body);
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                self.took(started);
                return Err(FetchError::Unavailable(format!("{url} answered {code}")));
            }
            Err(ureq::Error::Transport(t)) => {
                self.took(started);
                return Err(self.transport_error(url, started, &t.to_string()));
            }
        };
        let limit = self
            .config
            .max_response_bytes
            .saturating_mul(paths.len() as u64);
        let bytes = self.read_body(response, limit, url, started)?;
        let answer: BatchAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Unavailable(format!("{url}: not a batch answer: {e}")))?;
        if answer.answers.len() != paths.len() {
            return Err(FetchError::Unavailable(format!(
                "{url}: {} answers for {} paths",
                answer.answers.len(),
                paths.len()
            )));
        }
        Ok(paths
            .iter()
            .zip(answer.answers)
            .map(|(path, a)| {
                if a.status >= 500 {
                    let e = FetchError::Unavailable(format!("{url}: {path} answered {}", a.status));
                    return (path.clone(), Err(e));
                }
                let body = match a.body {
                    Some(raw) if raw.get() != "null" => raw.get().as_bytes().to_vec(),
                    _ => Vec::new(),
                };
                let fetched = Fetched {
                    status: a.status,
                    body,
                    stale: false,
                };
                (path.clone(), Ok(fetched))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::ServiceConfig;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A batch endpoint on loopback that answers each path with its name,
    /// `/gone` with 404; it counts the requests it got.
    fn batch_service() -> (String, std::sync::Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::Relaxed);
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("header");
                    if line.trim().is_empty() {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().expect("length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                let asked: serde_json::Value = serde_json::from_slice(&body).expect("json");
                let answers: Vec<serde_json::Value> = asked["paths"]
                    .as_array()
                    .expect("paths")
                    .iter()
                    .map(|p| match p.as_str() {
                        Some("/gone") => serde_json::json!({"status": 404}),
                        _ => serde_json::json!({"status": 200, "body": {"path": p}}),
                    })
                    .collect();
                let text = serde_json::json!({ "answers": answers }).to_string();
                let mut out = stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (format!("http://{addr}"), requests)
    }

    fn config(url: String) -> ServiceConfig {
        serde_json::from_value(serde_json::json!({
            "url": url, "batch_path": "/batch", "batch_max": 2
        }))
        .expect("config")
    }

    #[test]
    fn a_batch_endpoint_answers_many_paths_per_request() {
        let (url, requests) = batch_service();
        let mut services = BTreeMap::new();
        services.insert("billing".to_string(), config(url));
        let f = Arc::new(Fetcher::new(&services).expect("valid"));
        let allowed = vec!["billing".to_string()];
        let needs = ["/a", "/b", "/c", "/gone", "/a", "../x"]
            .iter()
            .map(|p| ("billing".to_string(), p.to_string()))
            .chain([("domains".to_string(), "/d".to_string())]);
        let ahead = f.prefetch(&allowed, needs, |_, _| false);
        assert_eq!(
            ahead.len(),
            4,
            "a, b, c and gone; the bad path and the unlisted service left out"
        );
        let answer = |path| ahead.get("billing", path).expect("fetched ahead");
        assert_eq!(answer("/b").expect("ok").body, br#"{"path":"/b"}"#.to_vec());
        let gone = answer("/gone").expect("a 404 is an answer");
        assert_eq!((gone.status, gone.body.len()), (404, 0));
        assert_eq!(ahead.get("billing", "/x"), None, "not named");
        assert!(
            ahead.get("billing", "/b").is_some(),
            "an answer serves each fetch"
        );
        ahead.forget("billing", "/b");
        assert_eq!(ahead.get("billing", "/b"), None, "forgotten");
        assert_eq!(
            requests.load(Ordering::Relaxed),
            2,
            "4 paths, 2 per request"
        );
        let stats = &f.stats()[0].1;
        assert_eq!(stats.batched.load(Ordering::Relaxed), 4);
        assert_eq!(stats.prefetched.load(Ordering::Relaxed), 4);
        let skipped = f.prefetch(&allowed, [("billing".into(), "/a".into())], |_, p| {
            p == "/a"
        });
        assert!(skipped.is_empty(), "what `skip` answers is not fetched");
    }
}
