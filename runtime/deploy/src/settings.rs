//! What the configuration says of each plugin, as the deployer needs it:
//! limits, settings, allowed services, population; and how deploys are
//! watched.

use projector_guest::Population;
use projector_host::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[deploy]`: a version deployed in replace mode is on probation for
/// its first `probation_events` events; if more than
/// `max_failure_ratio` of them fail (traps, timeouts, bad output,
/// errors), the runtime rolls back to the version it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Events watched after a replace deploy (0: no probation).
    pub probation_events: u64,
    /// The share of them that may fail before a rollback.
    pub max_failure_ratio: f64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            probation_events: 1000,
            max_failure_ratio: 0.1,
        }
    }
}

/// How one plugin is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSetup {
    /// The limits its calls run under.
    pub limits: Limits,
    /// Its settings, as JSON (`{}` when none).
    pub settings: serde_json::Value,
    /// The services it may fetch from.
    pub services: Vec<String>,
    /// Whether the fetches it names ahead are fetched before each batch.
    pub prefetch: bool,
    /// Eager or lazy, when the config overrides the plugin's own choice.
    pub population: Option<Population>,
    /// `[plugins.NAME.promote]`: who promotes its shadow deploys, and
    /// the gate's conditions.
    pub promote: crate::gate::PromoteConfig,
}

impl Default for PluginSetup {
    fn default() -> Self {
        PluginSetup {
            limits: Limits::default(),
            settings: serde_json::json!({}),
            services: Vec::new(),
            prefetch: true,
            population: None,
            promote: crate::gate::PromoteConfig::default(),
        }
    }
}

/// What the deployer is told by the configuration.
#[derive(Debug, Clone, Default)]
pub struct DeploySettings {
    /// How replace deploys are watched.
    pub deploy: DeployConfig,
    /// The setup of each plugin the config names.
    pub plugins: BTreeMap<String, PluginSetup>,
    /// The setup of a plugin the config does not name.
    pub default: PluginSetup,
}

impl DeploySettings {
    /// The setup of plugin `name`.
    pub(crate) fn of(&self, name: &str) -> &PluginSetup {
        self.plugins.get(name).unwrap_or(&self.default)
    }
}
