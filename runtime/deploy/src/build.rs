//! A shadow build's state and what it tells: the records done of the
//! total, the rate and the time left ([`ShadowStatus`]), and the size of
//! the slices a rebuild applies at a time ([`Slice`]). The deployer's
//! shadow code (`shadow.rs`) drives the build; this file only keeps and
//! reports it.

use crate::compare::Comparison;
use crate::gate::{Condition, GateStatus};
use crate::shadow::ShadowMethod;
use projector_common::sync::Recover;
use projector_core::engine::Projection;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// A shadow generation being built or kept beside the live one.
pub(crate) struct ShadowBuild {
    pub(crate) id: String,
    pub(crate) method: ShadowMethod,
    /// Views migrated and left absent (migrate).
    pub(crate) migrated: Mutex<Option<(u64, u64)>>,
    pub(crate) generation: Arc<Projection>,
    pub(crate) started: std::time::Instant,
    pub(crate) done: std::sync::atomic::AtomicU64,
    pub(crate) total: std::sync::atomic::AtomicU64,
    pub(crate) error: Mutex<Option<String>>,
    pub(crate) comparison: Mutex<Option<Comparison>>,
    /// Its promotion gate, when the deploy is gated.
    pub(crate) gate: Mutex<Option<GateStatus>>,
}

impl ShadowBuild {
    /// Give it a gate.
    pub(crate) fn set_gate(&self, status: GateStatus) {
        *self.gate.lock().recover() = Some(status);
    }

    /// The gate's state and last check.
    pub(crate) fn update_gate(&self, state: &'static str, conditions: Vec<Condition>) {
        if let Some(g) = self.gate.lock().recover().as_mut() {
            g.state = state;
            g.conditions = conditions;
            g.checked_ms = projector_core::now_ms();
        }
    }

    /// The gate stopped: an operator acted (promoted, rolled back, retired).
    pub(crate) fn stop_gate(&self) {
        if let Some(g) = self.gate.lock().recover().as_mut() {
            g.state = "stopped";
        }
    }

    /// The gate's state, if gated.
    pub(crate) fn gate_state(&self) -> Option<&'static str> {
        self.gate.lock().recover().as_ref().map(|g| g.state)
    }

    /// Where the build is: `building`, `following` or `failed: ...`.
    pub(crate) fn status(&self, name: &str) -> ShadowStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let error = self.error.lock().recover().clone();
        let comparison = self.comparison.lock().recover().clone();
        let migrated = *self.migrated.lock().recover();
        let done = self.done.load(Relaxed);
        let building = self.generation.is_building();
        // While building, the join with the live path is still to come:
        // `done` never reaches `total`, nor the percentage 100.
        let total = match building {
            true => self.total.load(Relaxed).max(done + 1),
            false => self.total.load(Relaxed).max(done),
        };
        let secs = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-3);
        ShadowStatus {
            plugin: name.into(),
            id: self.id.clone(),
            ns: self.generation.ns().into(),
            phase: match (error, building) {
                (Some(e), _) => format!("failed: {e}"),
                (None, true) => "building".into(),
                (None, false) => "following".into(),
            },
            done,
            total,
            percent: match (building, total) {
                (true, _) => (done as f64 * 100.0 / total as f64).min(99.0),
                (false, 0) => 100.0,
                (false, _) => done as f64 * 100.0 / total as f64,
            },
            events_per_s: rate,
            eta_s: (building && done > 0).then(|| (total - done) as f64 / rate),
            comparison,
            method: self.method,
            migrated: migrated.map(|m| m.0),
            not_migrated: migrated.map(|m| m.1),
            held: None,
            gate: self.gate.lock().recover().clone(),
        }
    }

    /// A build of `generation` (version `id`), started now.
    pub(crate) fn new(id: String, method: ShadowMethod, generation: Arc<Projection>) -> Self {
        ShadowBuild {
            id,
            method,
            migrated: Mutex::new(None),
            generation,
            started: std::time::Instant::now(),
            done: std::sync::atomic::AtomicU64::new(0),
            total: std::sync::atomic::AtomicU64::new(0),
            error: Mutex::new(None),
            comparison: Mutex::new(None),
            gate: Mutex::new(None),
        }
    }
}

/// Where a shadow deploy is.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    /// Name of the plugin.
    pub plugin: String,
    /// Content id of the shadow version (SHA-256 of its `.wasm`, hex).
    pub id: String,
    /// The generation's namespace.
    pub ns: String,
    /// `building`, `following`, `promoted` or `failed: ...`.
    pub phase: String,
    /// Records rebuilt of the total to rebuild.
    pub done: u64,
    /// Records to rebuild (or views to migrate) in all: where the live
    /// path is, less where the generation started, per partition, summed.
    /// `done` reaches it only once built.
    pub total: u64,
    /// `done` over `total`, in percent: at most 99 while building, 100
    /// once built.
    pub percent: f64,
    /// Records (or views) processed per second since the build started.
    pub events_per_s: f64,
    /// Seconds left at that rate while building (`None` until a record
    /// is applied, and once built).
    pub eta_s: Option<f64>,
    /// The last comparison of the two generations, if one was made.
    pub comparison: Option<Comparison>,
    /// How the generation gets its views (`auto` resolved to rebuild or migrate).
    pub method: ShadowMethod,
    /// Views migrated, and views left absent to populate from the source.
    pub migrated: Option<u64>,
    /// Views left absent, to populate from the source (migrate only).
    pub not_migrated: Option<u64>,
    /// Why a promotion is refused without `force`: the generation
    /// dead-letters a larger share of its deliveries than the serving one.
    pub held: Option<String>,
    /// Its promotion gate (a gated deploy): the state and the last
    /// check's conditions.
    pub gate: Option<GateStatus>,
}

/// How many records a build applies at a time: as many as take about
/// [`Slice::TARGET`], so a live batch waits about that long at most and
/// progress moves as the build does (a slow plugin's events go one by
/// one).
pub(crate) struct Slice {
    pub(crate) records: usize,
}

impl Default for Slice {
    fn default() -> Self {
        Slice { records: 1 }
    }
}

impl Slice {
    pub(crate) const TARGET: std::time::Duration = std::time::Duration::from_millis(50);
    pub(crate) const MAX: usize = 4096;

    /// A chunk of `records` took `elapsed`: the next ones are sized to
    /// take about `TARGET` at that rate (growing twofold at most).
    pub(crate) fn took(&mut self, records: usize, elapsed: std::time::Duration) {
        let fit = records as f64 * Self::TARGET.as_secs_f64() / elapsed.as_secs_f64().max(1e-6);
        self.records = (fit as usize).clamp(1, (records * 2).min(Self::MAX));
    }
}
