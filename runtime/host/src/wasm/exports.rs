//! A plugin's exports, found once per component: `projection` and
//! `comparison`, which every plugin has, and `prefetch`, which plugins
//! built for `projector:plugin@0.2.1`'s `prefetching-plugin` world add.
//! A component built for 0.2.0 (or for the world `plugin`) has no
//! `prefetch` and loads all the same: its fetches wait in `apply`.
//!
//! The host's bindings are of the newest world; the exports are looked up
//! by interface, each on its own, so a missing optional one is no error
//! (wasmtime matches `@0.2.1` lookups to a component's `@0.2.0` exports,
//! and its linker's `@0.2.1` imports to a component's `@0.2.0` ones).

use super::bindings::exports::projector::plugin::{comparison, prefetch, projection};
use super::HostState;
use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

/// Where a component's exports are, and how to instantiate it.
pub(super) struct PluginPre {
    pre: InstancePre<HostState>,
    projection: projection::GuestIndices,
    comparison: comparison::GuestIndices,
    prefetch: Option<prefetch::GuestIndices>,
}

impl PluginPre {
    /// The exports of `pre`'s component; an error when a required one is
    /// missing or of another type.
    pub(super) fn new(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(PluginPre {
            projection: projection::GuestIndices::new(&pre)?,
            comparison: comparison::GuestIndices::new(&pre)?,
            prefetch: prefetch::GuestIndices::new(&pre).ok(),
            pre,
        })
    }

    pub(super) fn engine(&self) -> &Engine {
        self.pre.engine()
    }

    /// Whether the component names its fetches ahead.
    pub(super) fn prefetches(&self) -> bool {
        self.prefetch.is_some()
    }

    /// A new instance in `store`, its exports type-checked.
    pub(super) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Plugin> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(Plugin {
            projection: self.projection.load(&mut *store, &instance)?,
            comparison: self.comparison.load(&mut *store, &instance)?,
            prefetch: match &self.prefetch {
                Some(p) => Some(p.load(&mut *store, &instance)?),
                None => None,
            },
        })
    }
}

/// One instance's exports.
pub(super) struct Plugin {
    projection: projection::Guest,
    comparison: comparison::Guest,
    prefetch: Option<prefetch::Guest>,
}

impl Plugin {
    pub(super) fn projector_plugin_projection(&self) -> &projection::Guest {
        &self.projection
    }

    pub(super) fn projector_plugin_comparison(&self) -> &comparison::Guest {
        &self.comparison
    }

    /// `None` for a component without `prefetch`.
    pub(super) fn projector_plugin_prefetch(&self) -> Option<&prefetch::Guest> {
        self.prefetch.as_ref()
    }
}
