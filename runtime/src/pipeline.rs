//! Pipelines: a source driven into the engine, batch by batch.
//!
//! [`replay_file`] reads an NDJSON file to its end; [`run_log`] follows
//! the embedded log until stopped. Both resume from the offsets the engine
//! stored, so running them again after a crash neither skips nor repeats
//! an event. Progress is reported through a callback after every batch.

use crate::engine::{BatchSummary, Engine};
use crate::source::file::LineSource;
use crate::source::log::EmbeddedLog;
use crate::store::Counters;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Totals of a pipeline run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub records: u64,
    pub decode_errors: u64,
    pub counters: Counters,
    pub elapsed: Duration,
}

impl Totals {
    fn add(&mut self, s: &BatchSummary) {
        self.records += s.records;
        self.decode_errors += s.decode_errors;
        self.counters.add(&s.total());
    }

    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Progress after a batch: totals so far and, for files, bytes read of
/// the total size.
pub struct Progress<'a> {
    pub totals: &'a Totals,
    pub bytes_read: u64,
    pub size: Option<u64>,
}

/// The source id under which a file's offsets are stored.
pub fn file_source_id(path: &Path) -> String {
    if path.as_os_str() == "-" {
        return "stdin".into();
    }
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file:{}", full.display())
}

/// Replay an NDJSON file (or `-` for stdin) into the engine.
pub fn replay_file(
    engine: &Engine,
    path: &Path,
    batch_size: usize,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    let source = file_source_id(path);
    let from = engine.resume_offset(&source, 0)?;
    let mut input =
        LineSource::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let started = Instant::now();
    let mut totals = Totals::default();
    loop {
        let batch = input.next_batch(from, batch_size)?;
        if batch.is_empty() {
            break;
        }
        let summary = engine.process(&source, 0, &batch)?;
        totals.add(&summary);
        totals.elapsed = started.elapsed();
        progress(Progress {
            totals: &totals,
            bytes_read: input.bytes_read(),
            size: input.size,
        });
    }
    engine.commit()?;
    totals.elapsed = started.elapsed();
    Ok(totals)
}

/// How often the log's pipeline looks for due retries.
const RETRY_POLL: Duration = Duration::from_millis(100);

/// The source id of the embedded log.
pub const LOG_SOURCE: &str = "log";

/// Follow the embedded log into the engine until `stop` is set, or, with
/// `exit_when_idle`, until every partition is caught up.
pub fn run_log(
    engine: &Engine,
    log: &EmbeddedLog,
    batch_size: usize,
    stop: &AtomicBool,
    exit_when_idle: bool,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    let mut next: Vec<u64> = (0..log.partitions())
        .map(|p| engine.resume_offset(LOG_SOURCE, p))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut retried_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        // Delayed retries, between batches so their partitions never wait.
        if retried_at.elapsed() >= RETRY_POLL {
            retried_at = Instant::now();
            busy |= engine.retry_due(crate::engine::now_ms())? > 0;
        }
        for p in 0..log.partitions() {
            let batch = log.read(p, next[p as usize], batch_size)?;
            let Some(last) = batch.last() else { continue };
            next[p as usize] = last.offset + 1;
            let summary = engine.process(LOG_SOURCE, p, &batch)?;
            totals.add(&summary);
            totals.elapsed = started.elapsed();
            progress(Progress {
                totals: &totals,
                bytes_read: 0,
                size: None,
            });
            busy = true;
        }
        if !busy {
            // Caught up: make what was applied durable before waiting.
            engine.commit()?;
            if exit_when_idle {
                break;
            }
            log.wait(Duration::from_millis(100));
        }
    }
    engine.commit()?;
    totals.elapsed = started.elapsed();
    Ok(totals)
}
