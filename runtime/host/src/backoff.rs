//! Bounded retries with a doubling pause: the schedule shared by the
//! plugins' `fetch` and the source of truth.

use std::time::Duration;

/// `retries` further attempts after a failed one, the first `first` after
/// it, each pause twice the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts after the first.
    pub retries: u32,
    /// The pause before the second attempt.
    pub first: Duration,
}

impl Backoff {
    /// A schedule from a config's `retries` and `backoff_ms`.
    pub fn new(retries: u32, backoff_ms: u64) -> Self {
        Backoff {
            retries,
            first: Duration::from_millis(backoff_ms),
        }
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// The pause before attempt `n` (from 1): none before the first.
    pub fn pause_before(&self, n: u32) -> Option<Duration> {
        (n > 1).then(|| self.first.saturating_mul(1 << (n - 2).min(16)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_second_attempt() {
        let b = Backoff::new(3, 20);
        assert_eq!(b.attempts(), 4);
        let pauses: Vec<_> = (1..=b.attempts()).map(|n| b.pause_before(n)).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(pauses, [None, ms(20), ms(40), ms(80)]);
    }
}
