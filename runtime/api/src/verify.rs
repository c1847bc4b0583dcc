//! Bulk verify (seed 002's compare tool): stored views against the source
//! of truth, through the plugin's comparison rule, for a sample of the
//! stored keys or the keys given; `repair` marks the mismatched views
//! Invalid, so that the next read or a backfill heals them.

use crate::error::{ApiError, ApiResult, Query};
use crate::state::{differences_json, ServeState};
use crate::truth::TruthError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use projector_core::engine::Projection;
use projector_deploy::{Verified, Verifier};
use projector_guest::rules::Status;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Most keys one verification takes.
pub(crate) const MAX_KEYS: usize = 1_000_000;

/// Most source-of-truth requests in flight at once.
const MAX_CONCURRENCY: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyParams {
    /// Stored keys to check, spread over the key space (default 1000),
    /// when the body names no keys.
    sample: Option<usize>,
    /// Mark the mismatched views Invalid.
    repair: Option<bool>,
    /// Source-of-truth requests in flight at once (default 8).
    concurrency: Option<usize>,
    /// Examples kept per outcome (default 10).
    examples: Option<usize>,
}

/// What one key turned out to be.
enum Outcome {
    Equal,
    Mismatched(Value),
    /// In the source of truth, not in the projection.
    MissingView,
    /// In the projection, not in the source of truth (it answered 404).
    MissingInTruth,
    /// Neither has it.
    AbsentBoth,
    /// The view is Invalid: it awaits a repair already.
    Invalid,
    Failed(String),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Equal => "equal",
            Outcome::Mismatched(_) => "mismatched",
            Outcome::MissingView => "missing_view",
            Outcome::MissingInTruth => "missing_in_source",
            Outcome::AbsentBoth => "absent_both",
            Outcome::Invalid => "invalid",
            Outcome::Failed(_) => "failed",
        }
    }
}

const OUTCOMES: [&str; 7] = [
    "equal",
    "mismatched",
    "missing_view",
    "missing_in_source",
    "absent_both",
    "invalid",
    "failed",
];

