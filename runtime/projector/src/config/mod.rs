//! The TOML configuration of `projector run` and friends.
//!
//! Every table denies unknown keys; every limit carries its unit in its
//! name. An error names the file, and the key and what was expected (as
//! the TOML parser reports them, with line and column). Relative paths are
//! resolved against the directory of the config file.
//!
//! ```toml
//! data_dir = "data"            # sled store: views, offsets, the embedded log
//! plugins_dir = "plugins"      # every *.wasm here is loaded; name = file stem
//! format = "auto"              # auto | envelope | cloudevents | debezium
//!
//! [engine]
//! batch_size = 4096            # records per batch (and per atomic commit)
//! workers = 1                  # threads folding keys of one batch
//! commit_interval_ms = 1000    # commit views + offsets at most this often
//! compile_cache_dir = "data/compiled" # compiled plugins kept across restarts; "off"
//! watch_plugins = true         # deploy *.wasm changed in plugins_dir while running
//!
//! [log]
//! partitions = 4               # fixed when the log is created
//! dedup_window = 65536         # records per partition whose ids an append is checked against (0: off)
//!
//! [deploy]                     # plugin versions deployed in replace mode
//! probation_events = 1000      # watched for their first events (0: off) ...
//! max_failure_ratio = 0.1      # ... and rolled back above this failure ratio
//!
//! [source.kafka]               # consume Kafka instead of the embedded log
//! bootstrap_servers = "127.0.0.1:9092"
//! group_id = "projector"
//! topics = ["inbox"]
//! max_buffered_records = 16384 # per partition; a fuller one is paused
//! properties = { "session.timeout.ms" = "10000" } # any librdkafka property
//! changelog = false            # several instances: changelogs, restore, routed reads
//! partitioner = "murmur2"      # how producers key records: murmur2 | fnv1a
//! advertised_url = "http://10.0.0.5:8080" # where other instances forward reads (default: http://<listen>)
//!
//! [retry]                      # events a plugin failed with a transient error
//! blocking = 0                 # immediate retries (the key waits) ...
//! blocking_delay_ms = 50       # ... this long apart, doubled each time
//! attempts = 5                 # then delayed retries before the dead letter
//! delay_ms = 1000              # doubled per attempt
//! max_delay_ms = 60000
//!
//! [breaker]                    # pause a plugin when most of what it sees fails
//! min_failures = 20            # failures within the window before it opens (0: off)
//! failure_ratio = 0.5          # share of the window's deliveries that failed
//! window_deliveries = 100      # the window: the last 100 deliveries ...
//! window_ms = 60000            # ... of the last minute at most
//! probe_delay_ms = 1000        # then a probe replays a few missed events; doubled per failed probe
//! max_probe_delay_ms = 30000
//!
//! [limits]                     # defaults for every plugin
//! epoch_deadline_ms = 10
//! max_memory_bytes = 67108864
//!
//! [http]
//! listen = "127.0.0.1:8080"    # the read API; "off" to run without it
//! consistency_timeout_ms = 2000 # longest a token read waits by default
//! mismatches_kept = 100        # recent mismatches kept per plugin
//! user_header = "x-user-id"    # the request's user, for rollout rules
//! groups_header = "x-groups"   # the request's groups (comma-separated)
//! max_in_flight = 1024         # requests served at once; one more gets 503 + Retry-After (0: no bound)
//! body_timeout_ms = 10000      # a request body slower than this is answered 408 slow_client (0: none)
//!
//! [services.billing]           # a service plugins may fetch from (see fetch)
//! url = "http://billing.internal:8080"
//! cache_ttl_ms = 60000
//!
//! [plugins.inbox-unread]
//! population = "eager"         # override the plugin's own choice
//! services = []                # the services it may fetch from
//! settings = { max_unread = 1000 }
//! limits = { epoch_deadline_ms = 20 }
//! retry = { attempts = 10 }     # over [retry]
//! breaker = { min_failures = 50 } # over [breaker]
//! partition_by = { separator = ":", field = 1 } # the key part events are keyed by (several instances)
//!
//! [plugins.inbox-unread.truth] # the source of truth (see projector_api::truth)
//! url = "http://legacy/unread?user={user}&site={site}"
//! key = "{user}:{site}"
//!
//! [plugins.inbox-unread.rollout] # read modes per request (see projector_api::rollout)
//! default = "source"
//! keep_comparing_percent = 5
//! rules = [{ users = ["u1"], mode = "projection" },
//!          { percent = 20, mode = "compare-return-source" }]
//! ```

