//! Operator numbers over time: every second, per plugin, events applied
//! per second, lag, hit ratio and mismatch rate, kept in memory for the
//! last 15 minutes (for charts; `/metrics` stays the source for
//! Prometheus). Served at `GET /v1/admin/history`.

use crate::error::{ApiResult, Query};
use crate::metrics::ResultLabels;
use crate::state::ServeState;
use axum::extract::State;
use axum::Json;
use projector_host::sync::Recover;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Samples kept per plugin: 15 minutes at one a second.
pub(crate) const KEPT: usize = 900;

/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(1);

/// One plugin's numbers at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// When, in ms since the epoch.
    at_ms: i64,
    /// Deliveries applied per second since the previous sample.
    applied_per_s: f64,
    /// Records of the source not yet applied, over every partition.
    lag: u64,
    /// Hits over lookups since the previous sample (`None`: no lookup).
    hit_ratio: Option<f64>,
    /// Mismatches over comparisons since the previous sample (`None`: no comparison).
    mismatch_ratio: Option<f64>,
}

/// The counters a sample is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    applied: u64,
    hits: u64,
    lookups: u64,
    mismatches: u64,
    comparisons: u64,
}

/// Every plugin's recent samples.
#[derive(Default)]
pub(crate) struct History {
    plugins: Mutex<HashMap<String, (Totals, VecDeque<Sample>)>>,
}

impl History {
    /// Take one sample of every plugin.
    fn sample(&self, s: &ServeState, at_ms: i64, seconds: f64) {
        let feeds = s.feed.positions();
        let count = |family: &prometheus_client::metrics::family::Family<
            ResultLabels,
            prometheus_client::metrics::counter::Counter,
        >,
                     plugin: &str,
                     result: &str| {
            family
                .get(&ResultLabels {
                    plugin: plugin.into(),
                    result: result.into(),
                })
                .map_or(0, |c| c.get())
        };
        let mut plugins = self.plugins.lock().recover();
        let loaded: Vec<String> = s.plugin_names();
        plugins.retain(|name, _| loaded.contains(name));
        for name in loaded {
            let Ok(p) = s.engine.projection(&name) else {
                continue;
            };
            let m = &s.metrics;
            let now = Totals {
                applied: p.counters().applied,
                hits: count(&m.lookups, &name, "hit"),
                lookups: ["hit", "absent", "invalid"]
                    .iter()
                    .map(|r| count(&m.lookups, &name, r))
                    .sum(),
                mismatches: count(&m.comparisons, &name, "mismatch"),
                comparisons: ["equal", "mismatch"]
                    .iter()
                    .map(|r| count(&m.comparisons, &name, r))
                    .sum(),
            };
            let lag = feeds
                .iter()
                .flat_map(|(source, ends)| {
                    ends.iter()
                        .map(move |&(partition, end)| (source, partition, end))
                })
                .map(|(source, partition, end)| {
                    end.saturating_sub(s.engine.applied(&name, source, partition).unwrap_or(0))
                })
                .sum();
            let (before, samples) = plugins
                .entry(name)
                .or_insert_with(|| (now, VecDeque::new()));
            let ratio = |part: u64, all: u64| (all > 0).then(|| part as f64 / all as f64);
            let sample = Sample {
                at_ms,
                applied_per_s: now.applied.saturating_sub(before.applied) as f64 / seconds,
                lag,
                hit_ratio: ratio(
                    now.hits.saturating_sub(before.hits),
                    now.lookups.saturating_sub(before.lookups),
                ),
                mismatch_ratio: ratio(
                    now.mismatches.saturating_sub(before.mismatches),
                    now.comparisons.saturating_sub(before.comparisons),
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
    fn json(&self, plugin: Option<&str>) -> Value {
        let plugins = self.plugins.lock().recover();
        let mut out = serde_json::Map::new();
        for (name, (_, samples)) in plugins.iter() {
            if plugin.is_some_and(|p| p != name) {
                continue;
            }
            out.insert(name.clone(), json!(samples.iter().collect::<Vec<_>>()));
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
}

/// `GET /v1/admin/history`.
pub(crate) async fn history(
    State(s): State<Arc<ServeState>>,
    Query(params): Query<HistoryParams>,
) -> ApiResult<Json<Value>> {
    if let Some(p) = &params.plugin {
        s.plugin(p)?;
    }
    Ok(Json(s.history.json(params.plugin.as_deref())))
}
