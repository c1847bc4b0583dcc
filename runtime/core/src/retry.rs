//! How events a plugin failed with a transient error are retried: the
//! `[retry]` table of the config, read by the engine.

use serde::Deserialize;

/// Retries of events a plugin failed with a transient error (a source
/// down, a fetched entity older than its event). First `blocking`
/// immediate retries, `blocking_delay_ms` apart (doubled each time),
/// while the key waits; then delayed retries, each waiting `delay_ms`,
/// doubled per attempt up to `max_delay_ms`, while its partition keeps
/// flowing (locally, or through the retry topic with Kafka); after
/// `attempts` delayed retries it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Immediate retries while the key waits (default 0).
    pub blocking: u32,
    /// Pause before the first immediate retry, in ms; doubled each time,
    /// capped at 10 s (default 50).
    pub blocking_delay_ms: u64,
    /// Delayed retries before the event is dead-lettered (default 5).
    pub attempts: u32,
    /// Wait before the first delayed retry, in ms; doubled per attempt (default 1000).
    pub delay_ms: u64,
    /// Cap on a delayed retry's wait, in ms (default 60 000).
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            blocking: 0,
            blocking_delay_ms: 50,
            attempts: 5,
            delay_ms: 1000,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryConfig {
    /// Pause before blocking retry number `n` (1 for the first).
    pub(crate) fn blocking_delay(&self, n: u32) -> std::time::Duration {
        let factor = 1u64 << n.saturating_sub(1).min(16);
        std::time::Duration::from_millis(self.blocking_delay_ms.saturating_mul(factor).min(10_000))
    }

    /// Delay before retry number `attempt` (1 for the first retry).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        self.delay_ms.saturating_mul(factor).min(self.max_delay_ms)
    }
}
