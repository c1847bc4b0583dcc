//! Gated promotion: what `[plugins.NAME.promote]` asks of a shadow
//! generation before it promotes itself, and of a promoted one during its
//! watch window; the figures a check gathers ([`Figures`]) and the verdict
//! made of them ([`judge`], [`watch`]). The gatekeeper (`gatekeeper.rs`)
//! gathers the figures and acts; this file only decides.

use projector_core::store::Counters;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// Who promotes a shadow generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromoteMode {
    /// An operator, by hand (the default).
    #[default]
    Manual,
    /// The runtime, once the gate's conditions hold; then it watches the
    /// promoted version and rolls it back by itself on a spike.
    Gated,
}

impl std::str::FromStr for PromoteMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "manual" => Ok(PromoteMode::Manual),
            "gated" => Ok(PromoteMode::Gated),
            other => Err(format!("promote: expected manual or gated, got {other:?}")),
        }
    }
}

/// `[plugins.NAME.promote]`: when a shadow generation promotes itself,
/// and how the promoted version is watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromoteConfig {
    /// `manual` (the default) or `gated`.
    pub mode: PromoteMode,
    /// Keys compared with the live generation (and verified against the
    /// source of truth) per check.
    pub sample_keys: usize,
    /// Keys compared over the rolling window before the gate decides.
    pub min_keys: u64,
    /// The share of compared keys that may differ from the live
    /// generation (or exist in one of them only).
    pub max_mismatch: f64,
    /// The share of verified keys that may differ from the source of
    /// truth (where the plugin has one).
    pub max_truth_mismatch: f64,
    /// How much higher than the live version's the share of deliveries
    /// dead-lettered or retried may be.
    pub max_failure_margin: f64,
    /// Time the shadow must have followed the live path, in ms.
    pub min_follow_ms: u64,
    /// Live events it must have received meanwhile.
    pub min_events: u64,
    /// Time between two checks, in ms.
    pub check_ms: u64,
    /// After a promotion, how long the new version is watched (ms) ...
    pub watch_ms: u64,
    /// ... and for how many events at least.
    pub watch_events: u64,
}

impl Default for PromoteConfig {
    fn default() -> Self {
        PromoteConfig {
            mode: PromoteMode::Manual,
            sample_keys: 100,
            min_keys: 300,
            max_mismatch: 0.01,
            max_truth_mismatch: 0.01,
            max_failure_margin: 0.001,
            min_follow_ms: 60_000,
            min_events: 1_000,
            check_ms: 5_000,
            watch_ms: 300_000,
            watch_events: 10_000,
        }
    }
}

impl PromoteConfig {
    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        for (name, share) in [
            ("max_mismatch", self.max_mismatch),
            ("max_truth_mismatch", self.max_truth_mismatch),
            ("max_failure_margin", self.max_failure_margin),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!(
                    "promote.{name}: expected a share from 0 to 1, got {share}"
                ));
            }
        }
        if self.sample_keys == 0 {
            return Err("promote.sample_keys: expected at least 1".into());
        }
        if self.check_ms < 100 {
            return Err(format!(
                "promote.check_ms: expected at least 100, got {}",
                self.check_ms
            ));
        }
        Ok(())
    }
}

/// A verification of views against the source of truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Keys whose view and source answer were both read and compared
    /// (or one of them was absent).
    pub checked: u64,
    /// Of those, how many differ (by the plugin's rule) or exist on one
    /// side only.
    pub mismatched: u64,
    /// Keys the source of truth could not answer (not counted above).
    pub failed: u64,
}

/// Verifies views of a generation against the plugin's source of truth:
/// given to the deployer by the layer that knows the sources of truth
/// (the HTTP API).
pub trait Verifier: Send + Sync {
    /// Verify up to `sample` views of `generation` (of plugin `plugin`);
    /// `None` when the plugin has no source of truth.
    fn verify(
        &self,
        plugin: &str,
        generation: &Arc<projector_core::engine::Projection>,
        sample: usize,
    ) -> Option<anyhow::Result<Verified>>;
}

