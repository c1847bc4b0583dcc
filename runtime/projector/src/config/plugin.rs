//! `[plugins.NAME]`: what the config says of one plugin, and the
//! policy (retries, breaker, time to live, history, recorded fetches) it
//! runs with.

use super::{Config, LimitsPatch, Rollout, TruthConfig};
use projector_core::engine::{Policy, RecordBounds};
use projector_guest::Population;
use projector_sources::kafka::KeyPart;
use serde::Deserialize;

/// `[plugins.NAME]`: what the config says of one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Overrides the plugin's own population (`lazy` or `eager`).
    pub population: Option<Population>,
    /// Settings handed to the plugin's `configure`, as JSON (`{}` when none).
    #[serde(default)]
    pub settings: Option<toml::Table>,
    /// This plugin's limits, over `[limits]`.
    #[serde(default)]
    pub limits: LimitsPatch,
    /// The source of truth reads fall back to.
    pub truth: Option<TruthConfig>,
    /// `[plugins.NAME.source]`, the older name of `truth`, still read
    /// (with a warning).
    #[serde(default, rename = "source")]
    pub(super) truth_by_old_name: Option<TruthConfig>,
    /// The services this plugin may fetch from (its allow-list).
    #[serde(default)]
    pub services: Vec<String>,
    /// Fetch ahead, before each batch, what the plugin names its events
    /// will fetch (a plugin built with the `prefetch` export); default on.
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// The read modes per request; changeable at runtime.
    pub rollout: Option<Rollout>,
    /// This plugin's retries, over `[retry]` (any of its keys).
    #[serde(default)]
    pub retry: Option<toml::Table>,
    /// This plugin's breaker, over `[breaker]` (any of its keys).
    #[serde(default)]
    pub breaker: Option<toml::Table>,
    /// How long a view lives after its last event, in ms (default: for
    /// ever). An expired view reads as absent and is swept.
    pub ttl_ms: Option<u64>,
    /// With several instances on Kafka (`[source.kafka] changelog = true`):
    /// the part of a view key its events are keyed by, e.g. `{ separator =
    /// ":", field = 1 }` for the inbox's `user:site` (default: the whole key).
    pub partition_by: Option<KeyPart>,
    /// `[plugins.NAME.promote]`: who promotes its shadow deploys
    /// (`manual`, the default, or `gated`) and the gate's conditions.
    #[serde(default)]
    pub promote: projector_deploy::PromoteConfig,
    /// How much of each view's past is kept for `as_of` reads and
    /// `/history`: `{ versions = 50, ms = 604800000 }`, or "off" (the
    /// default).
    #[serde(default)]
    pub history: HistorySetting,
    /// Record the answers its fetches get, for replays: `true` (kept 7
    /// days, at most 256 MiB) or `{ ms = 604800000, mb = 256 }`; off by
    /// default.
    #[serde(default)]
    pub record_fetches: RecordSetting,
}

fn yes() -> bool {
    true
}

/// `[plugins.NAME] record_fetches`: off, on, or on with bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RecordSetting {
    /// Not recorded (the default).
    #[default]
    Unset,
    /// `true` (the default bounds) or `false`.
    On(bool),
    /// Kept within these bounds.
    Bounded(RecordTable),
}

/// `record_fetches = { ms = 604800000, mb = 256 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTable {
    /// Age past which an answer is dropped, in ms (default 7 days).
    #[serde(default = "RecordTable::week")]
    pub ms: u64,
    /// Size past which the oldest answers are dropped, in MiB (keys and
    /// bodies; default 256).
    #[serde(default = "RecordTable::default_mb")]
    pub mb: u64,
}

impl RecordTable {
    fn week() -> u64 {
        7 * 24 * 3600 * 1000
    }
    fn default_mb() -> u64 {
        256
    }
}

impl RecordSetting {
    /// The bounds answers are kept within, when recorded.
    pub fn bounds(&self) -> Option<RecordBounds> {
        let table = match self {
            RecordSetting::On(true) => RecordTable {
                ms: RecordTable::week(),
                mb: RecordTable::default_mb(),
            },
            RecordSetting::Bounded(t) => *t,
            _ => return None,
        };
        Some(RecordBounds {
            ms: table.ms,
            max_bytes: table.mb.saturating_mul(1 << 20),
        })
    }
}

/// `[plugins.NAME] history`: bounds, or "off".
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum HistorySetting {
    /// None kept (the default; also `history = "off"`).
    #[default]
    Off,
    /// "off", by name.
    Named(Off),
    /// The bounds kept.
    Kept(projector_core::engine::HistoryBounds),
}

/// The one word `history` takes.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Off {
    /// No history.
    Off,
}

impl HistorySetting {
    /// The bounds, when kept.
    pub fn bounds(&self) -> Option<projector_core::engine::HistoryBounds> {
        match self {
            HistorySetting::Kept(b) => Some(*b),
            _ => None,
        }
    }
}

/// `base` with the keys of `patch` set over it.
fn patched<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: &T,
    patch: &Option<toml::Table>,
) -> Result<T, String> {
    let mut table = toml::Table::try_from(base).map_err(|e| e.to_string())?;
    if let Some(patch) = patch {
        table.extend(patch.clone());
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
}

impl Config {
    /// The retry, breaker and time-to-live settings plugin `name` runs with.
    pub fn policy(&self, name: &str) -> Result<Policy, String> {
        let Some(p) = self.plugins.get(name) else {
            return Ok(Policy {
                retry: self.retry,
                breaker: self.breaker,
                ttl_ms: None,
                history: None,
                record_fetches: None,
            });
        };
        let retry =
            patched(&self.retry, &p.retry).map_err(|e| format!("plugins.{name}.retry: {e}"))?;
        let breaker = patched(&self.breaker, &p.breaker)
            .map_err(|e| format!("plugins.{name}.breaker: {e}"))?;
        breaker
            .check()
            .map_err(|e| format!("plugins.{name}.breaker: {e}"))?;
        if p.ttl_ms == Some(0) {
            return Err(format!(
                "plugins.{name}.ttl_ms: expected at least 1 (leave it out for views that never expire)"
            ));
        }
        let history = p.history.bounds();
        if history.is_some_and(|h| h.versions == 0 || h.ms == 0) {
            return Err(format!(
                "plugins.{name}.history: versions and ms: expected at least 1 (history = \"off\" keeps none)"
            ));
        }
        let record_fetches = p.record_fetches.bounds();
        if record_fetches.is_some_and(|r| r.ms == 0 || r.max_bytes == 0) {
            return Err(format!(
                "plugins.{name}.record_fetches: ms and mb: expected at least 1 (record_fetches = false keeps none)"
            ));
        }
        Ok(Policy {
            retry,
            breaker,
            ttl_ms: p.ttl_ms,
            history,
            record_fetches,
        })
    }
}
