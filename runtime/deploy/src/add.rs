//! Plugins added and removed while the runtime runs.
//!
//! A plugin deployed under a new name is compiled and checked off the
//! event path, then its first generation is built beside the live path as
//! a shadow generation is: from the retained log (the embedded log, or
//! the owned Kafka partitions from their earliest offsets), with progress,
//! rate and time left. Once within a batch of the live path it joins it
//! between two batches and serves reads, so no event is lost or applied
//! twice. A lazy plugin starts empty where the live path is and populates
//! from reads. A plugin removed with its views kept comes back from its
//! own offsets.
//!
//! A removed plugin leaves the live path between two batches; the
//! registry records it, so a restart does not load it again from the
//! plugins directory.

use crate::build::{ShadowBuild, ShadowStatus};
use crate::shadow::ShadowMethod;
use crate::{Deployed, Deployer, Error, Result};
use projector_common::sync::Recover;
use projector_guest::Population;
use projector_host::SharedCode;
use serde::Serialize;
use std::sync::Arc;

/// What a removal did.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// Name of the plugin.
    pub plugin: String,
    /// The namespaces its generations held.
    pub namespaces: Vec<String>,
    /// Whether their views, offsets, counters and audit were deleted.
    pub views_dropped: bool,
}

impl Deployer {
    /// Add plugin `name`, not loaded, with `code` (version `id`): build its
    /// first generation on a thread of its own, then make it serve reads.
    pub(crate) fn add(
        self: &Arc<Self>,
        name: &str,
        code: SharedCode,
        id: &str,
        compile_ms: u64,
    ) -> Result<Deployed> {
        let entry = self.registry.entry(name)?.unwrap_or_default();
        let ns = entry.ns.clone().unwrap_or_else(|| name.to_string());
        let population = self.population(name).unwrap_or(code.info().population);
        let replay = self.replay.get().cloned();
        let resumes = self.engine.has_offsets(&ns)?;
        let lazy_start = population == Population::Lazy && !resumes;
        if replay.is_none() && !lazy_start {
            return Err(Error::Rejected {
                name: name.into(),
                id: id[..12].into(),
                reason: "this runtime follows no retained log to build a new plugin's views from"
                    .into(),
            });
        }
        let generation = self.engine.new_generation_in(code, Some(population), ns)?;
        self.registry.activate(name, id, false)?;
        self.registry.set_removed(name, false, false)?;
        let build = Arc::new(ShadowBuild::new(
            id.to_string(),
            ShadowMethod::Rebuild,
            generation.clone(),
        ));
        self.adds
            .lock()
            .recover()
            .insert(name.to_string(), build.clone());
        let (me, owned) = (self.clone(), name.to_string());
        self.spawn(format!("add-{name}"), move || {
            let built = match replay {
                Some(log) if !lazy_start => {
                    me.rebuild_to(&owned, &build, &generation, log.as_ref(), &|source, p| {
                        me.engine.live_offset(source, p)
                    })
                }
                Some(log) => me
                    .engine
                    .start_at_live(&generation, &log.partitions())
                    .map_err(Error::from),
                None => me
                    .engine
                    .start_at_live(&generation, &[])
                    .map_err(Error::from),
            };
            let live = built.and_then(|()| me.engine.go_live(&generation).map_err(Error::from));
            match live {
                Ok(()) => tracing::info!(
                    plugin = owned,
                    records = build.done.load(std::sync::atomic::Ordering::Relaxed),
                    secs = build.started.elapsed().as_secs_f64(),
                    "plugin added: its views follow the live path and serve reads"
                ),
                Err(e) => {
                    tracing::error!(plugin = owned, "adding the plugin failed: {e}");
                    *build.error.lock().recover() = Some(e.to_string());
                    let _ = me.engine.remove(&owned, false);
                }
            }
        })
        .map_err(|e| Error::Corrupt {
            name: name.into(),
            reason: e.to_string(),
        })?;
        tracing::info!(
            plugin = name,
            id = &id[..12],
            population = ?population,
            resumes,
            "adding a plugin: building its views"
        );
        Ok(Deployed {
            plugin: name.into(),
            id: id.into(),
            replaced: None,
            changed: true,
            compile_ms,
            swapped_at: None,
        })
    }

    /// Where adding plugin `name` is (its first generation's build).
    pub fn adding(&self, name: &str) -> Option<ShadowStatus> {
        let build = self.adds.lock().recover().get(name)?.clone();
        let mut status = build.status(name);
        if status.phase == "following" {
            status.phase = if self.engine.projection(name).is_ok() {
                "live".into()
            } else {
                "joining".into()
            };
        }
        Some(status)
    }

    /// Whether plugin `name` is being added now (its views being built).
    pub(crate) fn is_adding(&self, name: &str, id: &str) -> bool {
        self.adds.lock().recover().get(name).is_some_and(|b| {
            b.id == id
                && b.error.lock().recover().is_none()
                && self.engine.projection(name).is_err()
        })
    }

    /// Take plugin `name` out of the runtime between two batches; its
    /// views stay (for it to come back from its offsets) unless
    /// `drop_views`. The registry keeps its versions and records the
    /// removal.
    pub fn remove(&self, name: &str, drop_views: bool) -> Result<Removed> {
        let _one = self.busy.lock().recover();
        if let Some(b) = self.adds.lock().recover().get(name) {
            if b.generation.is_building() && b.error.lock().recover().is_none() {
                return Err(Error::Rejected {
                    name: name.into(),
                    id: b.id[..12].into(),
                    reason: "it is being added; remove it once it is live".into(),
                });
            }
        }
        if let Some(s) = self.shadows.lock().recover().get(name) {
            if s.generation.is_building() {
                return Err(Error::Rejected {
                    name: name.into(),
                    id: s.id[..12].into(),
                    reason: "a shadow build of it is in progress".into(),
                });
            }
        }
        let namespaces = self.engine.remove(name, drop_views)?;
        self.shadows.lock().recover().remove(name);
        self.adds.lock().recover().remove(name);
        self.registry.set_removed(name, true, drop_views)?;
        tracing::info!(plugin = name, drop_views, "plugin removed");
        Ok(Removed {
            plugin: name.into(),
            namespaces,
            views_dropped: drop_views,
        })
    }
}
