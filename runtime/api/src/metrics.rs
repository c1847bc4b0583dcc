//! Metrics, at `/metrics` in Prometheus text 0.0.4 or, when `Accept`
//! asks, OpenMetrics (see `exposition`). Every name is
//! listed here and only here (the README points to this table):
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `projector_http_shed_total` | counter | | requests answered 503 because `[http] max_in_flight` were being served |
//! | `projector_reads_total` | counter | plugin, mode, served_by | view reads answered, by read mode and by who answered (`projection` or `source`) |
//! | `projector_read_seconds` | histogram | plugin, mode | read latency, request in to answer out |
//! | `projector_rollout_rule_total` | counter | plugin, rule, mode | reads whose mode a rollout rule chose (`default` when none matched, `asked` when the read named its mode) |
//! | `projector_view_lookups_total` | counter | plugin, result | reads that consulted the projection: `hit` (Valid view), `absent`, `invalid` |
//! | `projector_hit_ratio` | gauge | plugin | hits over lookups since start (seed 000 measured 95.5%) |
//! | `projector_fallbacks_total` | counter | plugin, reason | reads the projection could not answer, served by the source (`absent`, `invalid`) |
//! | `projector_snapshots_total` | counter | plugin | views stored from a source-of-truth answer (lazy population) |
//! | `projector_source_errors_total` | counter | plugin | source-of-truth requests that failed after their retries |
//! | `projector_comparisons_total` | counter | plugin, result | comparisons of both answers: `equal` or `mismatch` |
//! | `projector_mismatches_total` | counter | plugin, reason | differences found, by the comparison's reason |
//! | `projector_consistency_waits_total` | counter | plugin, result | reads carrying a position token: `reached` or `timeout` |
//! | `projector_ingested_total` | counter | | events appended through `POST /v1/events` |
//! | `projector_ingest_duplicates_total` | counter | | events posted again within the log's dedup window, not appended twice |
//! | `projector_events_total` | counter | plugin, outcome | event deliveries: `received`, `applied`, `skipped`, `invalidated`, `dead_lettered` |
//! | `projector_commits_total` | counter | | atomic store commits (views, offsets, counters, dead letters together) |
//! | `projector_committed_views_total` | counter | | views put or removed by those commits |
//! | `projector_commit_seconds_total` | counter | | time spent in those commits |
//! | `projector_lag_records` | gauge | plugin, source, partition | records in the log not yet applied by the plugin |
//! | `projector_retries_total` | counter | plugin | events queued for a delayed retry after a transient failure |
//! | `projector_dead_letters_redriven_total` | counter | plugin | dead letters sent back through the plugin's serving version (a redrive) |
//! | `projector_promotion_decisions_total` | counter | plugin, decision | promotion gate decisions: `held` (a condition failed, once per new reason), `promoted`, `passed` (the watch window ended), `rolled_back` (by the watch) |
//! | `projector_breaker_open` | gauge | plugin | 1 while the plugin's breaker holds it paused (open or catching up), else 0 |
//! | `projector_breaker_opened_total` | counter | plugin | times the plugin's breaker opened |
//! | `projector_views_expired_total` | counter | plugin | expired views the sweep deleted (plugins with `ttl_ms`) |
//! | `projector_expired_reads_total` | counter | plugin | reads that found their view past its time to live, answered as absent |
//! | `projector_retry_queue` | gauge | | events waiting for their retry |
//! | `projector_resident_bytes` | gauge | | bytes of the process resident in memory (`VmRSS`) |
//! | `projector_memory_bytes` | gauge | part | bytes each bounded part holds: `view_caches` (views in memory, estimated by size), `render_caches`, `unapplied` (committed records waiting for the materializer) |
//! | `projector_memory_budget_bytes` | gauge | part | with `[engine] memory_mb`: the budget (`total`) and each part's share (`store`: sled's page cache in memory, `view_caches`, `render_caches`, `unapplied`) |
//! | `projector_fetches_total` | counter | service | fetches plugins asked of a service (enrichment) |
//! | `projector_fetch_cache_hits_total` | counter | service | fetches answered from the cache within its TTL |
//! | `projector_fetch_stale_total` | counter | service | fetches answered from the cache past its TTL while the service failed |
//! | `projector_fetch_errors_total` | counter | service | fetches that failed after their retries |
//! | `projector_fetch_timeouts_total` | counter | service | requests that ran past their timeout |
//! | `projector_fetch_requests_total` | counter | service | HTTP requests sent to a service, retries included |
//! | `projector_fetch_coalesced_total` | counter | service | fetches that shared the answer of an identical one in flight |
//! | `projector_fetch_prefetched_total` | counter | service | answers fetched ahead of the batch that needed them (plugins that name their fetches ahead) |
//! | `projector_fetch_batched_total` | counter | service | answers that came many to a request from the service's batch endpoint (`batch_path`) |
//! | `projector_fetch_refused_total` | counter | service | fetches refused at once because the service's breaker was open |
//! | `projector_fetch_breaker_opened_total` | counter | service | times the service's breaker opened (fetches failed in a row) |
//! | `projector_fetch_recorded_total` | counter | service | answers recorded for replay (plugins with `record_fetches`) |
//! | `projector_fetch_record_bytes` | gauge | plugin | size of the plugin's record of fetched answers, keys and answers (plugins with `record_fetches`; past its `mb` the oldest are dropped) |
//! | `projector_fetch_from_record_total` | counter | service | fetches of a replay (a generation being built) answered from the record, no request sent |
//! | `projector_fetch_in_flight` | gauge | service | fetches waiting on the service now |
//! | `projector_fetch_breaker_open` | gauge | service | 1 while the service's breaker refuses fetches, else 0 |
//! | `projector_fetch_request_seconds` | histogram | service | duration of those requests |
//!
//! With a Kafka source, also (events/s: the rate of `projector_kafka_consumed_total`):
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | (kafka) `projector_kafka_consumed_total` | counter | | records polled from Kafka |
//! | (kafka) `projector_kafka_batches_total` | counter | | batches handed to the engine |
//! | (kafka) `projector_kafka_lag_records` | gauge | topic, partition | records of an owned partition not yet applied (fetched ones included); absent until the broker has said the partition's end |
//! | (kafka) `projector_kafka_lag_unknown_partitions` | gauge | | owned partitions whose end the broker has not said yet (no lag reported for them) |
//! | (kafka) `projector_kafka_buffered_records` | gauge | | records waiting in the partition queues |
//! | (kafka) `projector_kafka_paused_partitions` | gauge | | partitions paused by backpressure now |
//! | (kafka) `projector_kafka_pauses_total` | counter | | times a partition was paused because its queue was full |
//! | (kafka) `projector_kafka_rebalances_total` | counter | | rebalances seen (each assignment or revocation) |
//! | (kafka) `projector_kafka_rebalance_milliseconds_total` | counter | | time spent in rebalances (restores run after them) |
//! | (kafka) `projector_kafka_partitions_assigned_total` | counter | | partitions assigned to this instance by rebalances |
//! | (kafka) `projector_kafka_partitions_revoked_total` | counter | | partitions revoked from this instance by rebalances |
//! | (kafka) `projector_kafka_consumer_errors_total` | counter | | errors the consumer reported |
//! | (kafka) `projector_kafka_produced_total` | counter | | spooled records the broker acknowledged (retries, dead letters) |
//! | (kafka) `projector_kafka_produce_errors_total` | counter | | failed deliveries (the record stays spooled) |
//! | (kafka) `projector_kafka_spooled_records` | gauge | | records in the spool, not yet acknowledged |
//!
//! Engine-side values (events, lag) are read from the engine at scrape
//! time; the rest is counted by the HTTP layer as requests go.

