//! The `projector` command line.

mod cli;

use clap::{Parser, Subcommand};
use projector::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// sled allocates heavily; mimalloc roughly doubles throughput over glibc malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "A WebAssembly-pluggable event processor: read-optimized views in sled"
)]
struct Cli {
    /// Config file (TOML). Default: ./projector.toml if present, else built-in defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    Replay { file: PathBuf },
    /// Print a view: its state, versions and the plugin's rendered answer.
    Get {
        plugin: String,
        key: String,
        /// Read time in ms since the epoch (default: now).
        #[arg(long)]
        at_ms: Option<i64>,
        /// A running instance's API, used when it holds the store (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
    },
    /// Store a view built from a source-of-truth answer (a JSON file, or `-`).
    Snapshot {
        plugin: String,
        key: String,
        answer: PathBuf,
    },
    /// Rebuild views from the plugin's sources (all stored views, or the keys given), with progress.
    Recollect { plugin: String, keys: Vec<String> },
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
        #[command(subcommand)]
        action: PluginAction,
        /// The runtime's API (default: `http.listen` of the config).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Store many keys' views from a plugin's source of truth, paced and
    /// resumable, in a running runtime; with a progress bar.
    Backfill(cli::backfill::Args),
    /// Compare stored views with the source of truth (a sample, or the
    /// keys given) in a running runtime; exits 1 unless all are equal.
    Verify(cli::verify::Args),
    /// Run a plugin over an NDJSON events file under the real host and
    /// compare every view with its golden file (`DIR/<key>.json`); twice,
    /// to check it is deterministic. Exits 1 on any difference.
    Test(cli::test_plugin::Args),
    /// Make a plugin project to start from: a counting plugin, sample
    /// events, golden views, a native test and a README.
    New(cli::new::Args),
    /// List dead letters as JSON lines, oldest first.
    DeadLetters {
        #[arg(long)]
        plugin: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// A running instance's API, used when it holds the store (default: `http.listen`).
        #[arg(long)]
        api: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum PluginAction {
    /// Deploy a `.wasm` as the new version of a plugin (replace mode:
    /// it takes over at the next batch boundary), or as a new plugin (its
    /// views are built first, shown with a progress bar).
    Deploy {
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
    },
    /// Where a shadow deploy is: progress, rate, ETA, last comparison.
    Shadow { name: String },
    /// Compare sampled keys of the two generations of a plugin.
    Compare {
        name: String,
        #[arg(long, default_value_t = 1000)]
        sample: usize,
    },
    /// Make the shadow generation serve reads (rollback undoes it).
    Promote { name: String },
    /// Delete the generation that does not serve reads.
    Retire { name: String },
    /// Every plugin's versions, active version and history (JSON).
    List,
    /// Return a plugin to the version active before the current one.
    Rollback { name: String },
    /// The recent log lines of a plugin's running version.
    Logs { name: String },
    /// Which version applied which offsets of each partition (JSON).
    Audit { name: String },
    /// Take a plugin out of the running runtime (its views stay, for it
    /// to come back from its offsets, unless --drop-views).
    Remove {
        name: String,
        #[arg(long)]
        drop_views: bool,
    },
}

fn main() -> std::process::ExitCode {
    projector::alloc::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROJECTOR_LOG")
                .unwrap_or_else(|_| "info,sled=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (a dead log pipe) loses the lines; reporting
        // that on stderr would panic the thread that logged.
        .log_internal_errors(false)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        // A reader that stops early (`| head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(p) => Config::load(p)?,
        None if Path::new("projector.toml").exists() => Config::load(Path::new("projector.toml"))?,
        None => Config::default(),
    };
    Ok(config.with_env())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Run {
            ingest,
            exit_when_idle,
            listen,
        } => return cli::run::run(config, ingest, exit_when_idle, listen),
        Command::Replay { file } => cli::replay::run(config, &file)?,
        Command::Get {
            plugin,
            key,
            at_ms,
            api,
        } => return cli::view::get(config, &plugin, &key, at_ms, api),
        Command::Snapshot {
            plugin,
            key,
            answer,
        } => cli::view::snapshot(config, &plugin, &key, &answer)?,
        Command::Recollect { plugin, keys } => return cli::recollect::run(config, &plugin, keys),
        Command::Plugin { action, api } => cli::plugin::run(&config, action, api)?,
        Command::Status { api } => cli::status::run(config, api)?,
        Command::KafkaDev {
            topics,
            group,
            brokers,
            changelog,
        } => cli::kafka_dev::run(&topics, &group, brokers, &changelog)?,
        Command::Backfill(args) => return cli::backfill::run(&config, args),
        Command::Verify(args) => return cli::verify::run(&config, args),
        Command::Test(args) => {
            cli::test_plugin::check(&args)?;
            return cli::test_plugin::run(args);
        }
        Command::New(args) => cli::new::run(args)?,
        Command::DeadLetters { plugin, limit, api } => {
            cli::dead_letters::run(&config, plugin.as_deref(), limit, api)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