/// Counts over the last checks, the oldest dropped while the rest still
/// hold `min` keys: a rolling sample.
#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    checks: VecDeque<(u64, u64)>,
}

impl Window {
    /// Add a check's `(keys, bad)`, keeping at least `min` keys.
    pub(crate) fn push(&mut self, keys: u64, bad: u64, min: u64) {
        self.checks.push_back((keys, bad));
        while let Some(&(oldest, _)) = self.checks.front() {
            if self.keys() - oldest < min.max(1) {
                break;
            }
            self.checks.pop_front();
        }
    }

    /// Keys over the window.
    pub(crate) fn keys(&self) -> u64 {
        self.checks.iter().map(|c| c.0).sum()
    }

    /// Bad keys over the window.
    pub(crate) fn bad(&self) -> u64 {
        self.checks.iter().map(|c| c.1).sum()
    }

    fn share(&self) -> f64 {
        self.bad() as f64 / self.keys().max(1) as f64
    }
}

/// Deliveries, and those that failed (dead-lettered or retried), of one
/// generation since a point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deliveries {
    pub(crate) received: u64,
    pub(crate) failed: u64,
}

impl Deliveries {
    /// What happened between `before` and `now` (counters and retries).
    pub(crate) fn between(before: (Counters, u64), now: (Counters, u64)) -> Self {
        Deliveries {
            received: now.0.received.saturating_sub(before.0.received),
            failed: (now.0.dead_lettered + now.1).saturating_sub(before.0.dead_lettered + before.1),
        }
    }

    fn share(&self) -> f64 {
        self.failed as f64 / self.received.max(1) as f64
    }
}

/// What one check saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// Time since the shadow joined the live path (or since promotion).
    pub(crate) followed_ms: u64,
    /// The candidate's deliveries over that time.
    pub(crate) candidate: Deliveries,
    /// The other generation's (the live one; after a promotion, the old one).
    pub(crate) other: Deliveries,
    /// Comparisons with the other generation, rolling.
    pub(crate) compared: Window,
    /// Verifications against the source of truth, rolling; `None`: the
    /// plugin has none (or no verifier is given).
    pub(crate) truth: Option<Window>,
}

/// One condition of the gate, as shown and recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// `followed`, `compared`, `truth` or `failures`.
    pub name: &'static str,
    /// Whether it holds (`None`: not applicable, e.g. no source of truth).
    pub ok: Option<bool>,
    /// It does not hold only for want of time, events or keys yet: the
    /// gate is still gathering, not holding the version back.
    pub pending: bool,
    /// The figures, in words.
    pub detail: String,
}

/// The gate's verdict on the figures of a check before promotion: each
/// condition, all of which must hold.
pub(crate) fn judge(cfg: &PromoteConfig, f: &Figures) -> Vec<Condition> {
    let followed = f.followed_ms >= cfg.min_follow_ms && f.candidate.received >= cfg.min_events;
    let mut out = vec![Condition {
        name: "followed",
        ok: Some(followed),
        pending: !followed,
        detail: format!(
            "followed the live path {:.1} s of {:.1} s, {} events of {}",
            f.followed_ms as f64 / 1000.0,
            cfg.min_follow_ms as f64 / 1000.0,
            f.candidate.received,
            cfg.min_events
        ),
    }];
    let (keys, bad) = (f.compared.keys(), f.compared.bad());
    let within = f.compared.share() <= cfg.max_mismatch;
    out.push(Condition {
        name: "compared",
        ok: Some(keys >= cfg.min_keys && within),
        pending: keys < cfg.min_keys && within,
        detail: format!(
            "{bad} of {keys} keys compared differ from the live generation ({:.2} %, at most {:.2} %; {} keys needed)",
            f.compared.share() * 100.0,
            cfg.max_mismatch * 100.0,
            cfg.min_keys
        ),
    });
    out.push(truth(cfg, f.truth.as_ref(), cfg.min_keys));
    out.push(failures(cfg, f, "the live version"));
    out
}

