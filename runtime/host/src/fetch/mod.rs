//! Enrichment: the host side of the WIT `fetch` import (seed 002).
//!
//! A plugin names a service and a path; the config maps service names to
//! base URLs, and a plugin reaches only the services on its allow-list.
//! Anything else is refused with `not-allowed` before a connection is
//! made. Each fetch has a timeout, bounded retries with backoff (on
//! refused connections, timeouts and 5xx answers), and a cap on the
//! answer's size. A read-through cache per service keeps answers for
//! `cache_ttl_ms`; past that, while the service fails, an answer up to
//! `stale_ms` older is served marked stale (seed 002's always-refreshed
//! in-memory cache, seed 003's resilient cache).
//!
//! ```toml
//! [services.billing]
//! url = "http://billing.internal:8080"
//! timeout_ms = 500
//! retries = 2
//! backoff_ms = 20
//! max_response_bytes = 1048576
//! cache_ttl_ms = 0       # 0: every fetch asks the service
//! stale_ms = 0           # how long past its TTL an answer may stand in
//! breaker_failures = 5   # fetches failed in a row that open its breaker (0: never)
//! breaker_open_ms = 1000 # how long it stays open before one fetch probes it
//! max_in_flight = 64     # requests fetched ahead at once
//! batch_path = "/billing/batch"  # a batch endpoint, if it has one (see ahead)
//! batch_max = 100        # paths per batch request
//!
//! [plugins.subscriptions]
//! services = ["billing", "domains"]   # the allow-list
//! ```
//!
//! Calls are blocking (plugins run on the engine's threads); the time a
//! guest spends waiting on a fetch does not count against its deadline.
//! A plugin that names its fetches ahead has a batch's answers fetched at
//! once before the batch is applied ([`ahead`]).
//! Identical fetches in flight at once go once ([`crate::coalesce`]); a
//! service that keeps failing is not asked for a while
//! ([`crate::service_breaker`]).
//! A plugin that asks for a fresh answer (the one it got was older than
//! the event announcing it, seed 002) bypasses the cache.
//!
//! Its answers are the guest SDK's [`Fetched`] and [`FetchError`]: the
//! types a plugin receives, one definition on both sides.

use crate::backoff::Backoff;
use crate::coalesce::Coalesce;
use crate::service_breaker::{Allow, Breaker};
use projector_common::sync::Recover;
use projector_guest::{FetchError, Fetched};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod ahead;
mod lanes;
mod stats;
pub use ahead::Ahead;
pub use stats::{ServiceStats, LATENCY_BUCKETS_MICROS};

/// `[services.NAME]`: a service plugins may fetch from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Base URL the plugins' paths are joined to (`http://` or `https://`).
    pub url: String,
    /// Per-attempt timeout, connect included, in ms (default 500).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a refused connection, a timeout or a 5xx answer (default 2).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before the first retry, in ms; doubled after each attempt (default 20).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Largest answer body accepted, in bytes (default 1 MiB).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// How long a cached answer is served without asking the service, in ms (0: every fetch asks).
    #[serde(default)]
    pub cache_ttl_ms: u64,
    /// How long past its TTL a cached answer may stand in while the service fails, in ms.
    #[serde(default)]
    pub stale_ms: u64,
    /// Fetches failed in a row (after their retries) that open the
    /// service's breaker (default 5; 0: never).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an opened breaker refuses fetches before one probes the
    /// service, in ms (default 1000; doubled after a failed probe, up to 30 s).
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Requests to this service a batch's fetches named ahead may have in
    /// flight at once (default 32).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The service's batch endpoint, if it has one: fetches named ahead
    /// go to it `batch_max` paths per request (see [`ahead`]).
    #[serde(default)]
    pub batch_path: Option<String>,
    /// Paths per request to the batch endpoint (default 100).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
}

fn default_max_in_flight() -> usize {
    64
}
fn default_batch_max() -> usize {
    100
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    500
}
fn default_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u64 {
    20
}
fn default_max_response_bytes() -> u64 {
    1 << 20
}

