//! The registry: every version of every plugin ever deployed, by content
//! hash (SHA-256 of the `.wasm`), with the active one and the ones it
//! replaced, kept in the store with the code itself.

use crate::{Error, Result};
use projector_core::store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One deployed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// SHA-256 of the `.wasm`, hex.
    pub id: String,
    /// Size of the `.wasm`, in bytes.
    pub size: u64,
    /// When it was first recorded, in ms since the epoch.
    pub deployed_ms: i64,
    /// Where it came from (`plugins_dir`, `api`, a file path...).
    pub from: String,
    /// Why the runtime rolled it back by itself, if it did.
    #[serde(default)]
    pub rolled_back: Option<String>,
    /// Settings it was last deployed with, over the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
}

/// Settings given at deploy time, applied over the config's.
pub type Settings = serde_json::Map<String, serde_json::Value>;

/// Events an entry keeps, the oldest dropped first.
pub const HISTORY_LEN: usize = 100;

/// What was done to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Its first version went live (at start, or added at runtime).
    Deploy,
    /// A version replaced the running one (`replace` mode).
    Replace,
    /// The running version was deployed again with other settings, and
    /// runs with them now.
    Reconfigure,
    /// A shadow generation of a version started building.
    Shadow,
    /// The shadow generation took over serving.
    Promote,
    /// An operator returned to the version before (a promotion undone, or
    /// a replace deploy rolled back).
    Rollback,
    /// The runtime rolled a version back by itself (failed probation).
    RuntimeRollback,
    /// The generation not serving was deleted.
    Retire,
    /// The plugin was taken out.
    Remove,
    /// Dead letters were sent back through the serving version.
    Redrive,
    /// The promotion gate held a shadow back (the reason names the
    /// conditions that failed, with their figures).
    Held,
    /// A version promoted by the gate passed its watch window.
    Watched,
}

/// One act in a plugin's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What was done.
    pub action: Action,
    /// The version it concerns: the one now active, or the shadow built,
    /// or the one retired.
    pub id: String,
    /// The version active before, if it changed.
    #[serde(default)]
    pub previous: Option<String>,
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// Why, when the runtime did it by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Entry {
    /// The settings version `id` was last deployed with, if any.
    pub fn settings_of(&self, id: &str) -> Option<&Settings> {
        let version = self.versions.iter().find(|v| v.id == id)?;
        version.settings.as_ref()
    }
}

/// A plugin's versions, the active one and those it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Every version recorded, in deploy order.
    pub versions: Vec<Version>,
    /// Content id of the active version, if any.
    pub active: Option<String>,
    /// Versions that were active before, most recent last: what a
    /// rollback returns to (it pops). An older registry stored it as
    /// `history`.
    #[serde(default, alias = "history")]
    pub rollback: Vec<String>,
    /// What was done to the plugin, oldest first, the last
    /// [`HISTORY_LEN`] (stored as `events`: `history` is the older
    /// name of `rollback`).
    #[serde(default, rename = "events")]
    pub history: Vec<Event>,
    /// Where the active version's views live, when not under the
    /// plugin's name (a promoted shadow generation).
    #[serde(default)]
    pub ns: Option<String>,
    /// The version whose generation is kept beside the active one: a
    /// shadow being built or followed, or the old one after a promotion
    /// (until retired).
    #[serde(default)]
    pub shadow: Option<String>,
    /// Where the generation of `shadow` keeps its views (`None` in an
    /// older registry: `<name>~<id[..12]>`, a shadow deploy's).
    #[serde(default)]
    pub shadow_ns: Option<String>,
    /// Whether the active version is a promoted shadow, `shadow` the one
    /// it replaced (kept current for a rollback).
    #[serde(default)]
    pub promoted: bool,
    /// Taken out at runtime: not loaded at start, whatever the plugins
    /// directory holds, until it is deployed again.
    #[serde(default)]
    pub removed: bool,
    /// The kept shadow is gated: it promotes itself once the gate's
    /// conditions hold (its gate is taken up again at start).
    #[serde(default)]
    pub gated: bool,
}

fn entry_setting(name: &str) -> String {
    format!("registry/{name}")
}

/// The registry's view of the store.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    code: sled::Tree,
}

impl Registry {
    /// The registry kept in `store` (code in its `plugin-code` tree).
    pub fn open(store: &Store) -> Result<Self> {
        Ok(Registry {
            store: store.clone(),
            code: store.tree("plugin-code")?,
        })
    }

    /// The entry of plugin `name`, if it was ever deployed.
    pub fn entry(&self, name: &str) -> Result<Option<Entry>> {
        self.store
            .setting(&entry_setting(name))?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                    name: name.into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    pub(crate) fn put(&self, name: &str, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec(entry).expect("an entry serializes");
        self.store.set_setting(&entry_setting(name), Some(&bytes))?;
        Ok(())
    }

    /// The code of version `id`.
    pub fn code(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.code.get(id)?.map(|v| v.to_vec()))
    }

