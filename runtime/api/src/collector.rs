//! What `/metrics` reads at scrape time from the engine, the source and
//! the fetcher (the `EngineCollector`): event outcomes and per-plugin
//! counts, commits, the retry queue, hit ratios, lag, the source's own
//! families and the enrichment fetches. The HTTP layer's own families
//! are in [`crate::metrics`].

use crate::metrics::{lookup_counts, PluginLabel, ResultLabels};
use crate::Feed;
use projector_core::engine::{Engine, Projection};
use projector_core::source::{MetricKind, SourceMetric};
use projector_host::fetch::{Fetcher, ServiceStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::Arc;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    plugin: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    plugin: String,
    decision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    plugin: String,
    source: String,
    partition: String,
}

/// One sample per plugin of the family `name`: `value` of each, as a
/// counter or a gauge.
fn per_plugin(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    projections: &[Arc<Projection>],
    value: impl Fn(&Projection) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for p in projections {
        let labels = PluginLabel {
            plugin: p.name().into(),
        };
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(value(p) as i64).encode(sample)?,
            _ => ConstCounter::new(value(p)).encode(sample)?,
        }
    }
    Ok(())
}

/// Values the engine owns, read at scrape time.
pub(crate) struct EngineCollector {
    engine: Arc<Engine>,
    feed: Feed,
    fetcher: Option<Arc<Fetcher>>,
    lookups: Family<ResultLabels, Counter>,
    deployer: Arc<std::sync::OnceLock<Arc<projector_deploy::Deployer>>>,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let projections = self.engine.projections();
        event_outcomes(&mut encoder, &projections)?;
        plugin_counts(&mut encoder, &projections)?;
        self.commits(&mut encoder)?;
        self.memory(&mut encoder)?;
        self.retry_queue(&mut encoder)?;
        self.hit_ratios(&mut encoder, &projections)?;
        self.lags(&mut encoder, &projections)?;
        source_families(&mut encoder, &self.feed.metrics())?;
        self.gate_decisions(&mut encoder, &projections)?;
        if let Some(fetcher) = self.fetcher.as_ref().filter(|f| !f.is_empty()) {
            let stats = fetcher.stats();
            fetch_counts(&mut encoder, &stats)?;
            fetch_durations(&mut encoder, &stats)?;
        }
        let recording: Vec<_> = projections
            .iter()
            .filter(|p| self.engine.recorded_bytes(p.name()).is_some())
            .cloned()
            .collect();
        if !recording.is_empty() {
            per_plugin(
                &mut encoder,
                "projector_fetch_record_bytes",
                "Size of the plugin's record of fetched answers (keys and answers)",
                MetricType::Gauge,
                &recording,
                |p| self.engine.recorded_bytes(p.name()).unwrap_or(0),
            )?;
        }
        Ok(())
    }
}

impl EngineCollector {
    pub(crate) fn new(
        engine: Arc<Engine>,
        feed: Feed,
        fetcher: Option<Arc<Fetcher>>,
        lookups: Family<ResultLabels, Counter>,
        deployer: Arc<std::sync::OnceLock<Arc<projector_deploy::Deployer>>>,
    ) -> Self {
        EngineCollector {
            engine,
            feed,
            fetcher,
            lookups,
            deployer,
        }
    }