impl ServiceConfig {
    /// Check the values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(format!(
                "url: expected http:// or https://, got {:?}",
                self.url
            ));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms: expected at least 1, got 0".into());
        }
        if self.max_response_bytes == 0 {
            return Err("max_response_bytes: expected at least 1, got 0".into());
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight: expected at least 1, got 0".into());
        }
        if self.batch_max == 0 {
            return Err("batch_max: expected at least 1, got 0".into());
        }
        if let Some(path) = &self.batch_path {
            check_path(path).map_err(|why| format!("batch_path: {why}"))?;
        }
        Ok(())
    }
}

struct Cached {
    at: Instant,
    fetched: Fetched,
}

struct Service {
    base: String,
    config: ServiceConfig,
    agent: ureq::Agent,
    cache: Mutex<HashMap<String, Cached>>,
    stats: Arc<ServiceStats>,
    breaker: Mutex<Breaker>,
    flights: Coalesce<Result<Fetched, FetchError>>,
    /// Its threads for fetching ahead.
    lanes: Arc<lanes::Lanes>,
}

/// Cached answers kept per service, at most (the cache starts over when
/// full).
const CACHE_ENTRIES: usize = 100_000;

/// The configured services.
pub struct Fetcher {
    services: BTreeMap<String, Service>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Check a plugin's path: relative to the service's base, no way out.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!("path {path:?} must start with a single `/`"));
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "path {path:?} contains a space or control character"
        ));
    }
    let route = path.split(['?', '#']).next().unwrap_or(path);
    if route.split('/').any(|segment| segment == "..") || path.contains('@') {
        return Err(format!("path {path:?} may not leave the service"));
    }
    Ok(())
}