use projector_api::rollout::Rollout;
use projector_api::truth::{Truth, TruthConfig};
pub use projector_api::HttpConfig;
use projector_api::{ApiSettings, PluginApi};
pub use projector_core::breaker::BreakerConfig;
pub use projector_core::engine::{Policy, SweepPace};
pub use projector_core::envelope::Format;
pub use projector_core::RetryConfig;
pub use projector_deploy::DeployConfig;
use projector_deploy::{DeploySettings, PluginSetup};
use projector_host::fetch::ServiceConfig;
use projector_host::Limits;
pub use projector_sources::kafka::{KafkaConfig, KeyPart};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod plugin;
pub use plugin::{HistorySetting, Off, PluginConfig, RecordSetting};

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct Error {
    /// The config file, as given.
    pub file: String,
    /// What is wrong: the key and what was expected (with line and column from the TOML parser).
    pub message: String,
}

/// The whole configuration, one TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The sled store: views, offsets, the embedded log (default `data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Every `*.wasm` here is loaded, named by its file stem (default `plugins`).
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// How records are decoded: `auto`, `envelope`, `cloudevents` or `debezium`.
    #[serde(default)]
    pub format: Format,
    /// `[engine]`: batches, workers, commits, compile cache.
    #[serde(default)]
    pub engine: EngineConfig,
    /// `[log]`: the embedded log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[limits]`: defaults for every plugin, under each plugin's own `limits`.
    #[serde(default)]
    pub limits: LimitsPatch,
    /// `[http]`: the read API.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[retry]`: retries of events a plugin failed with a transient error.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[breaker]`: when a plugin is paused instead of failing everything.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// How deploys are watched.
    #[serde(default)]
    pub deploy: DeployConfig,
    /// Where events come from when not from the embedded log.
    #[serde(default)]
    pub source: SourceSection,
    /// Services plugins may fetch from (enrichment), by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[plugins.NAME]`: what the config says of each plugin, by name (the `.wasm` file stem).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
}

/// `[source]`: the Kafka source, when set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// `[source.kafka]`: consume Kafka topics instead of the embedded log.
    pub kafka: Option<KafkaConfig>,
}

fn default_data_dir() -> PathBuf {
    "data".into()
}

fn default_plugins_dir() -> PathBuf {
    "plugins".into()
}

