//! The `projector` command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use projector::app::App;
use projector::config::Config;
use projector_host::shutdown::Shutdown;
use projector_sources::log::EmbeddedLog;
use projector_sources::pipeline::{self, Totals};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    Status,
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
    /// List dead letters as JSON lines, oldest first.
    DeadLetters {
        #[arg(long)]
        plugin: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Deploy a `.wasm` as the new version of a plugin (replace mode:
    /// it takes over at the next batch boundary).
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
}

/// Call the admin API; the JSON answer, or its error message.
fn admin(method: &str, url: &str, body: Option<&[u8]>) -> anyhow::Result<serde_json::Value> {
    let request = ureq::request(method, url).timeout(std::time::Duration::from_secs(300));
    let result = match body {
        Some(b) => request
            .set("content-type", "application/wasm")
            .send_bytes(b),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{url}: {code}: {message}");
        }
        Err(e) => bail!("{url}: {e} (is `projector run` serving its API there?)"),
    };
    Ok(serde_json::from_reader(response.into_reader())?)
}

/// Show a shadow build's progress until it follows live events (or
/// fails); its last status.
fn follow_shadow(base: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} shadow {msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    loop {
        let s = admin(
            "GET",
            &format!("{base}/v1/admin/plugins/{name}/shadow"),
            None,
        )?;
        bar.set_length(s["total"].as_u64().unwrap_or(0));
        bar.set_position(s["done"].as_u64().unwrap_or(0));
        let phase = s["phase"].as_str().unwrap_or_default();
        if phase.starts_with("failed") {
            bar.abandon();
            bail!("shadow build of {name}: {phase}");
        }
        if phase != "building" {
            bar.finish();
            return Ok(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn plugin_command(
    config: &Config,
    action: PluginAction,
    api: Option<String>,
) -> anyhow::Result<()> {
    let base = api.unwrap_or_else(|| format!("http://{}", config.http.listen));
    let base = base.trim_end_matches('/');
    let answer = match action {
        PluginAction::Deploy {
            file,
            name,
            mode,
            method,
        } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .context("--name: the file has no stem to name the plugin by")?,
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let from: String = percent_encoding::utf8_percent_encode(
                &file.display().to_string(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            let started = admin(
                "POST",
                &format!("{base}/v1/admin/plugins/{name}?from={from}&mode={mode}&method={method}"),
                Some(&bytes),
            )?;
            if mode == "shadow" {
                follow_shadow(base, &name)?
            } else {
                started
            }
        }
        PluginAction::Shadow { name } => admin(
            "GET",
            &format!("{base}/v1/admin/plugins/{name}/shadow"),
            None,
        )?,
        PluginAction::Compare { name, sample } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/compare?sample={sample}"),
            Some(&[]),
        )?,
        PluginAction::Promote { name } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/promote"),
            Some(&[]),
        )?,
        PluginAction::Retire { name } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/retire"),
            Some(&[]),
        )?,
        PluginAction::List => admin("GET", &format!("{base}/v1/admin/plugins"), None)?,
        PluginAction::Rollback { name } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/rollback"),
            Some(&[]),
        )?,
        PluginAction::Logs { name } => {
            let v = admin("GET", &format!("{base}/v1/admin/plugins/{name}/logs"), None)?;
            for line in v["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    projector::alloc::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROJECTOR_LOG")
                .unwrap_or_else(|_| "info,sled=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
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
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new("projector.toml").exists() => {
            Ok(Config::load(Path::new("projector.toml"))?)
        }
        None => Ok(Config::default()),
    }
}

fn plugin_names(app: &App) -> Vec<String> {
    app.engine
        .projections()
        .iter()
        .map(|p| p.name().to_string())
        .collect()
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Run {
            ingest,
            exit_when_idle,
            listen,
        } => {
            let app = App::open(config)?;
            let stop = Shutdown::new();
            if let Some(kafka) = app.config.source.kafka.clone() {
                if !ingest.is_empty() || exit_when_idle {
                    anyhow::bail!(
                        "--ingest and --exit-when-idle work on the embedded log; this config reads Kafka ([source.kafka])"
                    );
                }
                let signals = spawn_signal_handler(stop.clone())?;
                eprintln!(
                    "consuming {} from {} as group {:?} with plugins: {}",
                    kafka.topics.join(", "),
                    kafka.bootstrap_servers,
                    kafka.group_id,
                    plugin_names(&app).join(", ")
                );
                let running = app.start_kafka(listen.as_deref(), stop.clone())?;
                serve_until_stopped(&app, running, &stop, signals)?;
                return Ok(std::process::ExitCode::SUCCESS);
            }
            let log = app.open_log()?;
            for file in &ingest {
                let (n, duplicates) = ingest_file(&log, file)?;
                if duplicates == 0 {
                    eprintln!("ingested {n} events from {}", file.display());
                } else {
                    eprintln!(
                        "ingested {} events from {} ({duplicates} already in the log, not appended again)",
                        n - duplicates,
                        file.display()
                    );
                }
            }
            let signals = spawn_signal_handler(stop.clone())?;
            eprintln!(
                "running on the embedded log ({} partitions) with plugins: {}",
                log.partitions(),
                plugin_names(&app).join(", ")
            );
            let log = Arc::new(log);
            let running = app.start(log, listen.as_deref(), stop.clone(), exit_when_idle)?;
            serve_until_stopped(&app, running, &stop, signals)?;
        }
        Command::Replay { file } => {
            let app = App::open(config)?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let totals =
                pipeline::replay_file(&app.engine, &file, app.config.engine.batch_size, |p| {
                    if let Some(size) = p.size {
                        bar.set_length(size);
                    }
                    bar.set_position(p.bytes_read);
                    bar.set_message(format!(
                        "{} events, {:.0}/s",
                        p.totals.records,
                        p.totals.records_per_second()
                    ));
                })?;
            bar.finish_and_clear();
            app.engine.store().flush()?;
            print_summary(&totals);
        }
        Command::Get { plugin, key, at_ms } => {
            let app = App::open(config)?;
            let now = at_ms.unwrap_or_else(projector_core::now_ms);
            match app.engine.read(&plugin, &key, now)? {
                Some(v) => {
                    let out = serde_json::json!({
                        "plugin": plugin, "key": key, "status": format!("{:?}", v.status).to_lowercase(),
                        "versions": v.versions.json(), "updated_ms": v.updated_ms, "view": v.json(),
                    });
                    writeln!(
                        std::io::stdout().lock(),
                        "{}",
                        serde_json::to_string_pretty(&out)?
                    )?;
                }
                None => {
                    eprintln!("no view for {key:?} in {plugin}");
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
        Command::Snapshot {
            plugin,
            key,
            answer,
        } => {
            let app = App::open(config)?;
            let text = read_input(&answer)?;
            app.engine.snapshot(&plugin, &key, &text)?;
            app.engine.store().flush()?;
            eprintln!("stored a snapshot of {key:?} in {plugin}");
        }
        Command::Recollect { plugin, keys } => {
            let app = App::open(config)?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let keys = (!keys.is_empty()).then_some(keys);
            let summary = app.engine.recollect(&plugin, keys, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            app.engine.store().flush()?;
            for (key, error) in summary.failed.iter().take(20) {
                eprintln!("{key}: {error}");
            }
            println!(
                "keys {}, rebuilt {}, unchanged {}, deleted {}, failed {}",
                summary.keys,
                summary.rebuilt,
                summary.unchanged,
                summary.deleted,
                summary.failed.len()
            );
            if !summary.failed.is_empty() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Plugin { action, api } => plugin_command(&config, action, api)?,
        Command::Status => {
            let app = App::open(config)?;
            let plugins: Vec<serde_json::Value> = app
                .engine
                .projections()
                .iter()
                .map(|p| {
                    let c = p.counters();
                    serde_json::json!({
                        "plugin": p.name(), "id": p.code().id(), "version": p.code().info().version,
                        "population": format!("{:?}", p.population()).to_lowercase(),
                        "received": c.received, "applied": c.applied, "skipped": c.skipped,
                        "invalidated": c.invalidated, "dead_lettered": c.dead_lettered,
                    })
                })
                .collect();
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "plugins": plugins,
                    "retry_queue": app.engine.store().retry_count(),
                }))?
            )?;
        }
        Command::KafkaDev {
            topics,
            group,
            brokers,
        } => {
            let cluster = rdkafka::mocking::MockCluster::new(brokers)
                .map_err(|e| anyhow::anyhow!("starting the mock cluster: {e}"))?;
            for spec in &topics {
                let (name, partitions) = match spec.split_once(':') {
                    Some((n, p)) => (
                        n,
                        p.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                            anyhow::anyhow!("--topics {spec}: expected name:partitions")
                        })?,
                    ),
                    None => (spec.as_str(), 4),
                };
                for t in [
                    name.to_string(),
                    format!("{name}.{group}.retry"),
                    format!("{name}.{group}.dlq"),
                ] {
                    cluster
                        .create_topic(&t, partitions, 1)
                        .map_err(|e| anyhow::anyhow!("creating {t}: {e}"))?;
                }
            }
            let stop = Shutdown::new();
            let signals = spawn_signal_handler(stop.clone())?;
            println!("{}", cluster.bootstrap_servers());
            eprintln!(
                "mock Kafka cluster up (in memory, {brokers} broker(s)); topics: {}; group {group:?}\n\
                 [source.kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\
                 Ctrl-C stops it (and loses its data).",
                topics.join(", "),
                cluster.bootstrap_servers()
            );
            use std::io::Write;
            std::io::stdout().flush()?;
            while !stop.wait(std::time::Duration::from_secs(1)) {}
            stop_signals(&stop, signals);
        }
        Command::DeadLetters { plugin, limit } => {
            if !config.data_dir.exists() {
                bail!("no data in {}", config.data_dir.display());
            }
            let store = projector_core::store::Store::open(&config.data_dir)?;
            let mut shown = 0;
            for letter in store.dead_letters() {
                let letter = letter?;
                if plugin
                    .as_deref()
                    .is_some_and(|p| letter.plugin.as_deref() != Some(p))
                {
                    continue;
                }
                writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    serde_json::to_string(&letter)?
                )?;
                shown += 1;
                if shown == limit {
                    break;
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading stdin");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Append an NDJSON file to the log: its events, and how many of them
/// the log already held.
fn ingest_file(log: &EmbeddedLog, path: &Path) -> anyhow::Result<(usize, usize)> {
    let text = read_input(path)?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let (mut n, mut duplicates) = (0, 0);
    for chunk in lines.chunks(4096) {
        let values: Vec<&[u8]> = chunk.iter().map(|(_, l)| l.as_bytes()).collect();
        duplicates += log
            .append(&values)
            .map_err(|e| match e {
                projector_sources::log::Error::Decode { index, error } => {
                    anyhow::anyhow!("{} line {}: {error}", path.display(), chunk[index].0 + 1)
                }
                other => other.into(),
            })?
            .duplicates;
        n += values.len();
    }
    Ok((n, duplicates))
}

/// Announce the API, wait for the runtime to stop, then stop the signal
/// listener, make the store durable and print the totals.
fn serve_until_stopped(
    app: &App,
    running: projector::app::Running,
    stop: &Shutdown,
    signals: std::thread::JoinHandle<()>,
) -> anyhow::Result<()> {
    if let Some(addr) = running.addr() {
        eprintln!("read API on http://{addr} (see /openapi.json)");
    }
    let totals = running.wait();
    stop_signals(stop, signals);
    let totals = totals?;
    app.engine.store().flush()?;
    print_summary(&totals);
    Ok(())
}

/// Stop the signal listener (if no signal stopped it) and wait for it.
fn stop_signals(stop: &Shutdown, signals: std::thread::JoinHandle<()>) {
    stop.stop();
    let _ = signals.join();
}

/// Listen for SIGINT and SIGTERM, and stop `stop` when one arrives (the
/// listener ends when `stop` is stopped otherwise). The
/// handlers are installed before this returns, so a signal sent once the
/// runtime reports it is running always stops it cleanly.
fn spawn_signal_handler(stop: Shutdown) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _entered = rt.enter();
        StopSignals::install()?
    };
    let handle = std::thread::Builder::new()
        .name("projector-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    () = signals.recv() => {
                        eprintln!("stopping after the current batch");
                        stop.stop();
                    }
                    () = stop.stopped() => {}
                }
            });
        })?;
    Ok(handle)
}

/// SIGINT and, on Unix, SIGTERM, registered up front.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {})
    }

    #[cfg(unix)]
    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_summary(t: &Totals) {
    let c = &t.counters;
    println!(
        "events {}, applied {}, skipped {}, invalidated {}, dead-lettered {}, decode errors {}, {:.0} events/s",
        t.records,
        c.applied,
        c.skipped,
        c.invalidated,
        c.dead_lettered,
        t.decode_errors,
        t.records_per_second()
    );
}
