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
//! keeps running. Deploying bytes already active is a no-op. At start the
//! active version is loaded from the registry, so a deploy survives a
//! restart (and, with the compile cache, is not compiled again).

//!
//! Map: [`registry`] (versions by content id, the active one, history),
//! [`deployer`] (load, replace, rollback), `probation` (a replace deploy
//! watched and rolled back by itself), [`shadow`] (generations rebuilt or
//! migrated beside the live one, compared, promoted, retired), [`watch`]
//! (the plugins directory), [`settings`] (what the config says of each
//! plugin). It depends on the sources crate only for [`Replay`], the
//! retained records a shadow generation is rebuilt from.

pub mod deployer;
mod probation;
pub mod registry;
pub mod settings;
pub mod shadow;
pub mod watch;

pub use deployer::{Deployed, Deployer};
pub use projector_sources::Replay;
pub use registry::{content_id, Entry, Registry, Version};
pub use settings::{DeployConfig, DeploySettings, PluginSetup};
pub use shadow::{Comparison, ShadowMethod, ShadowStatus};
pub use watch::watch_dir;

/// What a deploy can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] projector_core::store::Error),
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("plugin {name}: version {id} rejected: {reason}")]
    Rejected {
        name: String,
        id: String,
        reason: String,
    },
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NoEarlier(String),
    #[error("plugin {name}: version {id} is not in the registry")]
    UnknownVersion { name: String, id: String },
    #[error(transparent)]
    Engine(#[from] projector_core::engine::Error),
    #[error("plugin {0:?} has no shadow generation (deploy with mode=shadow)")]
    NoShadow(String),
    #[error("plugin {0:?}: the runtime is stopping")]
    Stopped(String),
    #[error("registry entry of {name}: {reason}")]
    Corrupt { name: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
