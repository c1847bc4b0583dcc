//! Shadow generations: a new version's views built beside the live ones
//! (rebuilt from the retained log, or migrated from the live views), fed
//! live events once caught up, compared, promoted, rolled back, retired.

use crate::build::{ShadowBuild, ShadowStatus, Slice};
use crate::compare::Comparison;
use crate::gate::{PromoteConfig, PromoteMode};
use crate::registry::{content_id, Action};
use crate::{Deployed, Deployer, Error, Replay, Result};
use projector_common::sync::Recover;
use projector_core::engine::Projection;
use projector_core::store::Counters;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a shadow generation gets its views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowMethod {
    /// Rebuild when the log reaches back to the beginning, else migrate.
    Auto,
    /// Apply the whole retained log from its start.
    Rebuild,
    /// Convert every live view with the new code's `migrate`; keys it
    /// cannot convert are left absent and populate again from the source
    /// of truth on their next read.
    Migrate,
}

impl Deployer {
    /// Start a shadow deploy of `bytes` as plugin `name`: a new
    /// generation of its views is rebuilt from the start of the embedded
    /// log beside the live one, then follows live events; compare it,
    /// then promote it (or retire it). Progress in [`Deployer::shadow`].
    /// A component whose own name is not the running plugin's is refused
    /// unless `replace` ([`crate::guard`]).
    pub fn deploy_shadow(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        method: ShadowMethod,
        replace: bool,
    ) -> Result<ShadowStatus> {
        self.deploy_shadow_with(name, bytes, from, method, replace, None, None)
    }

    /// [`Deployer::deploy_shadow`] with `settings` over the config's,
    /// kept with the version in the registry, and who promotes it
    /// (`promote`; `None`: as `[plugins.NAME.promote]` says).
    #[allow(clippy::too_many_arguments)]
    pub fn deploy_shadow_with(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        from: &str,
        method: ShadowMethod,
        replace: bool,
        settings: Option<&crate::registry::Settings>,
        promote: Option<PromoteMode>,
    ) -> Result<ShadowStatus> {
        let _one = self.busy.lock().recover();
        let reject = |reason: String| Error::Rejected {
            name: name.into(),
            id: content_id(bytes)[..12].into(),
            reason,
        };
        let log = self.replay.get().cloned();
        let complete = log.as_ref().is_some_and(|l| l.complete());
        let method = match (method, &log) {
            (ShadowMethod::Auto, _) if complete => ShadowMethod::Rebuild,
            (ShadowMethod::Auto, _) => ShadowMethod::Migrate,
            (ShadowMethod::Rebuild, None) => {
                return Err(reject(
                    "this runtime follows no retained log to rebuild from; use migrate".into(),
                ))
            }
            (ShadowMethod::Rebuild, Some(_)) if !complete => {
                return Err(reject(
                    "the log no longer reaches back to the beginning (retention); use migrate"
                        .into(),
                ))
            }
            (m, _) => m,
        };
        let active = self.engine.projection(name)?;
        if let Some(s) = self.shadows.lock().recover().get(name) {
            if s.generation.is_building() {
                return Err(Error::Rejected {
                    name: name.into(),
                    id: s.id[..12].into(),
                    reason: "a shadow build of this plugin is in progress".into(),
                });
            }
        }
        let id = content_id(bytes);
        if active.code().id() == id {
            return Err(Error::Rejected {
                name: name.into(),
                id: id[..12].into(),
                reason: "this version is the active one".into(),
            });
        }
        let code = self.load(name, bytes, settings)?;
        if !replace {
            crate::guard::check(name, Some(active.code().info()), code.info(), true)
                .map_err(Error::ReplaceRequired)?;
        }
        self.registry.add(name, bytes, from)?;
        self.registry.set_settings(name, &id, settings)?;
        let generation = self.engine.new_generation(code, self.population(name))?;
        self.registry
            .set_shadow(name, Some((&id, generation.ns())), false)?;
        let serving = Some(active.code().id());
        self.registry
            .record(name, Action::Shadow, &id, serving, None)?;
        let build = self.track(name, ShadowBuild::new(id.clone(), method, generation));
        let gate = self.gate_config(name, promote);
        self.registry
            .set_gated(name, gate.mode == PromoteMode::Gated)?;
        if gate.mode == PromoteMode::Gated {
            self.keep_gate(name, build.clone(), gate);
        }
        let (me, name_owned) = (self.clone(), name.to_string());
        self.spawn(format!("shadow-{name}"), move || {
            let built = match (method, log) {
                (ShadowMethod::Rebuild, Some(log)) => {
                    me.rebuild(&name_owned, &build, &build.generation, log.as_ref())
                }
                _ => me.migrate(&name_owned, &build),
            };
            if let Err(e) = built {
                tracing::error!(plugin = name_owned, "shadow build failed: {e}");
                *build.error.lock().recover() = Some(e.to_string());
            }
        })
        .map_err(|e| Error::Corrupt {
            name: name.into(),
            reason: e.to_string(),
        })?;
        tracing::info!(plugin = name, id = &id[..12], "shadow build started");
        Ok(self.shadow(name).expect("just inserted"))
    }

