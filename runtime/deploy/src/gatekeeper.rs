//! The gatekeeper of a gated shadow deploy: a thread that, every
//! `check_ms`, gathers the gate's figures (a comparison with the live
//! generation, a verification against the source of truth, failures on
//! both sides since the shadow joined the live path), promotes the shadow
//! once every condition holds, then watches the promoted version for its
//! window and rolls it back by itself on a spike. Each decision (held,
//! promoted, passed, rolled back) is written to the plugin's history with
//! its figures and counted; an operator's own promote, rollback or retire
//! ends the gate.

use crate::build::ShadowBuild;
use crate::gate::{self, Deliveries, Figures, GateStatus, PromoteConfig, Window};
use crate::registry::Action;
use crate::Deployer;
use projector_common::sync::Recover;
use projector_core::engine::Projection;
use projector_core::store::Counters;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A decision of a gate, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// A condition held the shadow back.
    Held,
    /// The gate promoted the shadow.
    Promoted,
    /// The watch window ended without a spike.
    Passed,
    /// The watch rolled the promoted version back.
    RolledBack,
}

impl Decision {
    /// Every decision, in the order shown.
    pub const ALL: [Decision; 4] = [
        Decision::Held,
        Decision::Promoted,
        Decision::Passed,
        Decision::RolledBack,
    ];

    /// Its name in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Held => "held",
            Decision::Promoted => "promoted",
            Decision::Passed => "passed",
            Decision::RolledBack => "rolled_back",
        }
    }
}

/// A generation's counters and retries at one moment.
type Snap = (Counters, u64);

/// When a phase began, with both generations' counters then.
type Began = (Instant, Snap, Snap);

/// A generation's counters and retries now.
fn snap(p: &Projection) -> Snap {
    (p.counters(), p.retried())
}

/// How a gate's loop goes on.
enum Step {
    Wait,
    Done,
}

