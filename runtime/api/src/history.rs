//! Operator numbers over time: every second, per plugin, events applied
//! per second, lag, hit ratio and mismatch rate, kept in memory for the
//! last 15 minutes (for charts; `/metrics` stays the source for
//! Prometheus). Served at `GET /v1/admin/history`.

use crate::error::{ApiResult, Query};
use crate::metrics::ReadCounts;
use crate::state::ServeState;
use axum::extract::State;
use axum::Json;
use projector_common::sync::Recover;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Samples kept per plugin: 15 minutes at one a second.
pub(crate) const KEPT: usize = 900;

/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(1);

/// One plugin's numbers at one moment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// When, in ms since the epoch.
    at_ms: i64,
    /// Deliveries applied per second since the previous sample.
    applied_per_s: f64,
    /// Records of the source not yet applied, over every partition.
    lag: u64,
    /// The same, per partition (`source/partition`).
    lags: BTreeMap<String, u64>,
    /// Hits over lookups since the previous sample (`None`: no lookup).
    hit_ratio: Option<f64>,
    /// Mismatches over comparisons since the previous sample (`None`: no comparison).
    mismatch_ratio: Option<f64>,
}

/// The counters a sample is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    applied: u64,
    reads: ReadCounts,
}

/// Every plugin's recent samples.
#[derive(Default)]
pub(crate) struct History {
    plugins: Mutex<HashMap<String, (Totals, VecDeque<Sample>)>>,
}

impl History {
    /// Take one sample of every plugin.
    fn sample(&self, s: &ServeState, at_ms: i64, seconds: f64) {
        let mut plugins = self.plugins.lock().recover();
        let loaded: Vec<String> = s.plugin_names();
        plugins.retain(|name, _| loaded.contains(name));
        for name in loaded {
            let Ok(p) = s.engine.projection(&name) else {
                continue;
            };
            let now = Totals {
                applied: p.counters().applied,
                reads: s.metrics.read_counts(&name),
            };
            let lags: BTreeMap<String, u64> = s
                .feed
                .lags(&s.engine, &name)
                .into_iter()
                .map(|l| (format!("{}/{}", l.source, l.partition), l.lag))
                .collect();
            let (before, samples) = plugins
                .entry(name)
                .or_insert_with(|| (now, VecDeque::new()));
            let ratio = |part: u64, all: u64| (all > 0).then(|| part as f64 / all as f64);
            let (r, b) = (&now.reads, &before.reads);
            let sample = Sample {
                at_ms,
                applied_per_s: now.applied.saturating_sub(before.applied) as f64 / seconds,
                lag: lags.values().sum(),
                lags,
                hit_ratio: ratio(
                    r.hits.saturating_sub(b.hits),
                    r.lookups.saturating_sub(b.lookups),
                ),
                mismatch_ratio: ratio(
                    r.mismatches.saturating_sub(b.mismatches),
                    r.comparisons.saturating_sub(b.comparisons),
                ),
            };
            if samples.len() == KEPT {
                samples.pop_front();
            }
            samples.push_back(sample);
            *before = now;
        }
    }

    /// The samples of `plugin` (every plugin's with `None`), oldest first.
    /// Only samples taken after `since_ms`, if given.
    fn json(&self, plugin: Option<&str>, since_ms: Option<i64>) -> Value {
        let plugins = self.plugins.lock().recover();
        let mut out = serde_json::Map::new();
        for (name, (_, samples)) in plugins.iter() {
            if plugin.is_some_and(|p| p != name) {
                continue;
            }
            let after = since_ms.unwrap_or(i64::MIN);
            let newer: Vec<&Sample> = samples.iter().filter(|s| s.at_ms > after).collect();
            out.insert(name.clone(), json!(newer));
        }
        json!({"every_ms": EVERY.as_millis() as u64, "plugins": out})
    }
}

/// Sample every second on the API's runtime, for as long as it runs.
pub(crate) fn start(s: &Arc<ServeState>) {
    let s = s.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = std::time::Instant::now();
        loop {
            tick.tick().await;
            let seconds = last.elapsed().as_secs_f64().max(1e-3);
            last = std::time::Instant::now();
            s.history.sample(&s, projector_core::now_ms(), seconds);
        }
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    /// Only this plugin's samples.
    plugin: Option<String>,
    /// Only samples taken after this time (ms since the epoch): what a
    /// console polling the route has not seen yet.
    since_ms: Option<i64>,
}

/// `GET /v1/admin/history`.
pub(crate) async fn history(
    State(s): State<Arc<ServeState>>,
    Query(params): Query<HistoryParams>,
) -> ApiResult<Json<Value>> {
    if let Some(p) = &params.plugin {
        s.plugin(p)?;
    }
    Ok(Json(
        s.history.json(params.plugin.as_deref(), params.since_ms),
    ))
}
