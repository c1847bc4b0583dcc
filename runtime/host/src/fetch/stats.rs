//! What each service's fetches did, since start: the counts behind the
//! `projector_fetch_*` metrics, the overview's services and the benches.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Counts of one service, since start.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Fetches asked of this service by plugins.
    pub fetches: AtomicU64,
    /// Answered from the cache within its TTL.
    pub cache_hits: AtomicU64,
    /// Answered from the cache past its TTL because the service failed.
    pub stale_served: AtomicU64,
    /// HTTP requests sent (attempts, retries included).
    pub requests: AtomicU64,
    /// Fetches that failed after their retries.
    pub errors: AtomicU64,
    /// Attempts that ran past the timeout.
    pub timeouts: AtomicU64,
    /// Total time of the requests sent, in microseconds.
    pub request_micros: AtomicU64,
    /// Requests by duration: count per bucket of [`LATENCY_BUCKETS_MICROS`]
    /// (the last one: longer than every bound).
    pub latency: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    /// Fetches waiting on the service now.
    pub in_flight: AtomicI64,
    /// The most fetches that waited on the service at once.
    pub in_flight_peak: AtomicI64,
    /// Fetches that shared the answer of an identical one in flight.
    pub coalesced: AtomicU64,
    /// Fetches refused at once because the breaker was open.
    pub refused: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Whether the breaker refuses fetches now.
    pub breaker_open: AtomicBool,
    /// Answers recorded for replay (plugins with `record_fetches`).
    pub recorded: AtomicU64,
    /// Fetches of a replay answered from the record, no request sent.
    pub from_record: AtomicU64,
    /// Answers fetched ahead of the batch that needed them.
    pub prefetched: AtomicU64,
    /// Answers that came many to a request, from the batch endpoint.
    pub batched: AtomicU64,
}

/// Upper bounds of the request latency buckets, in microseconds.
pub const LATENCY_BUCKETS_MICROS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

impl ServiceStats {
    /// `n` more fetches wait on the service.
    pub(super) fn entered(&self, n: i64) {
        let now = self.in_flight.fetch_add(n, Ordering::Relaxed) + n;
        self.in_flight_peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn record(&self, micros: u64) {
        self.request_micros.fetch_add(micros, Ordering::Relaxed);
        let i = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests per latency bucket: (upper bound in seconds, count), the
    /// last bound `f64::MAX`.
    pub fn latency_buckets(&self) -> Vec<(f64, u64)> {
        self.latency
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = LATENCY_BUCKETS_MICROS
                    .get(i)
                    .map_or(f64::MAX, |b| *b as f64 / 1e6);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// The bucket bound under which a share `q` of requests finished, in
    /// microseconds (`None` before any request or past the last bound).
    pub fn latency_quantile_micros(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return LATENCY_BUCKETS_MICROS.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_durations_land_in_their_buckets() {
        let stats = ServiceStats::default();
        assert_eq!(stats.latency_quantile_micros(0.5), None);
        for micros in [40, 90, 90, 300, 20_000, 5_000_000] {
            stats.record(micros);
        }
        assert_eq!(stats.latency_quantile_micros(0.5), Some(100));
        assert_eq!(stats.latency_quantile_micros(0.6), Some(500));
        assert_eq!(stats.latency_quantile_micros(0.8), Some(25_000));
        assert_eq!(
            stats.latency_quantile_micros(1.0),
            None,
            "past the last bound"
        );
        let buckets = stats.latency_buckets();
        assert_eq!(buckets[0], (0.000_05, 1));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        assert_eq!(stats.request_micros.load(Ordering::Relaxed), 5_020_520);
    }
}