use crate::collector::EngineCollector;
use crate::Feed;
use projector_core::engine::Engine;
use projector_host::fetch::Fetcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of a per-plugin metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// Name of the plugin the value belongs to.
    pub plugin: String,
}

/// Labels of `projector_reads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// Name of the plugin read.
    pub plugin: String,
    /// Read mode that answered, as [`crate::rollout::Mode::as_str`] names it.
    pub mode: String,
    /// Who answered: `projection` or `source`.
    pub served_by: String,
}

/// Labels of `projector_read_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// Name of the plugin read.
    pub plugin: String,
    /// Read mode, as [`crate::rollout::Mode::as_str`] names it.
    pub mode: String,
}

/// Labels of `projector_rollout_rule_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Name of the plugin read.
    pub plugin: String,
    /// The rule that chose the mode: its name, `rules[i]`, `default` or `asked`.
    pub rule: String,
    /// The mode it chose.
    pub mode: String,
}

/// Labels of a metric counted by result (lookups, comparisons, consistency waits).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Name of the plugin the value belongs to.
    pub plugin: String,
    /// Outcome, e.g. `hit`, `absent`, `invalid`, `equal`, `mismatch`, `reached` or `timeout`.
    pub result: String,
}

/// Labels of a metric counted by reason (fallbacks, mismatches).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Name of the plugin the value belongs to.
    pub plugin: String,
    /// Why: `absent` or `invalid` for a fallback, the comparison's reason for a mismatch.
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The HTTP layer's metrics; cheap to clone (every family is shared).
#[derive(Clone)]
pub struct Metrics {
    /// View reads answered, by plugin, read mode and who answered (`projector_reads_total`).
    pub reads: Family<ReadLabels, Counter>,
    /// Read latency in seconds, request in to answer out (`projector_read_seconds`).
    pub read_seconds: Family<ModeLabels, Histogram, fn() -> Histogram>,
    /// Reads that consulted the projection: `hit`, `absent` or `invalid`
    /// (`projector_view_lookups_total`).
    pub lookups: Family<ResultLabels, Counter>,
    /// Reads by the rollout rule that chose their mode (`projector_rollout_rule_total`).
    pub rules: Family<RuleLabels, Counter>,
    /// Reads the projection could not answer, served by the source (`projector_fallbacks_total`).
    pub fallbacks: Family<ReasonLabels, Counter>,
    /// Views stored from a source-of-truth answer (`projector_snapshots_total`).
    pub snapshots: Family<PluginLabel, Counter>,
    /// Source-of-truth requests that failed after their retries (`projector_source_errors_total`).
    pub truth_errors: Family<PluginLabel, Counter>,
    /// Comparisons of both answers: `equal` or `mismatch` (`projector_comparisons_total`).
    pub comparisons: Family<ResultLabels, Counter>,
    /// Differences found by comparisons, by reason (`projector_mismatches_total`).
    pub mismatches: Family<ReasonLabels, Counter>,
    /// Reads carrying a position token: `reached` or `timeout`
    /// (`projector_consistency_waits_total`).
    pub consistency_waits: Family<ResultLabels, Counter>,
    /// Events appended through `POST /v1/events` (`projector_ingested_total`).
    pub ingested: Counter,
    /// Events posted again within the log's dedup window, not appended
    /// twice (`projector_ingest_duplicates_total`).
    pub ingest_duplicates: Counter,
    /// Requests answered 503 because `max_in_flight` were being served
    /// (`projector_http_shed_total`).
    pub shed: Counter,
    /// Dead letters sent back through their plugin
    /// (`projector_dead_letters_redriven_total`).
    pub redriven: Family<PluginLabel, Counter>,
    registry: Arc<Registry>,
    /// The deployer whose gate decisions are counted, once given.
    pub(crate) deployer: Arc<std::sync::OnceLock<Arc<projector_deploy::Deployer>>>,
}

