//! Paused plugins: per-plugin retry and breaker settings, counting live
//! batches for the breaker, and the probe and catch-up that bring a
//! paused plugin back to the live path.

use super::*;
use projector_common::sync::Recover;

impl Engine {
    /// Default breaker settings of every plugin (before any is loaded).
    pub fn set_breaker(&mut self, breaker: BreakerConfig) {
        self.breaker = breaker;
    }

    /// Retry and breaker settings of plugin `name`, over the defaults
    /// (before it is loaded).
    pub fn set_policy(&mut self, name: &str, policy: Policy) {
        self.policies.insert(name.to_string(), policy);
    }

    /// The settings plugin `name` runs with.
    pub fn policy(&self, name: &str) -> Policy {
        self.policies.get(name).copied().unwrap_or(Policy {
            retry: self.retry,
            breaker: self.breaker,
            ttl_ms: None,
            history: None,
            record_fetches: None,
        })
    }

    /// Let breakers pause plugins (or not): only a source that can replay
    /// what a paused plugin lacks lets them. Off, failures go to retries
    /// and dead letters as they come.
    pub fn enable_breakers(&self, on: bool) {
        self.breakers_on.store(on, Ordering::Relaxed);
    }

    /// Whether a breaker holds any plugin back (paused or catching up).
    pub fn any_paused(&self) -> bool {
        self.breakers_on.load(Ordering::Relaxed)
            && self
                .projections()
                .iter()
                .any(|p| !matches!(p.breaker.state(), BreakerState::Closed))
    }

    /// The plugins a breaker paused whose probe is due at `now_ms`, or
    /// that are catching up.
    pub fn paused(&self, now_ms: i64) -> Vec<Arc<Projection>> {
        if !self.breakers_on.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.projections()
            .into_iter()
            .filter(|p| match p.breaker.state() {
                BreakerState::Closed => false,
                BreakerState::Open { .. } => p.breaker.probe_due(now_ms),
                BreakerState::CatchingUp { .. } => true,
            })
            .collect()
    }

    /// Where the live path is in (source, partition): the next offset its
    /// batches start from.
    pub fn live_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().recover();
        pending.offset(&self.store, DECODE_NS, source, partition)
    }

    /// Apply `records` (from where it stopped) to paused plugin `p` only:
    /// a probe, or a step of its catch-up. Whether it goes on catching up
    /// (`false`: the records failed as those that opened the breaker did,
    /// and it waits for the next probe), and what it counted.
    pub fn catch_up(
        &self,
        p: &Arc<Projection>,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<(bool, Counters)> {
        let failed_before = p.failures.load(Ordering::Relaxed);
        let delta = self.build(p, source, partition, records)?;
        let failures = p.failures.load(Ordering::Relaxed) - failed_before;
        let error = p.last_failure.lock().recover().clone();
        let going_on = p.breaker.probed(now_ms(), delta.received, failures, &error);
        if !going_on {
            tracing::warn!(plugin = p.name(), reason = ?p.breaker.state(), "breaker probe failed");
        }
        Ok((going_on, delta))
    }

    /// Join paused plugin `p` to the live path again: with batches
    /// stopped, `catch_up(source, partition, from, to)` gives the records
    /// it still lacks, from its own offset to where the live path is; then
    /// its breaker closes. What it counted doing so.
    pub fn rejoin(
        &self,
        p: &Arc<Projection>,
        partitions: &[(String, u32)],
        catch_up: impl FnMut(&str, u32, u64, u64) -> Result<Vec<Record>>,
    ) -> Result<Counters> {
        let counted = self.join(p, partitions, catch_up, || p.breaker.close())?;
        tracing::info!(
            plugin = p.name(),
            "breaker closed: the plugin caught up and follows live events"
        );
        Ok(counted)
    }
}