/// The watch window's verdict after a promotion: each condition whose
/// failure (a spike) rolls the promoted version back.
pub(crate) fn watch(cfg: &PromoteConfig, f: &Figures) -> Vec<Condition> {
    // A spike: the last checks' truth share, over whatever keys they saw.
    vec![
        truth(cfg, f.truth.as_ref(), 0),
        failures(cfg, f, "the version it replaced"),
    ]
}

/// Whether the watch window is over: its time and its events.
pub(crate) fn watched(cfg: &PromoteConfig, f: &Figures) -> bool {
    f.followed_ms >= cfg.watch_ms && f.candidate.received >= cfg.watch_events
}

fn truth(cfg: &PromoteConfig, w: Option<&Window>, min: u64) -> Condition {
    let Some(w) = w else {
        return Condition {
            name: "truth",
            ok: None,
            pending: false,
            detail: "no source of truth to verify against".into(),
        };
    };
    let within = w.share() <= cfg.max_truth_mismatch;
    Condition {
        name: "truth",
        ok: Some(w.keys() >= min && within),
        pending: w.keys() < min && within,
        detail: format!(
            "{} of {} keys verified differ from the source of truth ({:.2} %, at most {:.2} %)",
            w.bad(),
            w.keys(),
            w.share() * 100.0,
            cfg.max_truth_mismatch * 100.0
        ),
    }
}

fn failures(cfg: &PromoteConfig, f: &Figures, other: &str) -> Condition {
    let (mine, theirs) = (f.candidate.share(), f.other.share());
    Condition {
        name: "failures",
        ok: Some(mine <= theirs + cfg.max_failure_margin),
        pending: false,
        detail: format!(
            "{:.3} % of its deliveries failed ({} of {}), {other} {:.3} % ({} of {}); margin {:.3} %",
            mine * 100.0,
            f.candidate.failed,
            f.candidate.received,
            theirs * 100.0,
            f.other.failed,
            f.other.received,
            cfg.max_failure_margin * 100.0
        ),
    }
}

/// The conditions that do not hold, in words (empty: all hold).
pub(crate) fn failing(conditions: &[Condition]) -> Vec<String> {
    conditions
        .iter()
        .filter(|c| c.ok == Some(false))
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

/// The conditions that hold the version back (not merely pending), by name.
pub(crate) fn holding(conditions: &[Condition]) -> Vec<&'static str> {
    conditions
        .iter()
        .filter(|c| c.ok == Some(false) && !c.pending)
        .map(|c| c.name)
        .collect()
}

