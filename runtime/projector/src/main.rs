//! The `projector` binary: parses its command line (`projector::args`)
//! and runs the command (`cli`).

mod cli;

use clap::Parser;
use projector::args::{Cli, Command, DeadLetterAction, LogFormat};
use projector::config::Config;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

// sled allocates heavily; mimalloc roughly doubles throughput over glibc malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    projector::alloc::tune();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli) {
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

/// Log lines on stderr, filtered by `PROJECTOR_LOG`: text, coloured only
/// when stderr is a terminal (and `NO_COLOR` is unset), or JSON.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROJECTOR_LOG")
                .unwrap_or_else(|_| "info,sled=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (a dead log pipe) loses the lines; reporting
        // that on stderr would panic the thread that logged.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init();
        }
        LogFormat::Json => logs.with_ansi(false).json().init(),
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
            as_of,
            as_of_position,
            api,
        } => {
            return match (as_of, as_of_position) {
                (None, None) => cli::view::get(config, &plugin, &key, at_ms, api),
                (time, position) => {
                    cli::view::get_as_of(config, &plugin, &key, time, position, at_ms, api)
                }
            }
        }
        Command::Snapshot {
            plugin,
            key,
            answer,
        } => cli::view::snapshot(config, &plugin, &key, &answer)?,
        Command::Recollect { plugin, keys } => return cli::recollect::run(config, &plugin, keys),
        Command::Plugin { action, api } => return cli::plugin::run(&config, action, api),
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
        Command::Build(args) => cli::build::run(&args.dir)?,
        Command::DeadLetters {
            filter,
            limit,
            api,
            action: None,
        } => cli::dead_letters::list(&config, &filter, limit, api)?,
        Command::DeadLetters {
            action:
                Some(DeadLetterAction::Redrive {
                    plugin,
                    version,
                    key,
                    seqs,
                    limit,
                    api,
                }),
            ..
        } => {
            let r = cli::dead_letters::Redrive {
                plugin: &plugin,
                version: version.as_deref(),
                key: key.as_deref(),
                seqs: &seqs,
                limit,
            };
            cli::dead_letters::redrive(&config, &r, api)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
