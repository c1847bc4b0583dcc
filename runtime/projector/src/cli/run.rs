//! `projector run`: the runtime on the embedded log or Kafka, with the
//! read API, until a signal stops it.

use super::signals::{spawn_signal_handler, stop_signals};
use super::{plugin_names, print_summary, read_input};
use projector::app::{App, Running};
use projector::config::Config;
use projector_common::shutdown::Shutdown;
use projector_sources::log::EmbeddedLog;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) fn run(
    config: Config,
    ingest: Vec<PathBuf>,
    exit_when_idle: bool,
    listen: Option<String>,
) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
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
    running: Running,
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
    print_summary(&totals)?;
    Ok(())
}
