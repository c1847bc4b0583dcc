//! A breaker per enrichment service: after `failures` fetches in a row
//! failed (timeouts, refused connections, 5xx answers, after their
//! retries) the service is not asked for `open_ms`; then one fetch probes
//! it: an answer closes the breaker, a failure opens it again for twice
//! as long (at most [`MAX_OPEN`]). While it is open a fetch fails at once
//! as `unavailable` (or is answered stale from the cache), and the engine
//! keeps the events that fail meanwhile in the retry path without using
//! up their attempts: an outage dead-letters nothing.

use std::time::{Duration, Instant};

/// The longest a breaker stays open before its next probe.
pub const MAX_OPEN: Duration = Duration::from_secs(30);

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Fetches go to the service; `failed` in a row so far.
    Closed {
        /// Fetches failed in a row.
        failed: u32,
    },
    /// No fetch goes until `until`, then one probes.
    Open {
        /// When the next probe may go.
        until: Instant,
        /// How long it was opened for.
        open: Duration,
    },
    /// One fetch is probing the service; the others wait for its answer.
    Probing {
        /// How long it was open before the probe.
        open: Duration,
    },
}

/// Whether a fetch may go to the service now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Yes.
    Go,
    /// Yes, as the probe of an open breaker.
    Probe,
    /// No: open (or probing) for about this long still.
    Refuse(Duration),
}

/// One service's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures: u32,
    open_for: Duration,
    state: State,
    opened: u64,
}

impl Breaker {
    /// A closed breaker that opens after `failures` failed fetches in a
    /// row (0: never) for `open_ms` first.
    pub fn new(failures: u32, open_ms: u64) -> Self {
        Breaker {
            failures,
            open_for: Duration::from_millis(open_ms.max(1)),
            state: State::Closed { failed: 0 },
            opened: 0,
        }
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Times it opened (a failed probe counts again).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Whether a fetch may go at `now`.
    pub fn allow(&mut self, now: Instant) -> Allow {
        match self.state {
            State::Closed { .. } => Allow::Go,
            State::Open { until, open } if now >= until => {
                self.state = State::Probing { open };
                Allow::Probe
            }
            State::Open { until, .. } => Allow::Refuse(until - now),
            State::Probing { open } => Allow::Refuse(open.min(Duration::from_millis(100))),
        }
    }

    /// A fetch that went got an answer.
    pub fn succeeded(&mut self) {
        self.state = State::Closed { failed: 0 };
    }

    /// A fetch that went failed at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failed } if self.failures > 0 && failed + 1 >= self.failures => {
                self.opened += 1;
                State::Open {
                    until: now + self.open_for,
                    open: self.open_for,
                }
            }
            State::Closed { failed } => State::Closed { failed: failed + 1 },
            // A request sent before it opened (many go at once when
            // fetched ahead): it neither extends nor counts an opening.
            open @ State::Open { .. } => open,
            State::Probing { open } => {
                let open = (open * 2).min(MAX_OPEN);
                self.opened += 1;
                State::Open {
                    until: now + open,
                    open,
                }
            }
        };
    }

    /// Whether fetches are refused now (open, or a probe out).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_failures_in_a_row_probes_once_and_closes_on_an_answer() {
        let t = Instant::now();
        let mut b = Breaker::new(3, 1000);
        b.failed(t);
        b.failed(t);
        b.succeeded();
        b.failed(t);
        b.failed(t);
        assert_eq!(b.allow(t), Allow::Go, "two in a row: still closed");
        b.failed(t);
        assert!(b.is_open());
        assert_eq!(b.opened(), 1);
        assert_eq!(b.allow(t), Allow::Refuse(Duration::from_secs(1)));
        // Past its time: one probe, the others refused meanwhile.
        let later = t + Duration::from_secs(1);
        assert_eq!(b.allow(later), Allow::Probe);
        assert!(matches!(b.allow(later), Allow::Refuse(_)));
        // The probe fails: open twice as long.
        b.failed(later);
        assert_eq!(b.allow(later), Allow::Refuse(Duration::from_secs(2)));
        assert_eq!(b.opened(), 2);
        // Requests sent before it opened, failing now, change nothing.
        for _ in 0..30 {
            b.failed(later);
        }
        assert_eq!(b.allow(later), Allow::Refuse(Duration::from_secs(2)));
        assert_eq!(b.opened(), 2);
        let again = later + Duration::from_secs(2);
        assert_eq!(b.allow(again), Allow::Probe);
        b.succeeded();
        assert!(!b.is_open());
        assert_eq!(b.allow(again), Allow::Go);
    }

    #[test]
    fn it_stays_open_at_most_the_longest_time_and_never_opens_when_off() {
        let t = Instant::now();
        let mut b = Breaker::new(1, 20_000);
        b.failed(t);
        assert_eq!(b.allow(t + Duration::from_secs(20)), Allow::Probe);
        b.failed(t);
        assert_eq!(b.allow(t), Allow::Refuse(Duration::from_secs(30)));
        assert_eq!(b.allow(t + MAX_OPEN), Allow::Probe);
        b.failed(t);
        assert_eq!(b.allow(t), Allow::Refuse(MAX_OPEN));
        let mut off = Breaker::new(0, 1000);
        for _ in 0..100 {
            off.failed(t);
        }
        assert_eq!(off.allow(t), Allow::Go);
    }
}