impl Deployer {
    /// Start the gate of `name`'s shadow `build` with `cfg`.
    pub(crate) fn keep_gate(
        self: &Arc<Self>,
        name: &str,
        build: Arc<ShadowBuild>,
        cfg: PromoteConfig,
    ) {
        build.set_gate(GateStatus {
            state: "building",
            conditions: Vec::new(),
            checked_ms: projector_core::now_ms(),
            config: cfg.clone(),
        });
        let (me, name) = (self.clone(), name.to_string());
        let spawned = self.spawn(format!("gate-{name}"), move || {
            me.run_gate(&name, &build, &cfg);
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a promotion gate: {e}");
        }
    }

    /// Count a gate's decision for `name`.
    fn decided(&self, name: &str, d: Decision) {
        *self
            .decisions
            .lock()
            .recover()
            .entry((name.to_string(), d))
            .or_default() += 1;
    }

    /// Gate decisions by plugin and kind, since start.
    pub fn gate_decisions(&self) -> Vec<(String, Decision, u64)> {
        self.decisions
            .lock()
            .recover()
            .iter()
            .map(|((p, d), n)| (p.clone(), *d, *n))
            .collect()
    }

    /// Verify `sample` of `generation`'s views against the source of truth
    /// (when the plugin has one and a verifier is given) into `window`,
    /// which keeps at least `keep` keys.
    fn verify_into(
        &self,
        name: &str,
        generation: &Arc<Projection>,
        sample: usize,
        window: &mut Option<Window>,
        keep: u64,
    ) {
        let Some(v) = self.verifier.get() else {
            return;
        };
        match v.verify(name, generation, sample) {
            Some(Ok(r)) => {
                window
                    .get_or_insert_with(Window::default)
                    .push(r.checked, r.mismatched, keep)
            }
            Some(Err(e)) => tracing::warn!(plugin = name, "promotion gate: verifying: {e:#}"),
            None => {}
        }
    }

    /// Whether `build` is still `name`'s shadow build.
    fn current(&self, name: &str, build: &Arc<ShadowBuild>) -> bool {
        self.shadows
            .lock()
            .recover()
            .get(name)
            .is_some_and(|b| Arc::ptr_eq(b, build))
    }

    fn run_gate(&self, name: &str, build: &Arc<ShadowBuild>, cfg: &PromoteConfig) {
        let mut before = Before::default();
        self.every_check(cfg, name, "promotion gate", |me| {
            me.check_before(name, build, cfg, &mut before)
        });
        if build.gate_state() == Some("watching") {
            let mut after = After::default();
            self.every_check(cfg, name, "promotion watch", |me| {
                me.check_after(name, build, cfg, &mut after)
            });
        }
    }

    /// Run `check` every `check_ms` until it is done or the deployer stops.
    fn every_check(
        &self,
        cfg: &PromoteConfig,
        name: &str,
        what: &str,
        mut check: impl FnMut(&Self) -> crate::Result<Step>,
    ) {
        while !self.shutdown.wait(Duration::from_millis(cfg.check_ms)) {
            match check(self) {
                Ok(Step::Done) => break,
                Ok(Step::Wait) => {}
                Err(e) => tracing::warn!(plugin = name, "{what}: {e}"),
            }
        }
    }

    /// One check before promotion.
    fn check_before(
        &self,
        name: &str,
        build: &Arc<ShadowBuild>,
        cfg: &PromoteConfig,
        b: &mut Before,
    ) -> crate::Result<Step> {
        let live = self.engine.projection(name)?;
        let shadow = &build.generation;
        if !self.current(name, build) || build.error.lock().recover().is_some() {
            build.stop_gate();
            return Ok(Step::Done);
        }
        if live.ns() == shadow.ns() {
            // An operator promoted it.
            build.stop_gate();
            return Ok(Step::Done);
        }
        if shadow.is_building() {
            build.update_gate("building", Vec::new());
            return Ok(Step::Wait);
        }
        let (since, shadow0, live0) = *b
            .joined
            .get_or_insert_with(|| (Instant::now(), snap(shadow), snap(&live)));
        let c = self.compare_build(name, build, cfg.sample_keys)?;
        b.compared
            .push(c.compared, c.mismatched + c.missing, cfg.min_keys);
        self.verify_into(name, shadow, cfg.sample_keys, &mut b.truth, cfg.min_keys);
        let figures = Figures {
            followed_ms: since.elapsed().as_millis() as u64,
            candidate: Deliveries::between(shadow0, snap(shadow)),
            other: Deliveries::between(live0, snap(&live)),
            compared: b.compared.clone(),
            truth: b.truth.clone(),
        };
        let conditions = gate::judge(cfg, &figures);
        let why = gate::failing(&conditions);
        if why.is_empty() {
            let reason = format!("the promotion gate passed: {}", said(&conditions));
            // The gate judged failures itself, with its margin.
            match self.promote_with(name, Some(build), true, Some(&reason)) {
                Ok(_) => {
                    self.decided(name, Decision::Promoted);
                    tracing::info!(plugin = name, "{reason}");
                    build.update_gate("watching", conditions);
                    return Ok(Step::Done);
                }
                Err(e) => {
                    // Held by the promotion's own check, or raced by an operator.
                    tracing::warn!(plugin = name, "promotion gate: promoting: {e}");
                }
            }
        }
        let holding = gate::holding(&conditions);
        if holding.is_empty() {
            build.update_gate("checking", conditions);
            b.recorded.clear();
            return Ok(Step::Wait);
        }
        if holding != b.recorded {
            // A new reason to hold it back: written down once.
            let reason = format!("held by the promotion gate: {}", why.join("; "));
            let serving = live.code().id().to_string();
            if !self.current(name, build) {
                return Ok(Step::Done);
            }
            self.registry
                .record(name, Action::Held, &build.id, Some(&serving), Some(&reason))?;
            self.decided(name, Decision::Held);
            tracing::warn!(plugin = name, "{reason}");
            b.recorded = holding;
        }
        build.update_gate("held", conditions);
        Ok(Step::Wait)
    }

    /// One check of the watch window after promotion.
    fn check_after(
        &self,
        name: &str,
        build: &Arc<ShadowBuild>,
        cfg: &PromoteConfig,
        a: &mut After,
    ) -> crate::Result<Step> {
        let serving = self.engine.projection(name)?;
        let new = &build.generation;
        let old = self
            .engine
            .shadows(name)
            .into_iter()
            .find(|p| p.ns() != new.ns());
        let (Some(old), true) = (old, serving.ns() == new.ns() && self.current(name, build)) else {
            // Rolled back or retired by an operator.
            build.stop_gate();
            return Ok(Step::Done);
        };
        let (since, new0, old0) = *a
            .promoted
            .get_or_insert_with(|| (Instant::now(), snap(new), snap(&old)));
        let keep = cfg.sample_keys as u64;
        self.verify_into(name, new, cfg.sample_keys, &mut a.truth, keep);
        let figures = Figures {
            followed_ms: since.elapsed().as_millis() as u64,
            candidate: Deliveries::between(new0, snap(new)),
            other: Deliveries::between(old0, snap(&old)),
            compared: Window::default(),
            truth: a.truth.clone(),
        };
        let conditions = gate::watch(cfg, &figures);
        let why = gate::failing(&conditions);
        if !why.is_empty() {
            let reason = format!(
                "rolled back by the promotion watch after {:.1} s and {} events: {}",
                figures.followed_ms as f64 / 1000.0,
                figures.candidate.received,
                why.join("; ")
            );
            let _one = self.busy.lock().recover();
            // An operator may have acted since the figures were taken.
            let still = self.current(name, build)
                && self.engine.projection(name)?.ns() == build.generation.ns();
            if !still {
                build.stop_gate();
                return Ok(Step::Done);
            }
            self.demote(name, build, Action::RuntimeRollback, Some(&reason))?;
            self.decided(name, Decision::RolledBack);
            tracing::warn!(plugin = name, "{reason}");
            build.update_gate("rolled_back", conditions);
            return Ok(Step::Done);
        }
        if gate::watched(cfg, &figures) {
            let reason = format!(
                "passed the promotion watch ({:.1} s, {} events): {}",
                figures.followed_ms as f64 / 1000.0,
                figures.candidate.received,
                said(&conditions)
            );
            self.registry
                .record(name, Action::Watched, &build.id, None, Some(&reason))?;
            self.decided(name, Decision::Passed);
            tracing::info!(plugin = name, "{reason}");
            build.update_gate("passed", conditions);
            return Ok(Step::Done);
        }
        build.update_gate("watching", conditions);
        Ok(Step::Wait)
    }
}

/// The conditions that apply, in words.
fn said(conditions: &[gate::Condition]) -> String {
    conditions
        .iter()
        .filter(|c| c.ok.is_some())
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the gate keeps between checks before promotion.
#[derive(Default)]
struct Before {
    /// When the shadow was first seen following, with both generations'
    /// counters then.
    joined: Option<Began>,
    compared: Window,
    truth: Option<Window>,
    /// The holding conditions last written to the history.
    recorded: Vec<&'static str>,
}

/// What the watch keeps between checks after promotion.
#[derive(Default)]
struct After {
    promoted: Option<Began>,
    truth: Option<Window>,
}
