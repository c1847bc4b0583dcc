//! Probation: a version deployed in replace mode is watched for its
//! first events, and the version it replaced is swapped back in if too
//! many of them fail.

use crate::registry::Registry;
use crate::{Deployer, Error};
use projector_core::engine::Projection;
use std::sync::Arc;

impl Deployer {
    /// Watch a version on probation: if too many of its first events fail,
    /// swap the version it replaced (still loaded) back in.
    pub(crate) fn watch(&self, name: &str, old: Arc<Projection>, id: &str) {
        let deploy = self.settings.deploy;
        if deploy.probation_events == 0 {
            return;
        }
        let (engine, stop) = (self.engine.clone(), self.shutdown.clone());
        let (name, id) = (name.to_string(), id.to_string());
        let population = self.population(&name);
        let base = match self.engine.projection(&name) {
            Ok(p) => p.counters(),
            Err(_) => return,
        };
        let thread = format!("probation-{name}");
        let spawned = self.spawn(thread, move || loop {
            if stop.wait(std::time::Duration::from_millis(10)) {
                return;
            }
            let Ok(p) = engine.projection(&name) else {
                return;
            };
            if p.code().id() != id {
                return; // another deploy took over
            }
            let now = p.counters();
            let seen = now.received.saturating_sub(base.received);
            let failed = now.dead_lettered.saturating_sub(base.dead_lettered);
            let ratio = failed as f64 / seen.max(1) as f64;
            // Decided early once the failures exceed what the whole
            // probation allows, else at its end.
            let budget = (deploy.max_failure_ratio * deploy.probation_events as f64) as u64;
            let done = seen >= deploy.probation_events;
            if failed > budget || (done && ratio > deploy.max_failure_ratio) {
                let reason = format!(
                    "{failed} of its first {seen} events failed (over {:.0} %)",
                    deploy.max_failure_ratio * 100.0
                );
                tracing::warn!(plugin = name, id = &id[..12], "{reason}: rolling back");
                let back = engine
                    .replace(old.code().clone(), population)
                    .map_err(Error::from)
                    .and_then(|()| Registry::open(engine.store()))
                    .and_then(|registry| {
                        registry.activate(&name, old.code().id(), true)?;
                        registry.mark_rolled_back(&name, &id, &reason)
                    });
                if let Err(e) = back {
                    tracing::error!(plugin = name, "automatic rollback failed: {e}");
                }
                return;
            }
            if done {
                tracing::info!(
                    plugin = name,
                    id = &id[..12],
                    seen,
                    failed,
                    "probation passed"
                );
                return;
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot watch a deploy on probation: {e}");
        }
    }
}