    /// Make `build` the shadow build of `name`.
    fn track(&self, name: &str, build: ShadowBuild) -> Arc<ShadowBuild> {
        let build = Arc::new(build);
        self.shadows
            .lock()
            .recover()
            .insert(name.to_string(), build.clone());
        build
    }

    /// Take up again, at start, the generation the registry keeps beside
    /// the active one: an unpromoted shadow (being built or following), or
    /// the old version after a promotion. Its views and offsets are in the
    /// store; it catches up from its offsets once the source can replay
    /// (`set_replay`), then follows live events again.
    pub(crate) fn restore_shadow(&self, name: &str, entry: &crate::Entry) -> Result<()> {
        let (Some(id), Some(active)) = (entry.shadow.as_deref(), entry.active.as_deref()) else {
            return Ok(());
        };
        let Some(bytes) = self.registry.code(id)? else {
            tracing::warn!(
                plugin = name,
                id = &id[..12.min(id.len())],
                "the kept generation's code is not in the registry; not taken up"
            );
            return Ok(());
        };
        let ns = entry
            .shadow_ns
            .clone()
            .unwrap_or_else(|| format!("{name}~{}", &id[..12.min(id.len())]));
        let code = self.load(name, &bytes, entry.settings_of(id))?;
        let kept = self
            .engine
            .new_generation_in(code, self.population(name), ns)?;
        // A promotion's build is the active generation (its rollback
        // switches back to the kept one); otherwise the shadow's own.
        let (build_id, generation) = if entry.promoted {
            (active.to_string(), self.engine.projection(name)?)
        } else {
            (id.to_string(), kept.clone())
        };
        let build = self.track(
            name,
            ShadowBuild::new(build_id, ShadowMethod::Rebuild, generation),
        );
        self.resumes
            .lock()
            .recover()
            .push((name.to_string(), build, kept));
        tracing::info!(
            plugin = name,
            id = &id[..12.min(id.len())],
            "kept generation taken up again; it catches up once the source starts"
        );
        Ok(())
    }