impl Metrics {
    /// Registers every metric; engine, feed and fetcher values are read from them at scrape time.
    pub fn new(engine: Arc<Engine>, feed: Feed, fetcher: Option<Arc<Fetcher>>) -> Self {
        let mut registry = Registry::default();
        let reads = Family::<ReadLabels, Counter>::default();
        let read_seconds = Family::<ModeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let lookups = Family::<ResultLabels, Counter>::default();
        let rules = Family::<RuleLabels, Counter>::default();
        let fallbacks = Family::<ReasonLabels, Counter>::default();
        let snapshots = Family::<PluginLabel, Counter>::default();
        let truth_errors = Family::<PluginLabel, Counter>::default();
        let comparisons = Family::<ResultLabels, Counter>::default();
        let mismatches = Family::<ReasonLabels, Counter>::default();
        let consistency_waits = Family::<ResultLabels, Counter>::default();
        let ingested = Counter::default();
        let ingest_duplicates = Counter::default();
        let shed = Counter::default();
        let redriven = Family::<PluginLabel, Counter>::default();
        // At 0 for the plugins loaded now, so the family is exposed
        // before a first redrive.
        for p in engine.projections() {
            let _ = redriven.get_or_create(&PluginLabel {
                plugin: p.name().to_string(),
            });
        }
        registry.register(
            "projector_dead_letters_redriven",
            "Dead letters sent back through their plugin's serving version",
            redriven.clone(),
        );
        registry.register(
            "projector_reads",
            "View reads answered, by read mode and by who answered",
            reads.clone(),
        );
        registry.register(
            "projector_rollout_rule",
            "Reads by the rollout rule that chose their mode",
            rules.clone(),
        );
        registry.register(
            "projector_read_seconds",
            "Read latency, request in to answer out",
            read_seconds.clone(),
        );
        registry.register(
            "projector_view_lookups",
            "Reads that consulted the projection: hit, absent or invalid",
            lookups.clone(),
        );
        registry.register(
            "projector_fallbacks",
            "Reads the projection could not answer, served by the source",
            fallbacks.clone(),
        );
        registry.register(
            "projector_snapshots",
            "Views stored from a source-of-truth answer (lazy population)",
            snapshots.clone(),
        );
        registry.register(
            "projector_source_errors",
            "Source-of-truth requests that failed after their retries",
            truth_errors.clone(),
        );
        registry.register(
            "projector_comparisons",
            "Comparisons of the projection's and the source's answers",
            comparisons.clone(),
        );
        registry.register(
            "projector_mismatches",
            "Differences found by comparisons, by reason",
            mismatches.clone(),
        );
        registry.register(
            "projector_consistency_waits",
            "Reads carrying a position token: reached or timeout",
            consistency_waits.clone(),
        );
        registry.register(
            "projector_ingested",
            "Events appended through POST /v1/events",
            ingested.clone(),
        );
        registry.register(
            "projector_ingest_duplicates",
            "Events posted again within the log's dedup window, not appended twice",
            ingest_duplicates.clone(),
        );
        registry.register(
            "projector_http_shed",
            "Requests answered 503 because [http] max_in_flight were being served",
            shed.clone(),
        );
        let deployer = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(EngineCollector::new(
            engine,
            feed,
            fetcher,
            lookups.clone(),
            deployer.clone(),
        )));
        Metrics {
            reads,
            read_seconds,
            lookups,
            rules,
            fallbacks,
            snapshots,
            truth_errors,
            comparisons,
            mismatches,
            consistency_waits,
            ingested,
            ingest_duplicates,
            shed,
            redriven,
            registry: Arc::new(registry),
            deployer,
        }
    }

    /// The exposition text, in OpenMetrics 1.0.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one view lookup of `plugin` with `result` (`hit`, `absent` or `invalid`).
    pub fn lookup(&self, plugin: &str, result: &str) {
        self.lookups
            .get_or_create(&ResultLabels {
                plugin: plugin.into(),
                result: result.into(),
            })
            .inc();
    }
}