    /// Record `bytes` as a version of `name` (kept once per content).
    pub fn add(&self, name: &str, bytes: &[u8], from: &str) -> Result<Version> {
        let id = content_id(bytes);
        let mut entry = self.entry(name)?.unwrap_or_default();
        if let Some(v) = entry.versions.iter().find(|v| v.id == id) {
            return Ok(v.clone());
        }
        self.code.insert(id.as_bytes(), bytes)?;
        // The store's flush: the same database, and bounded.
        self.store.flush()?;
        let version = Version {
            id,
            size: bytes.len() as u64,
            deployed_ms: projector_core::now_ms(),
            from: from.into(),
            rolled_back: None,
            settings: None,
        };
        entry.versions.push(version.clone());
        self.put(name, &entry)?;
        Ok(version)
    }

    /// Make `id` the active version of `name`; the previous one goes on
    /// the rollback stack (unless this is a rollback to it).
    pub(crate) fn activate(&self, name: &str, id: &str, rollback: bool) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        if rollback {
            entry.rollback.pop();
        } else if let Some(old) = entry.active.take().filter(|old| old != id) {
            entry.rollback.push(old);
        }
        entry.active = Some(id.into());
        self.put(name, &entry)
    }

    /// Note `action` on version `id` of `name` in its history, with the
    /// version active before it (if it changed) and the reason (if any).
    pub(crate) fn record(
        &self,
        name: &str,
        action: Action,
        id: &str,
        previous: Option<&str>,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        push_event(&mut entry, action, id, previous, reason);
        self.put(name, &entry)
    }

    /// Set the version kept beside the active one, where its views live,
    /// and whether the active one is a promoted shadow.
    /// Whether the kept shadow of `name` is gated.
    pub(crate) fn set_gated(&self, name: &str, gated: bool) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.gated = gated;
        self.put(name, &entry)
    }

    pub(crate) fn set_shadow(
        &self,
        name: &str,
        shadow: Option<(&str, &str)>,
        promoted: bool,
    ) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.shadow = shadow.map(|(id, _)| id.to_string());
        entry.shadow_ns = shadow.map(|(_, ns)| ns.to_string());
        entry.promoted = promoted && shadow.is_some();
        if shadow.is_none() || promoted {
            entry.gated = false;
        }
        self.put(name, &entry)
    }

    /// Set where the active version's views live.
    pub(crate) fn set_ns(&self, name: &str, ns: &str) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.ns = (ns != name).then(|| ns.to_string());
        self.put(name, &entry)
    }

    /// Mark `name` removed (or added back). Removed with its views
    /// dropped, it forgets where they lived and its kept generation.
    pub(crate) fn set_removed(&self, name: &str, removed: bool, views_dropped: bool) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        entry.removed = removed;
        if views_dropped {
            entry.ns = None;
        }
        if removed {
            entry.shadow = None;
            entry.shadow_ns = None;
            entry.promoted = false;
            let id = entry.active.clone().unwrap_or_default();
            push_event(&mut entry, Action::Remove, &id, None, None);
        }
        self.put(name, &entry)
    }

    /// Note that the runtime rolled `id` of `name` back (to the active
    /// version), and why.
    pub(crate) fn mark_rolled_back(&self, name: &str, id: &str, reason: &str) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        let Some(v) = entry.versions.iter_mut().find(|v| v.id == id) else {
            return Ok(());
        };
        v.rolled_back = Some(reason.into());
        let active = entry.active.clone().unwrap_or_default();
        push_event(
            &mut entry,
            Action::RuntimeRollback,
            &active,
            Some(id),
            Some(reason),
        );
        self.put(name, &entry)
    }

    /// Keep `settings` as those version `id` of `name` was deployed with.
    pub(crate) fn set_settings(
        &self,
        name: &str,
        id: &str,
        settings: Option<&Settings>,
    ) -> Result<()> {
        let mut entry = self.entry(name)?.unwrap_or_default();
        if let Some(v) = entry.versions.iter_mut().find(|v| v.id == id) {
            v.settings = settings.cloned();
        }
        self.put(name, &entry)
    }

    /// Every plugin with an entry.
    pub fn names(&self) -> Vec<String> {
        self.store.setting_names("registry/")
    }
}

/// Append an event to `entry`'s history, dropping the oldest beyond
/// [`HISTORY_LEN`].
fn push_event(
    entry: &mut Entry,
    action: Action,
    id: &str,
    previous: Option<&str>,
    reason: Option<&str>,
) {
    entry.history.push(Event {
        action,
        id: id.into(),
        previous: previous.map(Into::into),
        at_ms: projector_core::now_ms(),
        reason: reason.map(Into::into),
    });
    let over = entry.history.len().saturating_sub(HISTORY_LEN);
    entry.history.drain(..over);
}

/// SHA-256 of a `.wasm`, hex: a version's id.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
