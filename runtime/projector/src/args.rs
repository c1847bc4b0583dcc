//! The command line of the `projector` binary: its clap definition, and
//! nothing that runs a command. `main.rs` parses it and runs the command;
//! the docs test parses every command line the docs show with it, so the
//! docs cannot name a flag the binary does not have.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `projector [--config FILE] COMMAND ...`.
#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "A WebAssembly-pluggable event processor: read-optimized views in sled"
)]
pub struct Cli {
    /// Config file (TOML). Default: ./projector.toml if present, else built-in defaults.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Log lines on stderr: `text` (coloured on a terminal) or `json`, one
    /// object a line, for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    Text,
    /// One JSON object a line.
    Json,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the runtime on the embedded log with the plugins loaded.
    Run {
        /// NDJSON files appended to the embedded log at start (`-` for stdin).
        #[arg(long)]
        ingest: Vec<PathBuf>,
        /// Stop once every partition is caught up, instead of following the log.
        #[arg(long)]
        exit_when_idle: bool,
        /// Address of the read API (overrides `http.listen`; "off" for none).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Replay an NDJSON events file (or `-` for stdin) into the views; resumes where it stopped.
    Replay {
        /// The events file, NDJSON (`-` for stdin).
        file: PathBuf,
    },
    /// Print a view: its state, versions and the plugin's rendered answer.
    Get {
        /// The plugin.
        plugin: String,
        /// The view's key.
        key: String,
        /// Read time in ms since the epoch (default: now).
        #[arg(long)]
        at_ms: Option<i64>,
        /// The view as it was at this time, in ms since the epoch (a
        /// plugin with `history`): the last change committed then.
        #[arg(long, value_name = "MS", conflicts_with = "as_of_position")]
        as_of: Option<i64>,
        /// The view as of a position token (`log@0:15,3:44`): the last
        /// change committed before any named partition passed its offset.
        #[arg(long, value_name = "TOKEN")]
        as_of_position: Option<String>,
        /// A running instance's API, used when it holds the store (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
    },
    /// Store a view built from a source-of-truth answer (a JSON file, or `-`).
    Snapshot {
        /// The plugin.
        plugin: String,
        /// The view's key.
        key: String,
        /// The source of truth's answer, JSON (`-` for stdin).
        answer: PathBuf,
    },
    /// Rebuild views from the plugin's sources (all stored views, or the keys given), with progress.
    Recollect {
        /// The plugin.
        plugin: String,
        /// The keys to rebuild (default: every stored view).
        keys: Vec<String>,
    },
    /// Show each loaded plugin with its event counts (JSON).
    Status {
        /// A running instance's API, used when it holds the store (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
    },
    /// Start librdkafka's mock Kafka cluster in this process and print its
    /// bootstrap address, for local work with kcat-like tools and
    /// `[source.kafka]`; runs until interrupted.
    KafkaDev {
        /// Topics to create, as name or name:partitions.
        #[arg(long, value_delimiter = ',', default_value = "events:4")]
        topics: Vec<String>,
        /// Also create `<topic>.<group>.retry` and `.dlq` for this group.
        #[arg(long, default_value = "projector")]
        group: String,
        /// Brokers of the mock cluster.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Also create `<group>.<plugin>.changelog` (as many partitions as
        /// the first topic) for each of these plugins, and `<group>.members`,
        /// for several instances (`[source.kafka] changelog = true`).
        #[arg(long, value_delimiter = ',')]
        changelog: Vec<String>,
    },
    /// Deploy, list, roll back and read the logs of plugins in a running
    /// runtime, through its admin API.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        action: PluginAction,
        /// The runtime's API (default: `http.listen` of the config).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Store many keys' views from a plugin's source of truth, paced and
    /// resumable, in a running runtime; with a progress bar.
    Backfill(BackfillArgs),
    /// Compare stored views with the source of truth (a sample, or the
    /// keys given) in a running runtime; exits 1 unless all are equal.
    Verify(VerifyArgs),
    /// Run a plugin over an NDJSON events file under the real host and
    /// compare every view with its golden file (`DIR/<key>.json`); twice,
    /// to check it is deterministic. Exits 1 on any difference.
    Test(TestArgs),
    /// Make a plugin project to start from: a counting plugin, sample
    /// events, golden views, a native test and a README.
    New(NewArgs),
    /// Build a plugin project (Rust or TypeScript, told by its Cargo.toml
    /// or package.json) into its component, and print the `.wasm`'s path.
    Build(BuildArgs),
    /// List dead letters as JSON lines, oldest first; `redrive` sends
    /// them back through their plugin's serving version.
    #[command(args_conflicts_with_subcommands = true)]
    DeadLetters {
        /// Which letters.
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// A running instance's API, used when it holds the store (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
        /// What to do with them (list them by default).
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
}

/// Which dead letters.
#[derive(clap::Args, Default)]
pub struct DeadLetterFilter {
    /// Only this plugin's.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Only those of this plugin version (a content id, or at least 4 of its hex digits).
    #[arg(long)]
    pub version: Option<String>,
    /// Only those of this view key.
    #[arg(long)]
    pub key: Option<String>,
}

/// `projector dead-letters redrive`.
#[derive(Subcommand)]
pub enum DeadLetterAction {
    /// Send a plugin's dead letters back through its serving version
    /// (through the running instance's API); they apply within a second,
    /// or come back as new dead letters if they fail again.
    Redrive {
        /// The plugin.
        #[arg(long)]
        plugin: String,
        /// Only those of this version (a content id, or at least 4 of its hex digits).
        #[arg(long)]
        version: Option<String>,
        /// Only those of this view key.
        #[arg(long)]
        key: Option<String>,
        /// Only these letters (their `seq`); repeat for several.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// The running instance's API (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
    },
}

/// `projector plugin ...`: what to do with plugins in a running runtime.
#[derive(Subcommand)]
pub enum PluginAction {
    /// Deploy a `.wasm` as the new version of a plugin (replace mode:
    /// it takes over at the next batch boundary), or as a new plugin (its
    /// views are built first, shown with a progress bar).
    Deploy {
        /// The plugin's `.wasm`.
        file: PathBuf,
        /// The plugin's name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// `replace`, or `shadow`: build a new generation of the views
        /// beside the live one (shown with a progress bar), to compare
        /// and promote.
        #[arg(long, default_value = "replace")]
        mode: String,
        /// For shadow: `auto` (rebuild when the log reaches back to its
        /// beginning, else migrate), `rebuild` or `migrate`.
        #[arg(long, default_value = "auto")]
        method: String,
        /// Replace the running plugin of that name, or run a component
        /// under a name it does not call itself (both refused otherwise).
        #[arg(long)]
        replace: bool,
        /// A setting over the config's `[plugins.NAME] settings`, kept
        /// with this version (repeatable): `key=value`, the value JSON
        /// when it parses as JSON, else a string.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// For shadow: who promotes it, `manual` or `gated` (it promotes
        /// itself once `[plugins.NAME.promote]`'s conditions hold, then is
        /// watched and rolled back by itself on a spike); default: as that
        /// table's `mode` says.
        #[arg(long, value_name = "MODE")]
        promote: Option<projector_deploy::PromoteMode>,
    },
    /// Where a shadow deploy is: progress, rate, ETA, last comparison,
    /// and its promotion gate's conditions.
    Shadow {
        /// The plugin.
        name: String,
    },
    /// Compare sampled keys of the two generations of a plugin.
    Compare {
        /// The plugin.
        name: String,
        /// Keys to compare.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
    },
    /// Make the shadow generation serve reads (rollback undoes it). A
    /// shadow that dead-letters a larger share of its events than the
    /// serving version is held unless --force.
    Promote {
        /// The plugin.
        name: String,
        /// Promote a held shadow anyway.
        #[arg(long)]
        force: bool,
    },
    /// Delete the generation that does not serve reads.
    Retire {
        /// The plugin.
        name: String,
    },
    /// Every plugin's versions, active version and history (JSON).
    List,
    /// Return a plugin to the version active before the current one.
    Rollback {
        /// The plugin.
        name: String,
    },
    /// The recent log lines of a plugin's running version.
    Logs {
        /// The plugin.
        name: String,
    },
    /// Which version applied which offsets of each partition (JSON).
    Audit {
        /// The plugin.
        name: String,
    },
    /// Take a plugin out of the running runtime (its views stay, for it
    /// to come back from its offsets, unless --drop-views).
    Remove {
        /// The plugin.
        name: String,
        /// Delete its views too.
        #[arg(long)]
        drop_views: bool,
    },
}

/// `projector backfill`: what to backfill and how fast.
#[derive(clap::Args)]
pub struct BackfillArgs {
    /// The plugin.
    pub plugin: String,
    /// The keys, one per line (`-` for stdin).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Keys started per second, at most.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Keys in flight at once, at most.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Follow the plugin's backfill already under way.
    #[arg(long)]
    pub follow: bool,
    /// Stop the plugin's backfill and forget its keys.
    #[arg(long)]
    pub cancel: bool,
    /// The runtime's API (default: `http.listen` of the config).
    #[arg(long)]
    pub api: Option<String>,
}

/// `projector verify`: what to verify.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The plugin.
    pub plugin: String,
    /// Stored keys to check, spread over the key space.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Check these keys instead, one per line (`-` for stdin).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Mark mismatched views Invalid, for the next read or a backfill to heal.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Source requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The runtime's API (default: `http.listen` of the config).
    #[arg(long)]
    pub api: Option<String>,
}

/// `projector test`: what to test.
#[derive(clap::Args)]
pub struct TestArgs {
    /// The plugin's `.wasm`.
    pub wasm: PathBuf,
    /// The events, NDJSON.
    #[arg(long)]
    pub events: PathBuf,
    /// The golden views, one `<key>.json` each.
    #[arg(long)]
    pub expect: PathBuf,
    /// Write the golden files from this run instead of comparing.
    #[arg(long)]
    pub update: bool,
    /// The plugin's settings, as a JSON object.
    #[arg(long)]
    pub settings: Option<String>,
    /// `eager` (every event makes views) or `lazy` (the plugin's own
    /// way: views only from snapshots).
    #[arg(long, default_value = "eager")]
    pub population: String,
    /// Read time to render at (default: the last event's time).
    #[arg(long)]
    pub at_ms: Option<i64>,
}

/// `projector new`: what to make, and where.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The plugin's name.
    pub name: String,
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The plugin SDK (default: guest-sdk/ of the checkout this projector was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// `projector build`: which plugin project.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The project's directory (default: the current one).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// A language plugins are written in.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the SDK in `guest-sdk`.
    Rust,
    /// TypeScript (or JavaScript), with the SDK in `guest-sdk/js`.
    Ts,
}