/// What the reads of one plugin found, counted since start.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct ReadCounts {
    /// Reads that consulted the projection.
    pub(crate) lookups: u64,
    /// Of those, reads that found a Valid view.
    pub(crate) hits: u64,
    /// Reads served by the source of truth instead.
    pub(crate) fallbacks: u64,
    /// Reads compared with the source of truth.
    pub(crate) comparisons: u64,
    /// Of those, reads whose answers differed.
    pub(crate) mismatches: u64,
}

impl ReadCounts {
    /// Hits over lookups (`None` before the first lookup).
    pub(crate) fn hit_ratio(&self) -> Option<f64> {
        (self.lookups > 0).then(|| self.hits as f64 / self.lookups as f64)
    }
}

fn count<L>(family: &Family<L, Counter>, labels: &L) -> u64
where
    L: Clone + std::hash::Hash + Eq,
{
    family.get(labels).map_or(0, |c| c.get())
}

impl Metrics {
    /// The read counters of `plugin`, as `/metrics` shows them.
    pub(crate) fn read_counts(&self, plugin: &str) -> ReadCounts {
        read_counts(&self.lookups, &self.comparisons, &self.fallbacks, plugin)
    }
}

fn read_counts(
    lookups: &Family<ResultLabels, Counter>,
    comparisons: &Family<ResultLabels, Counter>,
    fallbacks: &Family<ReasonLabels, Counter>,
    plugin: &str,
) -> ReadCounts {
    let reason = |reason: &str| {
        count(
            fallbacks,
            &ReasonLabels {
                plugin: plugin.into(),
                reason: reason.into(),
            },
        )
    };
    let (hits, all) = lookup_counts(lookups, plugin);
    let mismatches = by_result(comparisons, plugin, "mismatch");
    ReadCounts {
        lookups: all,
        hits,
        fallbacks: reason("absent") + reason("invalid"),
        comparisons: mismatches + by_result(comparisons, plugin, "equal"),
        mismatches,
    }
}

fn by_result(family: &Family<ResultLabels, Counter>, plugin: &str, result: &str) -> u64 {
    count(
        family,
        &ResultLabels {
            plugin: plugin.into(),
            result: result.into(),
        },
    )
}

/// Hits and lookups of `plugin` so far.
pub(crate) fn lookup_counts(lookups: &Family<ResultLabels, Counter>, plugin: &str) -> (u64, u64) {
    let hits = by_result(lookups, plugin, "hit");
    let all = hits + by_result(lookups, plugin, "absent") + by_result(lookups, plugin, "invalid");
    (hits, all)
}