/// Where a gated promotion is, for the status, the API and the console.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateStatus {
    /// `building` (not following yet), `checking` (the conditions are
    /// being gathered), `held` (a condition fails), `watching` (promoted,
    /// in its watch window), `passed` (the watch window is over),
    /// `rolled_back` (by the watch), or `stopped` (an operator acted).
    pub state: &'static str,
    /// The last check's conditions.
    pub conditions: Vec<Condition>,
    /// When the last check ran, in ms since the epoch.
    pub checked_ms: i64,
    /// The settings the gate runs with.
    pub config: PromoteConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PromoteConfig {
        PromoteConfig {
            mode: PromoteMode::Gated,
            min_keys: 100,
            min_follow_ms: 1000,
            min_events: 50,
            ..PromoteConfig::default()
        }
    }

    fn figures() -> Figures {
        let mut compared = Window::default();
        compared.push(120, 0, 100);
        Figures {
            followed_ms: 2000,
            candidate: Deliveries {
                received: 500,
                failed: 0,
            },
            other: Deliveries {
                received: 500,
                failed: 0,
            },
            compared,
            truth: None,
        }
    }

    fn verdict(c: &[Condition]) -> Vec<(&'static str, Option<bool>)> {
        c.iter().map(|c| (c.name, c.ok)).collect()
    }

    #[test]
    fn a_shadow_passes_only_once_every_condition_holds() {
        let all = judge(&cfg(), &figures());
        assert!(failing(&all).is_empty(), "{all:?}");
        assert_eq!(
            verdict(&all),
            [
                ("followed", Some(true)),
                ("compared", Some(true)),
                ("truth", None),
                ("failures", Some(true))
            ]
        );
        // Too soon, too few events.
        let mut f = figures();
        f.followed_ms = 10;
        assert_eq!(failing(&judge(&cfg(), &f)).len(), 1);
        f = figures();
        f.candidate.received = 10;
        assert!(failing(&judge(&cfg(), &f))[0].starts_with("followed: "));
        // Too few keys compared, or one mismatch too many.
        f = figures();
        f.compared = Window::default();
        f.compared.push(20, 0, 100);
        assert!(failing(&judge(&cfg(), &f))[0].starts_with("compared: 0 of 20"));
        assert!(
            holding(&judge(&cfg(), &f)).is_empty(),
            "gathering, not held"
        );
        f.compared.push(100, 3, 100);
        assert_eq!(holding(&judge(&cfg(), &f)), ["compared"]);
        let why = failing(&judge(&cfg(), &f));
        assert!(why[0].contains("3 of 100 keys compared differ"), "{why:?}");
        // The source of truth: too many differ.
        f = figures();
        let mut t = Window::default();
        t.push(100, 2, 100);
        f.truth = Some(t);
        let why = failing(&judge(&cfg(), &f));
        assert!(why[0].starts_with("truth: 2 of 100"), "{why:?}");
        // Failures above the live version's by more than the margin.
        f = figures();
        f.candidate.failed = 4;
        f.other.failed = 4;
        assert!(failing(&judge(&cfg(), &f)).is_empty(), "within the margin");
        f.candidate.failed = 25;
        let why = failing(&judge(&cfg(), &f));
        assert!(
            why[0].starts_with(
                "failures: 5.000 % of its deliveries failed (25 of 500), the live version 0.800 %"
            ),
            "{why:?}"
        );
    }

    #[test]
    fn the_window_rolls_keeping_at_least_the_keys_asked() {
        let mut w = Window::default();
        w.push(60, 6, 100);
        w.push(60, 0, 100);
        assert_eq!((w.keys(), w.bad()), (120, 6), "both needed for 100");
        w.push(60, 0, 100);
        assert_eq!((w.keys(), w.bad()), (120, 0), "the oldest rolled out");
    }

    #[test]
    fn the_watch_rolls_back_on_a_spike_and_ends_after_its_time_and_events() {
        let c = PromoteConfig {
            watch_ms: 1000,
            watch_events: 100,
            ..cfg()
        };
        let mut f = figures();
        assert!(failing(&watch(&c, &f)).is_empty());
        let mut t = Window::default();
        t.push(100, 10, c.sample_keys as u64);
        f.truth = Some(t);
        assert!(failing(&watch(&c, &f))[0].starts_with("truth: 10 of 100"));
        f = figures();
        f.candidate.failed = 100;
        assert!(failing(&watch(&c, &f))[0].contains("the version it replaced"));
        assert!(watched(&c, &figures()));
        let mut early = figures();
        early.followed_ms = 10;
        assert!(!watched(&c, &early));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad = PromoteConfig {
            max_mismatch: 2.0,
            ..PromoteConfig::default()
        };
        assert!(bad
            .check()
            .expect_err("refused")
            .contains("promote.max_mismatch"));
        assert!(PromoteConfig::default().check().is_ok());
        assert_eq!("gated".parse(), Ok(PromoteMode::Gated));
        assert!("auto".parse::<PromoteMode>().is_err());
    }
}
