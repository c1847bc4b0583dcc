//! A circuit breaker per plugin (seed 003): when most of what a plugin
//! sees fails (its enrichment service is down, say), it is paused instead
//! of turning every event into retries and then dead letters. Paused, its
//! offsets stop advancing (lag grows, nothing is lost); after a backoff a
//! probe replays a few of the records it lacks, and when they go through it
//! catches up and joins the live path again.

use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use projector_common::sync::Recover;

/// `[breaker]` (and `[plugins.<name>.breaker]`): when a plugin is paused.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures within the window before the breaker may open (default
    /// 20; 0 turns the breaker off).
    pub min_failures: u64,
    /// Share of the window's deliveries that failed, from which it opens
    /// (default 0.5).
    pub failure_ratio: f64,
    /// The sliding window: the last this many deliveries (default 100) ...
    pub window_deliveries: u64,
    /// ... of at most the last this many ms (default 60 000).
    pub window_ms: u64,
    /// First wait before a probe, in ms; doubled after each failed probe
    /// (default 1000).
    pub probe_delay_ms: u64,
    /// Cap on the wait between probes, in ms (default 30 000).
    pub max_probe_delay_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            min_failures: 20,
            failure_ratio: 0.5,
            window_deliveries: 100,
            window_ms: 60_000,
            probe_delay_ms: 1000,
            max_probe_delay_ms: 30_000,
        }
    }
}

impl BreakerConfig {
    /// Why the config is not usable, if it is not.
    pub fn check(&self) -> Result<(), String> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(format!(
                "failure_ratio: expected a share in (0, 1], got {}",
                self.failure_ratio
            ));
        }
        if self.window_deliveries == 0 || self.window_ms == 0 || self.probe_delay_ms == 0 {
            return Err("window_deliveries, window_ms and probe_delay_ms must be above 0".into());
        }
        if self.max_probe_delay_ms < self.probe_delay_ms {
            return Err("max_probe_delay_ms must be at least probe_delay_ms".into());
        }
        Ok(())
    }

    fn trips(&self, deliveries: u64, failures: u64) -> bool {
        self.min_failures > 0
            && failures >= self.min_failures
            && failures as f64 >= self.failure_ratio * deliveries as f64
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    /// Events flow.
    Closed,
    /// Paused: the plugin's offsets do not advance until a probe passes.
    Open {
        /// Why it opened: the failures that tripped it and the last error.
        reason: String,
        /// When it opened (ms since the epoch).
        since_ms: i64,
        /// When the next probe is due.
        probe_at_ms: i64,
    },
    /// A probe went through: the plugin is replaying what it lacks and
    /// joins the live path once caught up.
    CatchingUp {
        /// When it opened (ms since the epoch).
        since_ms: i64,
    },
}

impl BreakerState {
    /// `closed`, `open` or `catching-up`.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::CatchingUp { .. } => "catching-up",
        }
    }
}

/// One plugin's breaker.
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Whether the state is not `Closed`: read per key on the live path
    /// without taking the lock.
    paused: AtomicBool,
}