    /// Catch up the generations [`Deployer::restore_shadow`] took up.
    pub(crate) fn resume_shadows(self: &Arc<Self>) {
        let Some(log) = self.replay.get().cloned() else {
            return;
        };
        for (name, build, g) in std::mem::take(&mut *self.resumes.lock().recover()) {
            // An unpromoted gated shadow: its gate starts again.
            let gated = self
                .registry
                .entry(&name)
                .ok()
                .flatten()
                .is_some_and(|e| e.gated && !e.promoted);
            if gated {
                self.keep_gate(
                    &name,
                    build.clone(),
                    self.gate_config(&name, Some(PromoteMode::Gated)),
                );
            }
            let me = self.clone();
            let log = log.clone();
            let spawned = self.spawn(format!("shadow-{name}"), move || {
                if let Err(e) = me.rebuild(&name, &build, &g, log.as_ref()) {
                    tracing::error!(plugin = name, "taking up the kept generation failed: {e}");
                    *build.error.lock().recover() = Some(e.to_string());
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a shadow thread: {e}");
            }
        }
    }

    /// Catch up, for as long as the deployer runs, every generation the
    /// live path took off for lacking records of a partition (see
    /// `Projection::take_behind`): rebuilt from its own offsets, then
    /// joined again.
    pub(crate) fn watch_behind(self: &Arc<Self>, log: Arc<dyn Replay>) {
        let me = self.clone();
        let spawned = self.spawn("shadow-catch-up".into(), move || {
            while !me.shutdown.wait(std::time::Duration::from_millis(250)) {
                for active in me.engine.projections() {
                    let name = active.name();
                    for g in me.engine.shadows(name) {
                        if g.take_behind() {
                            me.rebuild_behind(name, &g, log.as_ref());
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the shadow catch-up thread: {e}");
        }
    }

    /// Rebuild `g` (a generation of `name` taken off the live path) from
    /// its offsets and join it again, its progress shown on its build
    /// when it has one.
    fn rebuild_behind(&self, name: &str, g: &Arc<Projection>, log: &dyn Replay) {
        let tracked = self
            .shadows
            .lock()
            .recover()
            .get(name)
            .filter(|b| Arc::ptr_eq(&b.generation, g))
            .cloned();
        let build = tracked.unwrap_or_else(|| {
            Arc::new(ShadowBuild::new(
                g.code().id().to_string(),
                ShadowMethod::Rebuild,
                g.clone(),
            ))
        });
        tracing::info!(
            plugin = name,
            ns = g.ns(),
            "catching up a generation that lacks records"
        );
        if let Err(e) = self.rebuild(name, &build, g, log) {
            tracing::error!(plugin = name, ns = g.ns(), "catching up failed: {e}");
            *build.error.lock().recover() = Some(e.to_string());
        }
    }

    /// Rebuild a generation from the start of the log until it is within
    /// a batch of the live path, then join it.
    /// `g` is the generation to build: the shadow's, or after a restart
    /// of a promotion, the old one kept beside it.
    pub(crate) fn rebuild(
        &self,
        name: &str,
        build: &ShadowBuild,
        g: &Arc<Projection>,
        log: &dyn Replay,
    ) -> Result<()> {
        self.rebuild_to(name, build, g, log, &|source, p| {
            self.engine.applied(name, source, p)
        })
    }

    /// Rebuild generation `g` from its offsets until it is within a batch
    /// of `target(source, partition)` (where the live path is), then join
    /// it to the live path.
    pub(crate) fn rebuild_to(
        &self,
        name: &str,
        build: &ShadowBuild,
        g: &Arc<Projection>,
        log: &dyn Replay,
        target: &dyn Fn(&str, u32) -> projector_core::engine::Result<u64>,
    ) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        const BATCH: usize = 4096;
        let read = |source: &str, p: u32, from: u64| {
            log.read(source, p, from, BATCH)
                .map_err(|e| projector_core::engine::Error::Guest {
                    plugin: name.into(),
                    message: format!("reading {source}/{p} from {from}: {e:#}"),
                })
        };
        let mut slice = Slice::default();
        loop {
            // Asked again each pass: a rebalance may move partitions here
            // (or away) while the generation is built. The total is where
            // the live path is now: what this pass has left to apply.
            let mut ends = Vec::new();
            for (source, p) in log.partitions() {
                let from = self.engine.generation_offset(g, &source, p)?;
                let to = target(&source, p)?;
                ends.push((source, p, from, to));
            }
            let left: u64 = ends
                .iter()
                .map(|(_, _, from, to)| to.saturating_sub(*from))
                .sum();
            build.total.store(build.done.load(Relaxed) + left, Relaxed);
            // What is left, the join applies with the live path stopped:
            // no more than the build applies in a slice.
            if left <= slice.records as u64 {
                break;
            }
            for (source, p, from, to) in &ends {
                let (mut from, p) = (*from, *p);
                while from < *to {
                    if self.shutdown.is_stopped() {
                        return Err(Error::Stopped(name.into()));
                    }
                    let mut batch = read(source, p, from)?;
                    batch.retain(|r| r.offset < *to);
                    let Some(last) = batch.last().map(|r| r.offset) else {
                        return Err(Error::Corrupt {
                            name: name.into(),
                            reason: format!("{source}/{p}: no records between {from} and {to}"),
                        });
                    };
                    let mut rest = batch.as_slice();
                    while !rest.is_empty() {
                        let (chunk, after) = rest.split_at(slice.records.min(rest.len()));
                        let started = std::time::Instant::now();
                        self.engine.build(g, source, p, chunk)?;
                        build.done.fetch_add(chunk.len() as u64, Relaxed);
                        slice.took(chunk.len(), started.elapsed());
                        rest = after;
                    }
                    from = last + 1;
                }
            }
        }
        // The partitions followed now: one assigned during the build is
        // caught up here. One assigned after this call is found lacking by
        // the live path, which takes the generation off it again for
        // `watch_behind` to catch up.
        self.engine
            .follow(g, &log.partitions(), |source, p, from, to| {
                let mut out = Vec::new();
                let mut at = from;
                while at < to {
                    let batch = read(source, p, at)?;
                    let Some(last) = batch.last().map(|r| r.offset) else {
                        break;
                    };
                    out.extend(batch.into_iter().filter(|r| r.offset < to));
                    at = last + 1;
                }
                build.done.fetch_add(out.len() as u64, Relaxed);
                Ok(out)
            })?;
        build.total.store(build.done.load(Relaxed), Relaxed);
        tracing::info!(
            plugin = name,
            events = build.done.load(Relaxed),
            secs = build.started.elapsed().as_secs_f64(),
            "shadow generation built; following live events"
        );
        Ok(())
    }

    /// Seed a generation by migrating every live view with the new code's
    /// `migrate`, then join it to the live path.
    fn migrate(&self, name: &str, build: &ShadowBuild) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let active = self.engine.projection(name)?;
        let from_version = active.code().info().version.clone();
        let g = &build.generation;
        let mut session = g.code().session();
        let (migrated, absent) = self.engine.seed(
            g,
            &active,
            |key, record| {
                let state = record.view.state.as_deref()?;
                match session.migrate(key, state, &from_version) {
                    Ok(Ok(Some(new))) => {
                        let mut r = record.clone();
                        r.view.state = Some(new);
                        Some(r)
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(plugin = name, key, "not migrated: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(plugin = name, key, "not migrated: {e}");
                        None
                    }
                }
            },
            |done, total| {
                build.done.store(done, Relaxed);
                build.total.store(total, Relaxed);
            },
        )?;
        *build.migrated.lock().recover() = Some((migrated, absent));
        tracing::info!(
            plugin = name,
            migrated,
            absent,
            "shadow generation migrated; following live events"
        );
        Ok(())
    }

    /// The gate of a shadow deploy of `name`: the config's, with `mode`
    /// (a deploy's) over it.
    fn gate_config(&self, name: &str, mode: Option<PromoteMode>) -> PromoteConfig {
        let mut cfg = self.settings.of(name).promote.clone();
        if let Some(m) = mode {
            cfg.mode = m;
        }
        cfg
    }

    /// The shadow build of `name`, if any.
    pub fn shadow(&self, name: &str) -> Option<ShadowStatus> {
        let b = self.shadows.lock().recover().get(name)?.clone();
        let mut status = b.status(name);
        let live = self.engine.projection(name).ok();
        if let Some(live) = live {
            let serving = live.ns() == b.generation.ns();
            if serving && status.phase == "following" {
                status.phase = "promoted".into();
            } else if !serving {
                status.held = held(&live.counters(), &b.generation.counters());
            }
        }
        Some(status)
    }

    pub(crate) fn shadow_build(&self, name: &str) -> Result<Arc<ShadowBuild>> {
        self.shadows
            .lock()
            .recover()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoShadow(name.into()))
    }

    /// Compare up to `sample` keys (spread over the key space) between the
    /// generation serving reads and the other one, with the plugin's
    /// comparison rule.
    pub fn compare(&self, name: &str, sample: usize) -> Result<Comparison> {
        self.compare_build(name, &self.shadow_build(name)?, sample)
    }

    /// [`Deployer::compare`] of build `b` of `name`.
    pub(crate) fn compare_build(
        &self,
        name: &str,
        b: &Arc<ShadowBuild>,
        sample: usize,
    ) -> Result<Comparison> {
        let active = self.engine.projection(name)?;
        let other = if active.ns() == b.generation.ns() {
            self.engine
                .shadows(name)
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoShadow(name.into()))?
        } else {
            b.generation.clone()
        };
        if other.is_building() {
            return Err(Error::Rejected {
                name: name.into(),
                id: b.id[..12].into(),
                reason: "the shadow generation is still being built".into(),
            });
        }
        // Keys of both: a view only the other generation has counts too.
        let store = self.engine.store();
        let mut keys = Vec::new();
        for ns in [active.ns(), other.ns()] {
            keys.extend(
                store
                    .sample_view_keys(ns, sample)
                    .map_err(projector_core::engine::Error::from)?,
            );
        }
        keys.sort();
        keys.dedup();
        let now = projector_core::now_ms();
        let mut c = Comparison {
            serving: active.code().id().chars().take(12).collect(),
            other: other.code().id().chars().take(12).collect(),
            ..Comparison::default()
        };
        let mut session = other.code().session();
        for key in &keys {
            let a = self
                .engine
                .read_in(&active, key, now)?
                .and_then(|v| v.json());
            let b = self
                .engine
                .read_in(&other, key, now)?
                .and_then(|v| v.json());
            let differences = match (&a, &b) {
                (Some(a), Some(b)) if a != b => session
                    .compare(key, &b.to_string(), &a.to_string())
                    .map_err(projector_core::engine::Error::from)?,
                _ => Vec::new(),
            };
            c.count(key, a, b, &differences);
        }
        *b.comparison.lock().recover() = Some(c.clone());
        Ok(c)
    }

    /// Make the shadow generation of `name` serve reads (and the live
    /// path), keeping the old one current beside it for a rollback. A
    /// shadow that dead-letters more than the serving version is held
    /// ([`Error::Held`]) unless `force`.
    pub fn promote(&self, name: &str, force: bool) -> Result<ShadowStatus> {
        self.promote_with(name, None, force, None)
    }

    /// [`Deployer::promote`] of build `only` when given (refused when it
    /// is no longer the shadow build), with the reason written to the
    /// history (the gate's figures).
    pub(crate) fn promote_with(
        &self,
        name: &str,
        only: Option<&Arc<ShadowBuild>>,
        force: bool,
        reason: Option<&str>,
    ) -> Result<ShadowStatus> {
        let _one = self.busy.lock().recover();
        let b = self.shadow_build(name)?;
        if only.is_some_and(|o| !Arc::ptr_eq(o, &b)) {
            return Err(Error::NoShadow(name.into()));
        }
        let old = self.engine.projection(name)?;
        if let (Some(reason), false) = (held(&old.counters(), &b.generation.counters()), force) {
            return Err(Error::Held {
                name: name.into(),
                id: b.id[..12].into(),
                reason,
            });
        }
        let (old_id, old_ns) = (old.code().id().to_string(), old.ns().to_string());
        self.engine.switch(&b.generation)?;
        self.registry.activate(name, &b.id, false)?;
        self.registry.set_ns(name, b.generation.ns())?;
        self.registry
            .set_shadow(name, Some((&old_id, &old_ns)), true)?;
        self.registry
            .record(name, Action::Promote, &b.id, Some(&old_id), reason)?;
        tracing::info!(plugin = name, id = &b.id[..12], "promoted");
        drop(_one);
        Ok(self.shadow(name).expect("a shadow build"))
    }

    /// Undo a promotion: the previous generation serves again; `action`
    /// (an operator's rollback, or the runtime's) goes to the history
    /// with `reason`.
    pub(crate) fn demote(
        &self,
        name: &str,
        b: &ShadowBuild,
        action: Action,
        reason: Option<&str>,
    ) -> Result<Deployed> {
        let old = self
            .engine
            .shadows(name)
            .into_iter()
            .find(|p| p.ns() != b.generation.ns())
            .ok_or_else(|| Error::NoEarlier(name.into()))?;
        self.engine.switch(&old)?;
        self.registry.activate(name, old.code().id(), true)?;
        self.registry.set_ns(name, old.ns())?;
        self.registry
            .set_shadow(name, Some((&b.id, b.generation.ns())), false)?;
        let id = old.code().id();
        self.registry
            .record(name, action, id, Some(&b.id), reason)?;
        tracing::info!(plugin = name, "promotion rolled back");
        Ok(Deployed {
            plugin: name.into(),
            id: old.code().id().into(),
            replaced: Some(b.id.clone()),
            changed: true,
            compile_ms: 0,
            swapped_at: None,
        })
    }

    /// Delete the generation of `name` that does not serve reads (the old
    /// one after a promotion, or an unwanted shadow).
    pub fn retire(&self, name: &str) -> Result<String> {
        let _one = self.busy.lock().recover();
        let b = self.shadow_build(name)?;
        let victim = self
            .engine
            .shadows(name)
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoShadow(name.into()))?;
        if victim.is_building() {
            return Err(Error::Rejected {
                name: name.into(),
                id: b.id[..12].into(),
                reason: "the shadow generation is still being built".into(),
            });
        }
        self.engine.retire(&victim)?;
        self.registry.set_shadow(name, None, false)?;
        if victim.ns() == b.generation.ns() {
            self.shadows.lock().recover().remove(name);
        } else {
            self.shadows.lock().recover().remove(name);
            let mut entry = self.registry.entry(name)?.unwrap_or_default();
            entry.rollback.retain(|h| h != victim.code().id());
            self.registry.put(name, &entry)?;
        }
        let id = victim.code().id();
        self.registry.record(name, Action::Retire, id, None, None)?;
        tracing::info!(plugin = name, ns = victim.ns(), "generation retired");
        Ok(victim.ns().to_string())
    }
}

/// Why a shadow generation with counters `shadow` is held from promotion
/// beside a serving one with `live`: it dead-letters a larger share of
/// what it receives (`None`: it does not).
pub(crate) fn held(live: &Counters, shadow: &Counters) -> Option<String> {
    let rate = |c: &Counters| c.dead_lettered as f64 / c.received.max(1) as f64;
    (shadow.dead_lettered > 0 && rate(shadow) > rate(live)).then(|| {
        format!(
            "it dead-letters {:.3} % of its deliveries ({} of {}), the serving version {:.3} % ({} of {})",
            rate(shadow) * 100.0,
            shadow.dead_lettered,
            shadow.received,
            rate(live) * 100.0,
            live.dead_lettered,
            live.received
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(received: u64, dead_lettered: u64) -> Counters {
        Counters {
            received,
            dead_lettered,
            ..Counters::default()
        }
    }

    #[test]
    fn a_shadow_is_held_only_when_it_dead_letters_a_larger_share() {
        assert_eq!(held(&counters(1000, 0), &counters(1000, 0)), None);
        assert_eq!(
            held(&counters(1000, 10), &counters(500, 5)),
            None,
            "the same share"
        );
        assert_eq!(held(&counters(1000, 10), &counters(1000, 2)), None, "fewer");
        let why = held(&counters(1000, 0), &counters(5200, 106)).expect("held");
        assert!(
            why.contains("2.038 % of its deliveries (106 of 5200)"),
            "{why}"
        );
        assert!(why.contains("serving version 0.000 % (0 of 1000)"), "{why}");
        assert!(
            held(&counters(0, 0), &counters(3, 1)).is_some(),
            "a new live"
        );
    }
}
