//! `GET /v1/admin/overview`: every plugin's numbers now, in one answer
//! (what the console's overview shows): the version serving and how it
//! was deployed, population, deliveries, lag per partition, reads, the
//! breaker, and any shadow generation or build under way. The counters are
//! the ones `/metrics` exports.

use crate::error::ApiResult;
use crate::health::{breaker_json, events_json};
use crate::state::ServeState;
use axum::extract::State;
use axum::Json;
use projector_common::sync::Recover;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) async fn overview(State(s): State<Arc<ServeState>>) -> ApiResult<Json<Value>> {
    let s2 = s.clone();
    // The registry reads the store: off the async workers.
    let registry = tokio::task::spawn_blocking(move || {
        s2.deployer
            .as_ref()
            .map(|d| d.list())
            .transpose()
            .map(Option::unwrap_or_default)
    })
    .await
    .map_err(crate::ApiError::internal)??;
    let plugins: Vec<Value> = s
        .engine
        .projections()
        .iter()
        .map(|p| {
            let name = p.name();
            let reads = s.metrics.read_counts(name);
            let entry = registry.iter().find(|(n, _)| n == name).map(|(_, e)| e);
            // The version serving, as the registry recorded its deploy.
            let deployed = entry.and_then(|e| {
                e.versions
                    .iter()
                    .rev()
                    .find(|v| v.id == p.code().id())
                    .map(|v| json!({"deployed_ms": v.deployed_ms, "from": v.from}))
            });
            let (shadow, adding) = match &s.deployer {
                Some(d) => (d.shadow(name), d.adding(name)),
                None => (None, None),
            };
            let rollout = s
                .plugin(name)
                .ok()
                .map(|own| json!(**own.rollout.read().recover()));
            json!({
                "plugin": name,
                "id": p.code().id(),
                "version": p.code().info().version,
                "deployed": deployed,
                "versions": entry.map_or(0, |e| e.versions.len()),
                "population": format!("{:?}", p.population()).to_lowercase(),
                "ttl_ms": p.ttl_ms(),
                "events": events_json(p),
                "retried": p.retried(),
                "reads": reads,
                "hit_ratio": reads.hit_ratio(),
                "lag": s.feed.lags(&s.engine, name),
                "breaker": breaker_json(p),
                "rollout": rollout,
                "shadow": shadow,
                // After a promotion, the version whose generation is kept
                // current beside the serving one for a rollback.
                "kept": entry.filter(|e| e.promoted).and_then(|e| e.shadow.clone()),
                "adding": adding,
            })
        })
        .collect();
    Ok(Json(json!({
        "at_ms": projector_core::now_ms(),
        "ready": s.ready.load(std::sync::atomic::Ordering::Relaxed),
        "retry_queue": s.engine.store().retry_count(),
        "plugins": plugins,
        "services": services(&s),
    })))
}

/// Each enrichment service's counts since start, and its breaker now.
fn services(s: &ServeState) -> Vec<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(fetcher) = &s.fetcher else {
        return Vec::new();
    };
    fetcher
        .stats()
        .iter()
        .map(|(name, st)| {
            json!({
                "service": name,
                "fetches": st.fetches.load(Relaxed),
                "requests": st.requests.load(Relaxed),
                "errors": st.errors.load(Relaxed),
                "cache_hits": st.cache_hits.load(Relaxed),
                "in_flight": st.in_flight.load(Relaxed),
                "coalesced": st.coalesced.load(Relaxed),
                "prefetched": st.prefetched.load(Relaxed),
                "batched": st.batched.load(Relaxed),
                "from_record": st.from_record.load(Relaxed),
                "refused": st.refused.load(Relaxed),
                "breaker": if st.breaker_open.load(Relaxed) { "open" } else { "closed" },
                "breaker_opened": st.breaker_opened.load(Relaxed),
                "p99_micros": st.latency_quantile_micros(0.99),
            })
        })
        .collect()
}