/// The view keys a request body names, one per line (blank lines skipped,
/// duplicates once, in order).
pub(crate) fn keys_of(body: &[u8]) -> ApiResult<Vec<String>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request("bad_keys", format!("keys: not UTF-8: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && seen.insert(*k))
        .map(str::to_string)
        .collect();
    if keys.len() > MAX_KEYS {
        return Err(ApiError::bad_request(
            "bad_keys",
            format!("{} keys: at most {MAX_KEYS} at once", keys.len()),
        ));
    }
    Ok(keys)
}

/// `POST /v1/admin/plugins/{plugin}/verify`: the body lists keys (one per
/// line), or is empty to sample the stored ones.
pub(crate) async fn verify(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<VerifyParams>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let started = Instant::now();
    s.plugin(&plugin)?.truth(&plugin, "to verify against")?;
    let concurrency = params.concurrency.unwrap_or(8);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("concurrency: expected 1 to {MAX_CONCURRENCY}, got {concurrency}"),
        ));
    }
    let keep = params.examples.unwrap_or(10).min(1000);
    let keys = if body.is_empty() {
        let sample = params.sample.unwrap_or(1000);
        if !(1..=MAX_KEYS).contains(&sample) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("sample: expected 1 to {MAX_KEYS} keys, got {sample}"),
            ));
        }
        let ns = s.engine.projection(&plugin)?.ns().to_string();
        let engine = s.engine.clone();
        // Views applied but not yet committed are sampled too.
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            engine.commit()?;
            Ok(engine.store().sample_view_keys(&ns, sample)?)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    } else {
        keys_of(&body)?
    };
    let repair = params.repair.unwrap_or(false);
    let now = projector_core::now_ms();
    let mut counts = [0u64; OUTCOMES.len()];
    let mut examples: Vec<Vec<Value>> = vec![Vec::new(); OUTCOMES.len()];
    let mut repaired = 0u64;
    let mut running = tokio::task::JoinSet::new();
    let mut keys = keys.into_iter();
    loop {
        while running.len() < concurrency {
            let Some(key) = keys.next() else { break };
            let (s, plugin) = (s.clone(), plugin.clone());
            running.spawn(async move {
                let outcome = check(&s, &plugin, &key, now).await;
                let repaired = match (&outcome, repair) {
                    (Outcome::Mismatched(_), true) => {
                        let engine = s.engine.clone();
                        let (p, k) = (plugin.clone(), key.clone());
                        matches!(
                            tokio::task::spawn_blocking(move || engine.invalidate(&p, &k)).await,
                            Ok(Ok(true))
                        )
                    }
                    _ => false,
                };
                (key, outcome, repaired)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (key, outcome, fixed) = done.map_err(ApiError::internal)?;
        let i = OUTCOMES
            .iter()
            .position(|o| *o == outcome.name())
            .expect("every outcome is listed");
        counts[i] += 1;
        repaired += u64::from(fixed);
        if examples[i].len() < keep && !matches!(outcome, Outcome::Equal) {
            examples[i].push(match outcome {
                Outcome::Mismatched(detail) => {
                    let mut detail = detail;
                    detail["key"] = json!(key);
                    detail
                }
                Outcome::Failed(error) => json!({"key": key, "error": error}),
                _ => json!(key),
            });
        }
    }
    let mut report = json!({
        "plugin": plugin,
        "keys": counts.iter().sum::<u64>(),
        "repaired": repaired,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let mut shown = serde_json::Map::new();
    for (i, name) in OUTCOMES.iter().enumerate() {
        report[*name] = json!(counts[i]);
        if *name != "equal" {
            shown.insert(
                (*name).to_string(),
                Value::Array(std::mem::take(&mut examples[i])),
            );
        }
    }
    report["examples"] = Value::Object(shown);
    Ok(Json(report))
}

/// Compare the serving view of `key` with the source of truth's answer.
async fn check(s: &Arc<ServeState>, plugin: &str, key: &str, now: i64) -> Outcome {
    match s.engine.projection(plugin) {
        Ok(generation) => check_in(s, generation, plugin, key, now).await,
        Err(_) => Outcome::Failed("the plugin was unloaded".into()),
    }
}

/// Compare `generation`'s view of `key` with the source of truth's
/// answer, by that generation's comparison rule.
async fn check_in(
    s: &Arc<ServeState>,
    generation: Arc<Projection>,
    plugin: &str,
    key: &str,
    now: i64,
) -> Outcome {
    let Ok(own) = s.plugin(plugin) else {
        return Outcome::Failed("the plugin was unloaded".into());
    };
    let Some(truth) = own.truth.as_ref() else {
        return Outcome::Failed("no source of truth".into());
    };
    let answer = match truth.fetch(key).await {
        Ok(text) => Some(text),
        Err(TruthError::NotFound { .. }) => None,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let (engine, k) = (s.engine.clone(), key.to_string());
    let judged = tokio::task::spawn_blocking(move || -> Result<Outcome, String> {
        let view = engine
            .read_in(&generation, &k, now)
            .map_err(|e| e.to_string())?;
        Ok(match (view, answer) {
            (None, Some(_)) => Outcome::MissingView,
            (None, None) => Outcome::AbsentBoth,
            (Some(v), _) if v.status == Status::Invalid => Outcome::Invalid,
            (Some(_), None) => Outcome::MissingInTruth,
            (Some(v), Some(truth)) => {
                let Some(body) = v.body else {
                    return Ok(Outcome::Invalid);
                };
                let differences = generation
                    .code()
                    .session()
                    .compare(&k, body.get(), &truth)
                    .map_err(|e| e.to_string())?;
                if differences.is_empty() {
                    Outcome::Equal
                } else {
                    Outcome::Mismatched(json!({
                        "differences": differences_json(&differences),
                        "projection": serde_json::from_str::<Value>(body.get()).unwrap_or(Value::Null),
                        "source": serde_json::from_str::<Value>(&truth).unwrap_or(Value::Null),
                    }))
                }
            }
        })
    })
    .await;
    match judged {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Source-of-truth requests in flight at once for a promotion gate.
const GATE_CONCURRENCY: usize = 8;

/// The promotion gates' verifier: a sample of a generation's views
/// against the plugin's source of truth, on the API's runtime.
pub(crate) struct TruthVerifier {
    pub(crate) state: Weak<ServeState>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Verifier for TruthVerifier {
    fn verify(
        &self,
        plugin: &str,
        generation: &Arc<Projection>,
        sample: usize,
    ) -> Option<anyhow::Result<Verified>> {
        let s = self.state.upgrade()?;
        s.plugin(plugin).ok()?.truth.as_ref()?;
        let (generation, plugin) = (generation.clone(), plugin.to_string());
        Some(self.runtime.block_on(async move {
            s.engine.commit()?;
            let keys = s.engine.store().sample_view_keys(generation.ns(), sample)?;
            let now = projector_core::now_ms();
            let mut out = Verified::default();
            let mut running = tokio::task::JoinSet::new();
            let mut keys = keys.into_iter();
            loop {
                while running.len() < GATE_CONCURRENCY {
                    let Some(key) = keys.next() else { break };
                    let (s, g, p) = (s.clone(), generation.clone(), plugin.clone());
                    running.spawn(async move { check_in(&s, g, &p, &key, now).await });
                }
                let Some(done) = running.join_next().await else {
                    break;
                };
                match done? {
                    Outcome::Equal => out.checked += 1,
                    Outcome::Mismatched(_) | Outcome::MissingView | Outcome::MissingInTruth => {
                        out.checked += 1;
                        out.mismatched += 1;
                    }
                    Outcome::Failed(_) => out.failed += 1,
                    Outcome::AbsentBoth | Outcome::Invalid => {}
                }
            }
            Ok(out)
        }))
    }
}
