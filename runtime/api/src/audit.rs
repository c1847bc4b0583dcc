//! The audit, readable: which version of a plugin applied which offsets
//! of each partition, per generation of its views (the one serving reads,
//! and a shadow or kept one beside it).

use crate::error::{ApiError, ApiResult};
use crate::state::ServeState;
use axum::extract::{Path, State};
use axum::Json;
use projector_core::engine::Projection;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// `GET /v1/admin/plugins/{plugin}/audit`.
pub(crate) async fn plugin_audit(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    s.plugin(&plugin)?;
    let active = s.engine.projection(&plugin)?;
    let entry = match &s.deployer {
        Some(d) => d.registry.entry(&plugin)?,
        None => None,
    };
    // After a promotion, the generation beside the serving one is the old
    // version's, kept for a rollback.
    let kept = entry
        .as_ref()
        .filter(|e| e.promoted)
        .and_then(|e| e.shadow_ns.clone());
    // What the registry knows of each version: when and where from.
    let known: HashMap<String, Value> = entry
        .into_iter()
        .flat_map(|e| e.versions)
        .map(|v| {
            let about = json!({"deployed_ms": v.deployed_ms, "from": v.from});
            (v.id, about)
        })
        .collect();
    let mut generations = vec![generation(&s, &active, "active", &known)?];
    for shadow in s.engine.shadows(&plugin) {
        let role = match kept.as_deref() == Some(shadow.ns()) {
            true => "kept",
            false => "shadow",
        };
        generations.push(generation(&s, &shadow, role, &known)?);
    }
    Ok(Json(json!({"plugin": plugin, "generations": generations})))
}

/// One generation's runs, in (source, partition, from) order.
fn generation(
    s: &ServeState,
    p: &Projection,
    role: &str,
    known: &HashMap<String, Value>,
) -> ApiResult<Value> {
    let runs: Vec<Value> = s
        .engine
        .store()
        .audit(p.ns())
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|run| {
            let about = known.get(&run.version).cloned().unwrap_or(Value::Null);
            json!({
                "source": run.source, "partition": run.partition,
                "from": run.from, "next": run.next, "records": run.next - run.from,
                "version": run.version, "deployed_ms": about["deployed_ms"], "from_file": about["from"],
            })
        })
        .collect();
    Ok(json!({"role": role, "ns": p.ns(), "version": p.code().id(), "runs": runs}))
}