impl Fetcher {
    /// The services of the config, each checked; the error names the field (`services.NAME.field`).
    pub fn new(services: &BTreeMap<String, ServiceConfig>) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (name, config) in services {
            config
                .validate()
                .map_err(|e| format!("services.{name}.{e}"))?;
            let timeout = Duration::from_millis(config.timeout_ms);
            let agent = ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                // Connections kept for the requests made ahead at once.
                .max_idle_connections(config.max_in_flight.max(16))
                .max_idle_connections_per_host(config.max_in_flight.max(16))
                .redirects(0)
                .build();
            out.insert(
                name.clone(),
                Service {
                    base: config.url.trim_end_matches('/').to_string(),
                    config: config.clone(),
                    agent,
                    cache: Mutex::new(HashMap::new()),
                    stats: Arc::default(),
                    breaker: Mutex::new(Breaker::new(
                        config.breaker_failures,
                        config.breaker_open_ms,
                    )),
                    flights: Coalesce::default(),
                    lanes: lanes::Lanes::new(config.max_in_flight),
                },
            );
        }
        Ok(Fetcher { services: out })
    }

    /// Whether no service is configured.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Whether a service among `names` refuses fetches now (its breaker
    /// is open): what fails meanwhile waits, its attempts kept.
    pub fn any_open(&self, names: &[String]) -> bool {
        names.iter().any(|n| {
            self.services
                .get(n)
                .is_some_and(|s| s.stats.breaker_open.load(Ordering::Relaxed))
        })
    }

    /// Count an answer recorded for replay.
    pub fn count_recorded(&self, service: &str) {
        if let Some(s) = self.services.get(service) {
            s.stats.recorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a fetch of a replay answered from the record.
    pub fn count_from_record(&self, service: &str) {
        if let Some(s) = self.services.get(service) {
            s.stats.fetches.fetch_add(1, Ordering::Relaxed);
            s.stats.from_record.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts per service.
    pub fn stats(&self) -> Vec<(&str, Arc<ServiceStats>)> {
        self.services
            .iter()
            .map(|(n, s)| (n.as_str(), s.stats.clone()))
            .collect()
    }

    /// Fetch `path` from `service` for a plugin allowed `allowed`. With
    /// `fresh`, the cache is not read (a plugin asking again because the
    /// answer was too old must reach the service), but still refreshed.
    pub fn fetch(
        &self,
        allowed: &[String],
        service: &str,
        path: &str,
        fresh: bool,
    ) -> Result<Fetched, FetchError> {
        let Some(s) = self
            .services
            .get(service)
            .filter(|_| allowed.iter().any(|a| a == service))
        else {
            return Err(FetchError::NotAllowed(service.to_string()));
        };
        check_path(path).map_err(|why| FetchError::NotAllowed(format!("{service}: {why}")))?;
        s.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let ttl = Duration::from_millis(s.config.cache_ttl_ms);
        if !ttl.is_zero() && !fresh {
            let cache = s.cache.lock().recover();
            if let Some(c) = cache.get(path).filter(|c| c.at.elapsed() < ttl) {
                s.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(c.fetched.clone());
            }
        }
        let answer = match s.refused_for() {
            Some(left) => {
                s.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(s.refusal(left))
            }
            // A fresh answer is asked for on its own; others share one.
            None if fresh => s.ask(path),
            None => {
                let (answer, shared) = s.flights.run(path, || s.ask(path));
                if shared {
                    s.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                answer
            }
        };
        match answer {
            Ok(fetched) => {
                s.keep(path, &fetched);
                Ok(fetched)
            }
            Err(e) => s.stale_or(path, e),
        }
    }
}

impl Service {
    /// How long past its TTL a cached answer may stand in.
    fn kept_for(&self) -> Duration {
        Duration::from_millis(self.config.cache_ttl_ms + self.config.stale_ms)
    }

    /// Cache `fetched` for `path`, when this service caches.
    fn keep(&self, path: &str, fetched: &Fetched) {
        if self.kept_for().is_zero() {
            return;
        }
        let mut cache = self.cache.lock().recover();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        let cached = Cached {
            at: Instant::now(),
            fetched: fetched.clone(),
        };
        cache.insert(path.to_string(), cached);
    }

    /// A fetch of `path` failed with `e`: the cached answer, marked stale,
    /// where it is young enough to stand in; else the error, counted.
    fn stale_or(&self, path: &str, e: FetchError) -> Result<Fetched, FetchError> {
        if !matches!(e, FetchError::TooLarge(_)) {
            let cache = self.cache.lock().recover();
            if let Some(c) = cache.get(path).filter(|c| c.at.elapsed() < self.kept_for()) {
                self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok(Fetched {
                    stale: true,
                    ..c.fetched.clone()
                });
            }
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        Err(e)
    }

    /// Why the breaker refused a fetch, `left` before it lets one probe.
    fn refusal(&self, left: Duration) -> FetchError {
        FetchError::Unavailable(format!(
            "{}: not asked for {} ms more: its breaker is open after fetches failed in a row",
            self.base,
            left.as_millis()
        ))
    }

    /// Ask the service (retries included), counted in flight, and tell the
    /// breaker how it went.
    fn ask(&self, path: &str) -> Result<Fetched, FetchError> {
        self.stats.entered(1);
        let answer = self.request(path);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.tell_breaker(answer.as_ref().map(|_| ()));
        answer
    }

    /// How long the breaker refuses requests still; `None`: go (or probe).
    fn refused_for(&self) -> Option<Duration> {
        match self.breaker.lock().recover().allow(Instant::now()) {
            Allow::Refuse(left) => Some(left),
            Allow::Go | Allow::Probe => None,
        }
    }

    /// Tell the breaker how a request went (a too-large answer is the
    /// service working).
    fn tell_breaker(&self, answer: Result<(), &FetchError>) {
        let mut breaker = self.breaker.lock().recover();
        match answer {
            Ok(()) | Err(FetchError::TooLarge(_)) => breaker.succeeded(),
            Err(_) => {
                let before = breaker.opened();
                breaker.failed(Instant::now());
                if breaker.opened() > before {
                    self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = self.base,
                        "service breaker opened: fetches failed in a row"
                    );
                }
            }
        }
        self.stats
            .breaker_open
            .store(breaker.is_open(), Ordering::Relaxed);
    }

    /// A failed transport: a timeout when it took the whole timeout.
    fn transport_error(&self, url: &str, started: Instant, why: &str) -> FetchError {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        if started.elapsed() + Duration::from_millis(5) >= timeout {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            return FetchError::Timeout;
        }
        FetchError::Unavailable(format!("{url}: {why}"))
    }

    /// Ask the service, with retries and backoff.
    fn request(&self, path: &str) -> Result<Fetched, FetchError> {
        let url = format!("{}{path}", self.base);
        self.retrying(|| self.attempt(&url))
    }

    /// `attempt` until it answers, with the service's retries and backoff;
    /// a too-large answer is not asked for again.
    fn retrying<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let schedule = Backoff::new(self.config.retries, self.config.backoff_ms);
        let mut last = FetchError::Unavailable(String::new());
        for n in 1..=schedule.attempts() {
            if let Some(pause) = schedule.pause_before(n) {
                std::thread::sleep(pause);
            }
            match attempt() {
                Ok(answer) => return Ok(answer),
                Err(e @ FetchError::TooLarge(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The body of the answer to a request to `url` sent at `started`, at
    /// most `limit` bytes; the request's time counted.
    fn read_body(
        &self,
        response: ureq::Response,
        limit: u64,
        url: &str,
        started: Instant,
    ) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        let read = response
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut body);
        self.took(started);
        if let Err(e) = read {
            return Err(self.transport_error(url, started, &format!("reading: {e}")));
        }
        if body.len() as u64 > limit {
            return Err(FetchError::TooLarge(limit));
        }
        Ok(body)
    }

    fn attempt(&self, url: &str) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.agent.get(url).call();
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) if code < 500 => r,
            Err(ureq::Error::Status(code, _)) => {
                self.took(started);
                return Err(FetchError::Unavailable(format!("{url} answered {code}")));
            }
            Err(ureq::Error::Transport(t)) => {
                self.took(started);
                return Err(self.transport_error(url, started, &t.to_string()));
            }
        };
        let status = response.status();
        let body = self.read_body(response, self.config.max_response_bytes, url, started)?;
        Ok(Fetched {
            status,
            body,
            stale: false,
        })
    }

    fn took(&self, started: Instant) {
        self.stats.record(started.elapsed().as_micros() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_service() {
        for ok in ["/users/1", "/a/b?x=1&y=2", "/"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "users",
            "//evil.example/x",
            "/a/../b",
            "/a b",
            "/x@evil",
            "/a\n",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    /// A service where nothing listens: every request fails at once; its
    /// breaker opens after two in a row.
    fn unreachable() -> ServiceConfig {
        ServiceConfig {
            url: "http://127.0.0.1:9".into(),
            timeout_ms: 100,
            retries: 0,
            backoff_ms: 1,
            max_response_bytes: 10,
            cache_ttl_ms: 0,
            stale_ms: 0,
            breaker_failures: 2,
            breaker_open_ms: 60_000,
            max_in_flight: 4,
            batch_path: None,
            batch_max: 100,
        }
    }

    #[test]
    fn a_service_failing_in_a_row_is_not_asked_while_its_breaker_is_open() {
        let mut services = BTreeMap::new();
        services.insert("down".to_string(), unreachable());
        let f = Fetcher::new(&services).expect("valid");
        let allowed = vec!["down".to_string()];
        for _ in 0..2 {
            assert!(matches!(
                f.fetch(&allowed, "down", "/x", false),
                Err(FetchError::Unavailable(_) | FetchError::Timeout)
            ));
        }
        assert!(f.any_open(&allowed), "open after two in a row");
        let stats = &f.stats()[0].1;
        let requests = stats.requests.load(Ordering::Relaxed);
        let refused = f.fetch(&allowed, "down", "/y", false);
        assert!(
            matches!(&refused, Err(FetchError::Unavailable(why)) if why.contains("breaker is open")),
            "{refused:?}"
        );
        assert_eq!(
            stats.requests.load(Ordering::Relaxed),
            requests,
            "no request while open"
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.breaker_opened.load(Ordering::Relaxed), 1);
        assert!(!f.any_open(&["other".to_string()]));
    }

    #[test]
    fn unlisted_services_are_refused_without_a_connection() {
        let mut services = BTreeMap::new();
        services.insert(
            "billing".to_string(),
            // Any connection attempt would fail with `unavailable`, not
            // `not-allowed`.
            unreachable(),
        );
        let f = Fetcher::new(&services).expect("valid");
        let allowed = vec!["domains".to_string()];
        assert_eq!(
            f.fetch(&allowed, "billing", "/x", false),
            Err(FetchError::NotAllowed("billing".into()))
        );
        assert_eq!(
            f.fetch(&["billing".into()], "nowhere", "/x", false),
            Err(FetchError::NotAllowed("nowhere".into()))
        );
        let stats = &f.stats()[0].1;
        assert_eq!(stats.requests.load(Ordering::Relaxed), 0);
        assert!(matches!(
            f.fetch(&["billing".into()], "billing", "/x", false),
            Err(FetchError::Unavailable(_))
        ));
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
    }
}