    /// `projector_promotion_decisions_total`: each loaded plugin's gate
    /// decisions by kind, 0 for those not made.
    fn gate_decisions(
        &self,
        encoder: &mut DescriptorEncoder,
        projections: &[Arc<Projection>],
    ) -> Result<(), std::fmt::Error> {
        let Some(deployer) = self.deployer.get() else {
            return Ok(());
        };
        let made = deployer.gate_decisions();
        let mut family = encoder.encode_descriptor(
            "projector_promotion_decisions",
            "Promotion gate decisions: held, promoted, passed (the watch window), rolled_back (by the watch)",
            None,
            MetricType::Counter,
        )?;
        for p in projections {
            for d in projector_deploy::Decision::ALL {
                let n = made
                    .iter()
                    .find(|(plugin, made, _)| plugin == p.name() && *made == d)
                    .map_or(0, |m| m.2);
                let labels = DecisionLabels {
                    plugin: p.name().into(),
                    decision: d.name().into(),
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// `projector_resident_bytes`, `projector_memory_bytes{part}` and,
    /// with a budget, `projector_memory_budget_bytes{part}`.
    fn memory(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = projector_common::resident::resident_bytes() {
            let family = encoder.encode_descriptor(
                "projector_resident_bytes",
                "Bytes of the process resident in memory",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss as i64).encode(family)?;
        }
        let used = self.engine.memory_use();
        let mut family = encoder.encode_descriptor(
            "projector_memory_bytes",
            "Bytes each bounded part holds: view_caches, render_caches, unapplied",
            None,
            MetricType::Gauge,
        )?;
        for (part, value) in [
            ("view_caches", used.view_caches),
            ("render_caches", used.render_caches),
            ("unapplied", used.unapplied),
        ] {
            let labels = PartLabel { part: part.into() };
            ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
        }
        let Some(budget) = self.engine.memory_budget() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "projector_memory_budget_bytes",
            "The memory budget ([engine] memory_mb) and each part's share",
            None,
            MetricType::Gauge,
        )?;
        for (part, value) in [
            ("total", budget.total),
            ("store", budget.store()),
            ("view_caches", budget.view_caches()),
            ("render_caches", budget.render_caches()),
            ("unapplied", budget.unapplied()),
        ] {
            let labels = PartLabel { part: part.into() };
            ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// `projector_commits`, `projector_committed_views` and
    /// `projector_commit_seconds`: the store's commits since start.
    fn commits(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.engine.commit_stats();
        for (name, help, value) in [
            (
                "projector_commits",
                "Atomic store commits",
                c.commits as f64,
            ),
            (
                "projector_committed_views",
                "Views put or removed by store commits",
                c.views as f64,
            ),
            (
                "projector_commit_seconds",
                "Time spent in store commits",
                c.seconds,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }

    /// `projector_retry_queue`: events waiting for their retry.
    fn retry_queue(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queued = self.engine.store().retry_count() as i64;
        let family = encoder.encode_descriptor(
            "projector_retry_queue",
            "Events waiting for their retry",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(queued).encode(family)
    }

    /// `projector_hit_ratio`: per plugin that had a lookup.
    fn hit_ratios(
        &self,
        encoder: &mut DescriptorEncoder,
        projections: &[Arc<Projection>],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "projector_hit_ratio",
            "Hits over lookups since start",
            None,
            MetricType::Gauge,
        )?;
        for p in projections {
            let (hits, lookups) = lookup_counts(&self.lookups, p.name());
            if let Some(ratio) = (lookups > 0).then(|| hits as f64 / lookups as f64) {
                let labels = PluginLabel {
                    plugin: p.name().into(),
                };
                ConstGauge::new(ratio).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// `projector_lag_records`: per plugin and partition, when the views
    /// follow a source.
    fn lags(
        &self,
        encoder: &mut DescriptorEncoder,
        projections: &[Arc<Projection>],
    ) -> Result<(), std::fmt::Error> {
        if self.feed.positions().is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "projector_lag_records",
            "Records in the source not yet applied by the plugin",
            None,
            MetricType::Gauge,
        )?;
        for p in projections {
            for lag in self.feed.lags(&self.engine, p.name()) {
                let labels = LagLabels {
                    plugin: p.name().into(),
                    source: lag.source,
                    partition: lag.partition.to_string(),
                };
                ConstGauge::new(lag.lag as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `projector_events`: event deliveries per plugin, by outcome.
fn event_outcomes(
    encoder: &mut DescriptorEncoder,
    projections: &[Arc<Projection>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "projector_events",
        "Event deliveries per plugin, by outcome",
        None,
        MetricType::Counter,
    )?;
    for p in projections {
        let c = p.counters();
        for (outcome, v) in [
            ("received", c.received),
            ("applied", c.applied),
            ("skipped", c.skipped),
            ("invalidated", c.invalidated),
            ("dead_lettered", c.dead_lettered),
        ] {
            let labels = OutcomeLabels {
                plugin: p.name().into(),
                outcome: outcome.into(),
            };
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The families with one value per plugin: retries, the breaker, expiry.
fn plugin_counts(
    encoder: &mut DescriptorEncoder,
    projections: &[Arc<Projection>],
) -> Result<(), std::fmt::Error> {
    per_plugin(
        encoder,
        "projector_retries",
        "Events queued for a delayed retry after a transient failure",
        MetricType::Counter,
        projections,
        |p| p.retried(),
    )?;
    per_plugin(
        encoder,
        "projector_breaker_open",
        "1 while the plugin's breaker holds it paused (open or catching up)",
        MetricType::Gauge,
        projections,
        |p| u64::from(p.breaker() != projector_core::breaker::BreakerState::Closed),
    )?;
    per_plugin(
        encoder,
        "projector_breaker_opened",
        "Times the plugin's breaker opened",
        MetricType::Counter,
        projections,
        |p| p.breaker_opened(),
    )?;
    per_plugin(
        encoder,
        "projector_views_expired",
        "Expired views the sweep deleted",
        MetricType::Counter,
        projections,
        |p| p.expired_swept(),
    )?;
    per_plugin(
        encoder,
        "projector_expired_reads",
        "Reads that found their view past its time to live",
        MetricType::Counter,
        projections,
        |p| p.expired_reads(),
    )
}

/// The fetch counters per service (enrichment): fetches, cache hits,
/// stale answers, errors, timeouts, requests.
fn fetch_counts(
    encoder: &mut DescriptorEncoder,
    stats: &[(&str, Arc<ServiceStats>)],
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    type Read = fn(&ServiceStats) -> f64;
    let families: [(&str, &str, Read); 13] = [
        (
            "projector_fetches",
            "Fetches plugins asked of a service",
            |s| s.fetches.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_cache_hits",
            "Fetches answered from the cache within its TTL",
            |s| s.cache_hits.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_stale",
            "Fetches answered from the cache past its TTL while the service failed",
            |s| s.stale_served.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_errors",
            "Fetches that failed after their retries",
            |s| s.errors.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_timeouts",
            "Requests that ran past their timeout",
            |s| s.timeouts.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_requests",
            "HTTP requests sent to a service, retries included",
            |s| s.requests.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_coalesced",
            "Fetches that shared the answer of an identical one in flight",
            |s| s.coalesced.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_prefetched",
            "Answers fetched ahead of the batch that needed them (plugins that name their fetches ahead)",
            |s| s.prefetched.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_batched",
            "Answers that came many to a request from the service's batch endpoint",
            |s| s.batched.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_refused",
            "Fetches refused at once because the service's breaker was open",
            |s| s.refused.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_breaker_opened",
            "Times the service's breaker opened",
            |s| s.breaker_opened.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_recorded",
            "Answers recorded for replay (plugins with record_fetches)",
            |s| s.recorded.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_from_record",
            "Fetches of a replay answered from the record, no request sent",
            |s| s.from_record.load(Relaxed) as f64,
        ),
    ];
    for (name, help, read) in families {
        per_service(encoder, name, help, MetricType::Counter, stats, read)?;
    }
    let gauges: [(&str, &str, Read); 2] = [
        (
            "projector_fetch_in_flight",
            "Fetches waiting on the service now",
            |s| s.in_flight.load(Relaxed) as f64,
        ),
        (
            "projector_fetch_breaker_open",
            "1 while the service's breaker refuses fetches, else 0",
            |s| f64::from(u8::from(s.breaker_open.load(Relaxed))),
        ),
    ];
    for (name, help, read) in gauges {
        per_service(encoder, name, help, MetricType::Gauge, stats, read)?;
    }
    Ok(())
}

/// One sample per service of the family `name`: `read` of each, as a
/// counter or a gauge.
fn per_service(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    stats: &[(&str, Arc<ServiceStats>)],
    read: fn(&ServiceStats) -> f64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (service, s) in stats {
        let labels = ServiceLabel {
            service: service.to_string(),
        };
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(read(s) as i64).encode(sample)?,
            _ => ConstCounter::new(read(s)).encode(sample)?,
        }
    }
    Ok(())
}

/// `projector_fetch_request_seconds`: the durations of the requests to
/// each service.
fn fetch_durations(
    encoder: &mut DescriptorEncoder,
    stats: &[(&str, Arc<ServiceStats>)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "projector_fetch_request_seconds",
        "Duration of requests to a service",
        None,
        MetricType::Histogram,
    )?;
    for (service, s) in stats {
        let labels = ServiceLabel {
            service: service.to_string(),
        };
        let buckets = s.latency_buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = s.request_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        family
            .encode_family(&labels)?
            .encode_histogram::<ServiceLabel>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn encode_value(
    m: &SourceMetric,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match m.kind {
        MetricKind::Counter => ConstCounter::new(m.value.max(0) as u64).encode(encoder),
        MetricKind::Gauge => ConstGauge::new(m.value).encode(encoder),
    }
}

/// The source's own metrics (e.g. Kafka's), read at scrape time: one
/// family per name, in the order the source gives them.
fn source_families(
    encoder: &mut DescriptorEncoder,
    metrics: &[SourceMetric],
) -> Result<(), std::fmt::Error> {
    let mut i = 0;
    while i < metrics.len() {
        let first = &metrics[i];
        let same = metrics[i..]
            .iter()
            .take_while(|m| m.name == first.name)
            .count();
        let kind = match first.kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        let mut family = encoder.encode_descriptor(first.name, first.help, None, kind)?;
        for m in &metrics[i..i + same] {
            let sample = match (first.labels.is_empty(), same) {
                (true, 1) => None,
                _ => Some(family.encode_family(&m.labels)?),
            };
            let encoder = match sample {
                Some(e) => e,
                None => {
                    encode_value(m, family)?;
                    break;
                }
            };
            encode_value(m, encoder)?;
        }
        i += same;
    }
    Ok(())
}