/// `[engine]`: how batches are processed and committed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Records per batch (at least 1; default 4096).
    pub batch_size: usize,
    /// Threads folding the keys of one batch (1 to 256; default 1).
    pub workers: usize,
    /// Views, offsets and dead letters are committed at most this often
    /// (0: after every batch); a crash redoes what was not committed.
    pub commit_interval_ms: u64,
    /// Where compiled plugins are kept across restarts (default:
    /// `<data_dir>/compiled`; "off": compile at every start).
    pub compile_cache_dir: Option<PathBuf>,
    /// Deploy plugins changed in `plugins_dir` while running.
    pub watch_plugins: bool,
    /// Pause between two passes of the sweep that deletes expired views
    /// (plugins with `ttl_ms`), in ms (default 10000).
    pub sweep_interval_ms: u64,
    /// Views the sweep looks at per step (default 1000).
    pub sweep_page: usize,
    /// Views kept per generation of each plugin's view cache (default
    /// 200000; two generations, so about twice that in memory): views
    /// beyond it are read back from the store when their keys come again.
    pub view_cache_entries: usize,
    /// A memory budget in MiB (at least 64) that bounds, together, the
    /// store's page cache, the view and render caches and the views
    /// waiting for the materializer (each a share; see
    /// `docs/operations.md`). Unset: each part's own default, and
    /// `view_cache_entries` counts the views cached; set, the views are
    /// cached by size within their share instead.
    pub memory_mb: Option<u64>,
    /// sled's page cache in MiB, counted as sled counts it (by the pages'
    /// size on disk; it holds about four times that in memory). Default
    /// 256; a `memory_mb` budget sets it instead.
    pub store_cache_mb: u64,
    /// sled's log segments (and write buffers) in KiB for a store created
    /// now: a power of two from 64 to 16384. Default 512 (sled's own); a
    /// store that exists keeps the size it was created with. 4096 halves
    /// the inbox replay's store on disk at 4M events (`docs/benchmarks.md`).
    pub store_segment_kb: u64,
    /// The nice value of the processing threads (0, the default, to 19):
    /// above 0, on a machine with few cores, they yield the CPU to the
    /// threads serving reads, so reads wait less behind batches.
    pub processing_nice: i32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 4096,
            workers: 1,
            commit_interval_ms: 1000,
            compile_cache_dir: None,
            watch_plugins: true,
            sweep_interval_ms: 10_000,
            sweep_page: 1000,
            view_cache_entries: projector_core::engine::VIEW_CACHE_ENTRIES,
            memory_mb: None,
            store_cache_mb: projector_core::store::STORE_CACHE_BYTES >> 20,
            store_segment_kb: (projector_core::store::SEGMENT_BYTES >> 10) as u64,
            processing_nice: 0,
        }
    }
}

/// `[log]`: the embedded log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Partitions of the embedded log, fixed when it is created (1 to 4096; default 4).
    pub partitions: u32,
    /// Records per partition whose (source, id) an append is checked
    /// against: an event posted again within them is not appended twice
    /// (default 65536; 0 turns the check off).
    pub dedup_window: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 4,
            dedup_window: projector_sources::log::DEFAULT_DEDUP_WINDOW,
        }
    }
}

/// Limits given in a config table; what is left out keeps its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Guest time per event, in ms (at least 1).
    pub epoch_deadline_ms: Option<u64>,
    /// Guest time to instantiate a plugin and run its `configure`, in ms (at least 1).
    pub start_deadline_ms: Option<u64>,
    /// Linear memory of one instance, in bytes (at least 65536, one Wasm page).
    pub max_memory_bytes: Option<usize>,
    /// Encoded state of one view, in bytes.
    pub max_state_bytes: Option<usize>,
    /// Rendered answer of one view, in bytes.
    pub max_render_bytes: Option<usize>,
    /// View keys one event may touch.
    pub max_keys_per_event: Option<usize>,
    /// Length of one view key, in bytes.
    pub max_key_bytes: Option<usize>,
    /// Times a call that ran out of time is retried before it fails.
    pub timeout_retries: Option<u32>,
}

impl LimitsPatch {
    /// `to` with every limit given here set over it.
    pub fn apply(&self, mut to: Limits) -> Limits {
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        if let Some(v) = self.epoch_deadline_ms {
            to.epoch_deadline_ms = v;
        }
        if let Some(v) = self.start_deadline_ms {
            to.start_deadline_ms = v;
        }
        set(&mut to.max_memory_bytes, self.max_memory_bytes);
        set(&mut to.max_state_bytes, self.max_state_bytes);
        set(&mut to.max_render_bytes, self.max_render_bytes);
        set(&mut to.max_keys_per_event, self.max_keys_per_event);
        set(&mut to.max_key_bytes, self.max_key_bytes);
        if let Some(v) = self.timeout_retries {
            to.timeout_retries = v;
        }
        to
    }
}