struct Inner {
    state: BreakerState,
    /// The window, oldest first: (time, deliveries, failures) per key
    /// folded.
    window: VecDeque<(i64, u64, u64)>,
    /// The wait before the next probe.
    backoff_ms: u64,
    /// Times it opened.
    opened: u64,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: VecDeque::new(),
                backoff_ms: config.probe_delay_ms,
                opened: 0,
            }),
            paused: AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.inner.lock().recover().state.clone()
    }

    /// Times it opened since the runtime started.
    pub(crate) fn opened(&self) -> u64 {
        self.inner.lock().recover().opened
    }

    /// Whether live batches pass the plugin by.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Count a live batch's deliveries and failures at `now_ms`; whether
    /// the breaker opened on it. `error` is the last failure's message.
    pub(crate) fn record(&self, now_ms: i64, deliveries: u64, failures: u64, error: &str) -> bool {
        let mut inner = self.inner.lock().recover();
        if inner.state != BreakerState::Closed || deliveries == 0 {
            return false;
        }
        inner.window.push_back((now_ms, deliveries, failures));
        let oldest = now_ms - self.config.window_ms as i64;
        let (mut d, mut f) = inner
            .window
            .iter()
            .fold((0, 0), |(d, f), (_, dd, ff)| (d + dd, f + ff));
        // Keep the shortest run of recent entries holding at least
        // `window_deliveries` deliveries, none older than `window_ms`.
        while let Some(&(t, dd, ff)) = inner.window.front() {
            if t >= oldest && d - dd < self.config.window_deliveries {
                break;
            }
            inner.window.pop_front();
            d -= dd;
            f -= ff;
        }
        if !self.config.trips(d, f) {
            return false;
        }
        inner.opened += 1;
        inner.backoff_ms = self.config.probe_delay_ms;
        inner.window.clear();
        inner.state = BreakerState::Open {
            reason: format!("{f} of the last {d} deliveries failed; last: {error}"),
            since_ms: now_ms,
            probe_at_ms: now_ms + self.config.probe_delay_ms as i64,
        };
        self.paused.store(true, Ordering::Release);
        true
    }

    /// When the retries of a paused plugin may be tried: its next probe
    /// (or, catching up, a probe delay from now); `None` when closed.
    pub(crate) fn resume_at(&self, now_ms: i64) -> Option<i64> {
        match self.inner.lock().recover().state {
            BreakerState::Closed => None,
            BreakerState::Open { probe_at_ms, .. } => Some(probe_at_ms.max(now_ms)),
            BreakerState::CatchingUp { .. } => Some(now_ms + self.config.probe_delay_ms as i64),
        }
    }

    /// Whether a probe is due at `now_ms`.
    pub(crate) fn probe_due(&self, now_ms: i64) -> bool {
        matches!(
            self.inner.lock().recover().state,
            BreakerState::Open { probe_at_ms, .. } if probe_at_ms <= now_ms
        )
    }

    /// The outcome of a probe (or of a catch-up step): whether the plugin
    /// goes on catching up. A probe fails when its deliveries failed in
    /// the share that trips the breaker; the wait before the next doubles.
    pub(crate) fn probed(&self, now_ms: i64, deliveries: u64, failures: u64, error: &str) -> bool {
        let mut inner = self.inner.lock().recover();
        let since = match inner.state {
            BreakerState::Open { since_ms, .. } | BreakerState::CatchingUp { since_ms } => since_ms,
            BreakerState::Closed => return true,
        };
        let failed =
            failures > 0 && failures as f64 >= self.config.failure_ratio * deliveries as f64;
        if failed {
            let wait = inner.backoff_ms;
            inner.backoff_ms = (wait * 2).min(self.config.max_probe_delay_ms);
            inner.state = BreakerState::Open {
                reason: format!(
                    "a probe failed {failures} of {deliveries} deliveries; last: {error}"
                ),
                since_ms: since,
                probe_at_ms: now_ms + wait as i64,
            };
            return false;
        }
        inner.state = BreakerState::CatchingUp { since_ms: since };
        true
    }

    /// The plugin caught up and joined the live path.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock().recover();
        inner.state = BreakerState::Closed;
        inner.window.clear();
        inner.backoff_ms = self.config.probe_delay_ms;
        self.paused.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            min_failures: 10,
            ..Default::default()
        })
    }

    #[test]
    fn opens_on_a_share_of_failures_within_the_window_only() {
        let b = breaker();
        // Few failures among many deliveries: stays closed.
        assert!(!b.record(0, 1000, 9, "e"));
        assert!(!b.record(100, 60, 5, "e"));
        // Many deliveries pass, then most fail: the window is the last
        // 100, so the successes before them do not hide the failures.
        assert!(!b.record(200, 10, 9, "e"), "under the share");
        assert!(!b.record(300, 10, 9, "e"), "under the share");
        assert!(b.record(400, 40, 40, "down"));
        assert!(b.is_paused());
        match b.state() {
            BreakerState::Open {
                reason,
                probe_at_ms,
                ..
            } => {
                assert!(
                    reason.contains("63 of the last 120") && reason.contains("down"),
                    "{reason}"
                );
                assert_eq!(probe_at_ms, 1400);
            }
            other => panic!("{other:?}"),
        }
        assert!(!b.probe_due(1399));
        assert!(b.probe_due(1400));

        // Old failures leave the window with time.
        let b = breaker();
        assert!(!b.record(0, 9, 9, "e"));
        assert!(!b.record(61_000, 2, 2, "e"), "the first 9 are too old");
    }

    #[test]
    fn a_failed_probe_backs_off_a_passing_one_catches_up_then_closes() {
        let b = breaker();
        assert!(b.record(0, 20, 20, "down"));
        assert!(!b.probed(1000, 16, 16, "still down"));
        assert!(b.probe_due(2000), "the first wait");
        assert!(!b.probed(2000, 16, 16, "still down"));
        assert!(!b.probe_due(3999));
        assert!(b.probe_due(4000), "doubled");
        assert!(b.probed(4000, 16, 0, ""));
        assert_eq!(b.state(), BreakerState::CatchingUp { since_ms: 0 });
        assert!(b.is_paused(), "live batches still pass it by");
        b.close();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.opened(), 1);
    }

    #[test]
    fn off_when_min_failures_is_0_and_bad_configs_say_why() {
        let b = Breaker::new(BreakerConfig {
            min_failures: 0,
            ..Default::default()
        });
        assert!(!b.record(0, 100, 100, "e"));
        let bad = BreakerConfig {
            failure_ratio: 1.5,
            ..Default::default()
        };
        assert!(bad.check().is_err_and(|e| e.contains("failure_ratio")));
    }
}
