//! Probation: a version deployed in replace mode (or the running version
//! reconfigured with other settings) renders a sample of the views it
//! inherits right after its swap, then is watched for its first events;
//! what ran before is swapped back in if too many of either fail.

use crate::registry::{Action, Registry, Settings};
use crate::{Deployer, Error, Result};
use projector_core::engine::{Engine, Projection};
use projector_guest::Population;
use std::sync::Arc;

/// Inherited views a replacing version renders right after its swap.
const RENDER_SAMPLE: usize = 100;

/// What a failed probation goes back to.
pub(crate) enum Before {
    /// A replace: the version that ran before, still loaded.
    Version(Arc<Projection>),
    /// A reconfigure: the same version as it ran before, still loaded,
    /// and the settings it had been deployed with.
    Settings(Arc<Projection>, Option<Settings>),
}

impl Before {
    /// The projection that ran before.
    pub(crate) fn projection(&self) -> &Arc<Projection> {
        match self {
            Before::Version(p) | Before::Settings(p, _) => p,
        }
    }
}

/// Swap `before` back in for version `id` of `name`, and note `reason`
/// in the registry: a version rolled back, or its settings restored.
fn roll_back(
    engine: &Engine,
    name: &str,
    before: &Before,
    id: &str,
    reason: &str,
    population: Option<Population>,
) -> Result<()> {
    let old = before.projection().code();
    engine.replace(old.clone(), population)?;
    let registry = Registry::open(engine.store())?;
    match before {
        Before::Version(_) => {
            registry.activate(name, old.id(), true)?;
            registry.mark_rolled_back(name, id, reason)
        }
        Before::Settings(_, settings) => {
            registry.set_settings(name, id, settings.as_ref())?;
            let reason = format!("its settings restored: {reason}");
            registry.record(name, Action::RuntimeRollback, id, None, Some(&reason))
        }
    }
}

impl Deployer {
    /// Render up to [`RENDER_SAMPLE`] of the views `name` inherits with
    /// version `id`, just swapped in. When more than `max_failure_ratio`
    /// of them fail, `before` is swapped back in as after a failed
    /// probation, and the version is rejected with the first failure.
    pub(crate) fn render_inherited(&self, name: &str, before: &Before, id: &str) -> Result<()> {
        let deploy = self.settings.deploy;
        if deploy.probation_events == 0 {
            return Ok(());
        }
        let new = self.engine.projection(name)?;
        let keys = self
            .engine
            .store()
            .sample_view_keys(new.ns(), RENDER_SAMPLE)
            .map_err(projector_core::engine::Error::from)?;
        let now = projector_core::now_ms();
        let (mut failed, mut first) = (0usize, None);
        for key in &keys {
            if let Err(e) = self.engine.read_in(&new, key, now) {
                failed += 1;
                first.get_or_insert_with(|| format!("{key:?}: {e}"));
            }
        }
        let ratio = failed as f64 / keys.len().max(1) as f64;
        let Some(first) = first.filter(|_| ratio > deploy.max_failure_ratio) else {
            return Ok(());
        };
        let reason = format!(
            "{failed} of {} inherited views failed to render (over {:.0} %), first {first}",
            keys.len(),
            deploy.max_failure_ratio * 100.0
        );
        tracing::warn!(plugin = name, id = &id[..12], "{reason}: rolling back");
        roll_back(
            &self.engine,
            name,
            before,
            id,
            &reason,
            self.population(name),
        )?;
        Err(Error::Rejected {
            name: name.into(),
            id: id[..12].into(),
            reason: format!("rolled back: {reason}"),
        })
    }

    /// Watch a version on probation: if too many of its first events fail,
    /// swap what ran before (still loaded) back in.
    pub(crate) fn watch(&self, name: &str, before: Before, id: &str) {
        let deploy = self.settings.deploy;
        if deploy.probation_events == 0 {
            return;
        }
        let (engine, stop) = (self.engine.clone(), self.shutdown.clone());
        let (name, id) = (name.to_string(), id.to_string());
        let population = self.population(&name);
        // The code on probation: a reconfigure keeps the version's id, so
        // another deploy taking over is told by the code itself.
        let (on_probation, base) = match self.engine.projection(&name) {
            Ok(p) => (p.code().clone(), p.counters()),
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
            if !Arc::ptr_eq(p.code(), &on_probation) {
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
                if let Err(e) = roll_back(&engine, &name, &before, &id, &reason, population) {
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