impl Config {
    /// How the sweep of expired views is paced.
    pub fn sweep_pace(&self) -> SweepPace {
        SweepPace {
            every: Duration::from_millis(self.engine.sweep_interval_ms.max(1)),
            page: self.engine.sweep_page.max(1),
            between_steps: Duration::from_millis(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("the empty config is valid")
    }
}

impl Config {
    /// Parse `text` as if read from `file`, resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Self, Error> {
        let mut c: Config = toml::from_str(text).map_err(|e| Error {
            file: file.into(),
            message: e.to_string().trim_end().into(),
        })?;
        let bad = |message: String| Error {
            file: file.into(),
            message,
        };
        for (name, p) in c.plugins.iter_mut() {
            if let Some(old) = p.truth_by_old_name.take() {
                if p.truth.is_some() {
                    return Err(bad(format!(
                        "plugins.{name}: both `truth` and its older name `source` are set; keep `truth`"
                    )));
                }
                eprintln!(
                    "config {file}: [plugins.{name}.source] is now [plugins.{name}.truth]; the old name still works but will be removed"
                );
                p.truth = Some(old);
            }
        }
        c.breaker
            .check()
            .map_err(|e| bad(format!("breaker: {e}")))?;
        c.http.check_tokens().map_err(&bad)?;
        for name in c.plugins.keys() {
            c.policy(name).map_err(&bad)?;
        }
        if c.engine.batch_size == 0 {
            return Err(bad("engine.batch_size: expected at least 1, got 0".into()));
        }
        if !(1..=256).contains(&c.engine.workers) {
            return Err(bad(format!(
                "engine.workers: expected 1 to 256, got {}",
                c.engine.workers
            )));
        }
        if !(0..=19).contains(&c.engine.processing_nice) {
            return Err(bad(format!(
                "engine.processing_nice: expected 0 to 19, got {}",
                c.engine.processing_nice
            )));
        }
        let least = projector_core::engine::MIN_MEMORY_MB;
        if c.engine.memory_mb.is_some_and(|mb| mb < least) {
            return Err(bad(format!(
                "engine.memory_mb: expected at least {least} (MiB), got {}",
                c.engine.memory_mb.unwrap_or(0)
            )));
        }
        if c.engine.store_cache_mb == 0 {
            return Err(bad(
                "engine.store_cache_mb: expected at least 1, got 0".into()
            ));
        }
        let segment = c.engine.store_segment_kb;
        if !segment.is_power_of_two() || !(64..=16384).contains(&segment) {
            return Err(bad(format!(
                "engine.store_segment_kb: expected a power of two from 64 to 16384, got {segment}"
            )));
        }
        if c.engine.view_cache_entries == 0 {
            return Err(bad(
                "engine.view_cache_entries: expected at least 1, got 0".into()
            ));
        }
        if !(1..=4096).contains(&c.log.partitions) {
            return Err(bad(format!(
                "log.partitions: expected 1 to 4096, got {}",
                c.log.partitions
            )));
        }
        for (name, p) in std::iter::once(("limits", &c.limits))
            .chain(c.plugins.iter().map(|(n, p)| (n.as_str(), &p.limits)))
        {
            for (field, v) in [
                ("epoch_deadline_ms", p.epoch_deadline_ms),
                ("start_deadline_ms", p.start_deadline_ms),
            ] {
                if v == Some(0) {
                    return Err(bad(format!("{name}: {field}: expected at least 1, got 0")));
                }
            }
            if p.max_memory_bytes.is_some_and(|m| m < 1 << 16) {
                return Err(bad(format!(
                    "{name}: max_memory_bytes: expected at least 65536 (one Wasm page)"
                )));
            }
        }
        for (name, s) in &c.services {
            s.validate()
                .map_err(|e| bad(format!("services.{name}.{e}")))?;
        }
        for (name, p) in &c.plugins {
            if let Some(unknown) = p.services.iter().find(|s| !c.services.contains_key(*s)) {
                return Err(bad(format!(
                    "plugins.{name}.services: {unknown:?} is not a configured service ([services.{unknown}])"
                )));
            }
            if let Some(truth) = &p.truth {
                Truth::new(truth).map_err(|e| bad(format!("plugins.{name}.truth.{e}")))?;
            }
            p.promote
                .check()
                .map_err(|e| bad(format!("plugins.{name}.{e}")))?;
            if let Some(rollout) = &p.rollout {
                rollout
                    .clone()
                    .validate()
                    .map_err(|e| bad(format!("plugins.{name}.rollout.{e}")))?;
            }
        }
        if !(0.0..=1.0).contains(&c.deploy.max_failure_ratio) {
            return Err(bad(format!(
                "deploy.max_failure_ratio: expected 0 to 1, got {}",
                c.deploy.max_failure_ratio
            )));
        }
        if let Some(k) = &c.source.kafka {
            k.validate().map_err(|e| bad(format!("source.kafka.{e}")))?;
        }
        if c.http.listen != "off" && c.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(format!(
                "http.listen: expected an address like 127.0.0.1:8080, or \"off\"; got {:?}",
                c.http.listen
            )));
        }
        c.engine.compile_cache_dir = match c.engine.compile_cache_dir.take() {
            Some(dir) if dir.as_os_str() == "off" => Some(dir),
            Some(dir) => Some(base.join(dir)),
            None => Some(base.join(&c.data_dir).join("compiled")),
        };
        c.data_dir = base.join(&c.data_dir);
        c.plugins_dir = base.join(&c.plugins_dir);
        Ok(c)
    }

    /// Read a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// The tokens from the environment over the file's:
    /// `PROJECTOR_ADMIN_TOKEN`, `PROJECTOR_READ_TOKEN`,
    /// `PROJECTOR_INGEST_TOKEN` (an empty variable is ignored).
    pub fn with_env(mut self) -> Self {
        for (var, slot) in [
            ("PROJECTOR_ADMIN_TOKEN", &mut self.http.admin_token),
            ("PROJECTOR_READ_TOKEN", &mut self.http.read_token),
            ("PROJECTOR_INGEST_TOKEN", &mut self.http.ingest_token),
        ] {
            if let Some(t) = std::env::var(var).ok().filter(|t| !t.trim().is_empty()) {
                *slot = Some(t);
            }
        }
        self
    }

    /// The limits of plugin `name`: defaults, then `[limits]`, then its own.
    pub fn limits_of(&self, name: &str) -> Limits {
        let global = self.limits.apply(Limits::default());
        match self.plugins.get(name) {
            Some(p) => p.limits.apply(global),
            None => global,
        }
    }

    /// The settings of plugin `name` as JSON (`{}` when none).
    pub fn settings_of(&self, name: &str) -> serde_json::Value {
        self.plugins
            .get(name)
            .and_then(|p| p.settings.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// What the deployer needs of the config.
    pub fn deploy_settings(&self) -> DeploySettings {
        let setup = |name: &str| PluginSetup {
            limits: self.limits_of(name),
            settings: self.settings_of(name),
            services: self
                .plugins
                .get(name)
                .map(|p| p.services.clone())
                .unwrap_or_default(),
            prefetch: self.plugins.get(name).is_none_or(|p| p.prefetch),
            population: self.plugins.get(name).and_then(|p| p.population),
            promote: self
                .plugins
                .get(name)
                .map(|p| p.promote.clone())
                .unwrap_or_default(),
        };
        DeploySettings {
            deploy: self.deploy,
            plugins: self
                .plugins
                .keys()
                .map(|name| (name.clone(), setup(name)))
                .collect(),
            // No plugin is named "": the defaults and `[limits]`.
            default: setup(""),
        }
    }

    /// What the HTTP layer needs of the config.
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            http: self.http.clone(),
            plugins: self
                .plugins
                .iter()
                .map(|(name, p)| {
                    let api = PluginApi {
                        truth: p.truth.clone(),
                        rollout: p.rollout.clone(),
                    };
                    (name.clone(), api)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, "projector.toml", Path::new("."))
    }

    #[test]
    fn the_truth_is_read_under_its_older_name_too() {
        let old = parse("[plugins.x.source]\nurl = \"http://legacy/{key}\"\n").expect("parses");
        let truth = old.plugins["x"].truth.as_ref().expect("the truth is set");
        assert_eq!(truth.url, "http://legacy/{key}");
        let both = parse(
            "[plugins.x.truth]\nurl = \"http://a/{key}\"\n[plugins.x.source]\nurl = \"http://b/{key}\"\n",
        )
        .expect_err("refused");
        assert!(both
            .message
            .contains("both `truth` and its older name `source`"));
    }

    #[test]
    fn a_plugins_history_is_bounds_or_off() {
        let kept = parse("[plugins.x]\nhistory = { versions = 5, ms = 1000 }\n").expect("parses");
        let policy = kept.policy("x").expect("policy");
        assert_eq!(
            policy.history,
            Some(projector_core::engine::HistoryBounds {
                versions: 5,
                ms: 1000
            })
        );
        let off = parse("[plugins.x]\nhistory = \"off\"\n").expect("parses");
        assert_eq!(off.policy("x").expect("policy").history, None);
        assert_eq!(
            parse("[plugins.x]\n")
                .expect("parses")
                .policy("x")
                .expect("policy")
                .history,
            None
        );
        let zero =
            parse("[plugins.x]\nhistory = { versions = 0, ms = 1000 }\n").expect_err("refused");
        assert!(
            zero.message.contains("plugins.x.history"),
            "{}",
            zero.message
        );
        assert!(parse("[plugins.x]\nhistory = \"sometimes\"\n").is_err());
        // The gate's settings are checked too.
        let gate = parse("[plugins.x.promote]\nmax_mismatch = 3.0\n").expect_err("refused");
        assert!(
            gate.message.contains("plugins.x.promote.max_mismatch"),
            "{}",
            gate.message
        );
    }

    #[test]
    fn a_plugins_fetch_record_is_off_on_or_bounded_by_age_and_size() {
        let record = |text: &str| {
            parse(&format!("[plugins.x]\n{text}\n"))
                .and_then(|c| {
                    c.policy("x").map_err(|message| Error {
                        file: "projector.toml".into(),
                        message,
                    })
                })
                .map(|p| p.record_fetches)
        };
        let week = 7 * 24 * 3600 * 1000;
        let bounds = |ms, mb: u64| {
            Some(projector_core::engine::RecordBounds {
                ms,
                max_bytes: mb << 20,
            })
        };
        assert_eq!(record("").expect("parses"), None);
        assert_eq!(record("record_fetches = false").expect("parses"), None);
        assert_eq!(
            record("record_fetches = true").expect("parses"),
            bounds(week, 256)
        );
        assert_eq!(
            record("record_fetches = { mb = 16 }").expect("parses"),
            bounds(week, 16)
        );
        assert_eq!(
            record("record_fetches = { ms = 1000, mb = 1 }").expect("parses"),
            bounds(1000, 1)
        );
        let zero = record("record_fetches = { mb = 0 }").expect_err("refused");
        assert!(
            zero.message.contains("plugins.x.record_fetches"),
            "{}",
            zero.message
        );
        assert!(record("record_fetches = { gb = 1 }").is_err());
    }

    #[test]
    fn a_memory_budget_is_at_least_its_floor() {
        assert_eq!(parse("").expect("parses").engine.memory_mb, None);
        let set = parse("[engine]\nmemory_mb = 512\n").expect("parses");
        assert_eq!(set.engine.memory_mb, Some(512));
        let small = parse("[engine]\nmemory_mb = 8\n").expect_err("refused");
        assert!(
            small.message.contains("engine.memory_mb"),
            "{}",
            small.message
        );
        assert_eq!(parse("").expect("parses").engine.store_cache_mb, 256);
        let none = parse("[engine]\nstore_cache_mb = 0\n").expect_err("refused");
        assert!(
            none.message.contains("engine.store_cache_mb"),
            "{}",
            none.message
        );
    }

    #[test]
    fn a_stores_log_segments_are_a_power_of_two_of_kib_in_sleds_range() {
        assert_eq!(parse("").expect("parses").engine.store_segment_kb, 512);
        let set = parse("[engine]\nstore_segment_kb = 4096\n").expect("parses");
        assert_eq!(set.engine.store_segment_kb, 4096);
        for bad in ["1000", "32", "32768", "0"] {
            let e = parse(&format!("[engine]\nstore_segment_kb = {bad}\n")).expect_err(bad);
            assert!(
                e.message.contains("engine.store_segment_kb"),
                "{}",
                e.message
            );
        }
    }
}
