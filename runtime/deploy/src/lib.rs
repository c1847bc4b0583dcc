//! projector-deploy: plugin versions while events flow.
//!
//! The plugin registry: every version of every plugin ever deployed, by
//! content hash (SHA-256 of the `.wasm`), with the active one and the
//! ones it replaced, kept in the store with the code itself; and the
//! [`Deployer`] that compiles a version off the event path and swaps it
//! in at the next batch boundary (`replace` mode).
//!
//! A version that fails to compile, to link, to implement the plugin
//! world or to start is rejected with its reason, and the running one
//! keeps running. Deploying bytes already active is a no-op, unless with
//! other settings (a reconfigure, refused without `replace`). At start the
//! active version is loaded from the registry, so a deploy survives a
//! restart (and, with the compile cache, is not compiled again).

//!
//!
//! Map: [`registry`] (versions by content id, the active one, history),
//! [`deployer`] (load, replace, rollback), [`gate`] and `gatekeeper`
//! (gated promotion: the conditions a shadow must meet before it
//! promotes itself, and the watch after), [`guard`] (what a deploy may
//! take without the operator's `replace`), `probation` (a replace deploy
//! watched and rolled back by itself), [`shadow`] (generations rebuilt or
//! migrated beside the live one, compared, promoted, retired), [`watch`]
//! (the plugins directory), [`settings`] (what the config says of each
//! plugin), `redrive` (dead letters sent back, noted in the history). It
//! sees the sources only through [`Replay`] (the core's narrow trait), the
//! retained records a shadow generation is rebuilt from.

#![deny(missing_docs)]

mod add;
mod build;
mod compare;
pub mod deployer;
pub mod gate;
mod gatekeeper;
pub mod guard;
mod probation;
mod redrive;
pub mod registry;
pub mod settings;
pub mod shadow;
pub mod watch;

pub use add::Removed;
pub use build::ShadowStatus;
pub use compare::Comparison;
pub use deployer::{Deployed, Deployer};
pub use gate::{GateStatus, PromoteConfig, PromoteMode, Verified, Verifier};
pub use gatekeeper::Decision;
pub use projector_core::source::Replay;
pub use registry::{content_id, Action, Entry, Event, Registry, Settings, Version};
pub use settings::{DeployConfig, DeploySettings, PluginSetup};
pub use shadow::ShadowMethod;
pub use watch::watch_dir;

/// What a deploy can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] projector_core::store::Error),
    /// The registry's code tree failed to read or write.
    #[error(transparent)]
    Sled(#[from] sled::Error),
    /// A version failed to compile, link, implement the plugin world or
    /// start, or a shadow operation was refused.
    #[error("plugin {name}: version {id} rejected: {reason}")]
    Rejected {
        /// Name of the plugin.
        name: String,
        /// The version's content id, first 12 hex digits.
        id: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A deploy would replace a running plugin, or run a component under
    /// a name it does not call itself, and the operator did not ask for a
    /// replace.
    #[error("{0}")]
    ReplaceRequired(guard::Refusal),
    /// A rollback found no earlier version (or generation) to go back to.
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NoEarlier(String),
    /// A version in the plugin's history has no code in the registry.
    #[error("plugin {name}: version {id} is not in the registry")]
    UnknownVersion {
        /// Name of the plugin.
        name: String,
        /// Content id of the missing version.
        id: String,
    },
    /// The engine refused or failed the change (e.g. no such plugin loaded).
    #[error(transparent)]
    Engine(#[from] projector_core::engine::Error),
    /// A promotion was refused: the shadow generation dead-letters more
    /// than the serving one, and the operator did not force it.
    #[error("plugin {name}: version {id} is held from promotion: {reason}; promote with force to take it anyway")]
    Held {
        /// Name of the plugin.
        name: String,
        /// The shadow version's content id, first 12 hex digits.
        id: String,
        /// The rates compared.
        reason: String,
    },
    /// The plugin has no shadow generation to compare, promote, roll back to or retire.
    #[error("plugin {0:?} has no shadow generation (deploy with mode=shadow)")]
    NoShadow(String),
    /// The runtime began stopping during a shadow build, which stops between two batches.
    #[error("plugin {0:?}: the runtime is stopping")]
    Stopped(String),
    /// A registry entry did not decode, or a shadow build could not start or found records missing.
    #[error("registry entry of {name}: {reason}")]
    Corrupt {
        /// Name of the plugin.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A deploy's result, [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
