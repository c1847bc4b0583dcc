//! The driver: one loop that drives any [`Source`] into the engine.
//!
//! Each turn takes the next batch from the source and applies it (its
//! delayed retries first, then its records) and looks for due retries
//! every 100 ms. The engine commits at its own interval as batches come;
//! the pipeline commits only when the source is idle and at the end, and
//! tells the source what is durable after each commit of its batches
//! (the engine's, at the end of a batch or of due retries, or its own).
//! Offsets are the store's, so running a pipeline again after a
//! crash neither skips nor repeats an event. Progress is reported through
//! a callback after every batch.
//!
//! Its policies have a file each: [`resume`] brings a paused plugin back
//! from the source's retained records, and [`window`] keeps those records
//! for a source that cannot replay them (a file).

mod resume;
mod window;

use crate::breaker::BreakerState;
use crate::engine::{BatchSummary, Engine};
use crate::source::{Next, Replay, Source};
use crate::store::Counters;
use projector_common::shutdown::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};
use window::Window;

/// Totals of a pipeline run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Records taken from the source.
    pub records: u64,
    /// Records that were not events.
    pub decode_errors: u64,
    /// What the plugins did with them, summed.
    pub counters: Counters,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Totals {
    fn add(&mut self, s: &BatchSummary) {
        self.records += s.records;
        self.decode_errors += s.decode_errors;
        self.counters.add(&s.total());
    }

    /// Records per second over the run.
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Progress after a batch: totals so far and, for files, bytes read of
/// the total size.
pub struct Progress<'a> {
    /// Totals so far.
    pub totals: &'a Totals,
    /// Bytes read of the input (files).
    pub bytes_read: u64,
    /// The input's size, when known.
    pub size: Option<u64>,
}

/// When a pipeline stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Only when asked to stop (or when the source ends).
    Stopped,
    /// Also once the source has nothing more to give now.
    Idle,
}

/// How often the pipeline looks for due retries.
pub(crate) const RETRY_POLL: Duration = Duration::from_millis(100);

/// Records kept for paused plugins where the source cannot replay them;
/// past it the input waits.
const WINDOW_RECORDS: usize = 100_000;

/// How often a run waiting at the end of its input for paused plugins says so.
const WAIT_NOTICE: Duration = Duration::from_secs(10);

/// How long a run whose input is read waits for a paused plugin before it
/// ends with an error.
const END_PAUSE_WAIT: Duration = Duration::from_secs(30);

/// The error of a run that ended with plugins paused.
fn still_paused(engine: &Engine) -> String {
    let paused: Vec<String> = engine
        .projections()
        .iter()
        .filter_map(|p| match p.breaker() {
            BreakerState::Open { reason, .. } => Some(format!("{} ({reason})", p.name())),
            BreakerState::CatchingUp { .. } => Some(format!("{} (catching up)", p.name())),
            BreakerState::Closed => None,
        })
        .collect();
    format!(
        "the input is read, but its breaker still pauses {}: its events from where it \
         stopped are not applied; run the same input again once the cause is fixed, \
         and it resumes there",
        paused.join(", ")
    )
}

/// How long the pipeline waits for a batch before doing its other work.
const BATCH_WAIT: Duration = Duration::from_millis(100);

/// How a pipeline runs (commits follow the engine's interval).
#[derive(Debug, Clone)]
pub struct Options {
    /// Records per batch, at most.
    pub batch_size: usize,
    /// When it stops by itself.
    pub until: Until,
}

impl Options {
    /// Batches of `batch_size`, stopping as `until` says.
    pub fn new(batch_size: usize, until: Until) -> Self {
        Options { batch_size, until }
    }
}

/// Start `source` and drive it into `engine` (see [`drive`]).
pub fn run(
    engine: &Arc<Engine>,
    source: &dyn Source,
    options: &Options,
    stop: &Shutdown,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    start(engine, source)?;
    drive(engine, source, options, stop, progress)
}

/// Start `source` for `engine`; one that fails to start is closed (its
/// threads stopped) before the error is returned.
pub fn start(engine: &Arc<Engine>, source: &dyn Source) -> anyhow::Result<()> {
    source.start(engine.clone()).inspect_err(|_| {
        if let Err(e) = source.close() {
            tracing::warn!("closing a source that failed to start: {e}");
        }
    })
}

/// Drive a started `source` into `engine` until `stop` is set, the source
/// ends, or (with [`Until::Idle`]) it is caught up; then close it.
pub fn drive(
    engine: &Arc<Engine>,
    source: &dyn Source,
    options: &Options,
    stop: &Shutdown,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    engine.set_failure_route(source.failure_route());
    engine.set_changelog(source.changelog());
    // A paused plugin is brought back from the source's retained records,
    // or, where the source keeps none, from the window the loop keeps.
    engine.enable_breakers(true);
    let looped = turn(engine, source, options, stop, &mut progress);
    let closed = source.close();
    let totals = looped?;
    closed?;
    Ok(totals)
}

/// The loop itself.
fn turn(
    engine: &Engine,
    source: &dyn Source,
    options: &Options,
    stop: &Shutdown,
    progress: &mut impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    let started = Instant::now();
    let mut totals = Totals::default();
    let dead_before = dead_letters(engine);
    let mut retried_at = Instant::now();
    // When the input ended with work left, and when that was last said.
    let mut ended_at: Option<Instant> = None;
    let mut noticed = Instant::now();
    // A source that cannot replay what a paused plugin missed (a file):
    // the loop keeps it, and waits while the window is full.
    let retained = source.replay();
    let window = retained
        .is_none()
        .then(|| Arc::new(Window::new(WINDOW_RECORDS)));
    let replay: Option<Arc<dyn Replay>> =
        retained.or_else(|| window.clone().map(|w| w as Arc<dyn Replay>));
    // Running until idle, a source that has nothing now is done.
    let wait = match options.until {
        Until::Idle => Duration::ZERO,
        Until::Stopped => BATCH_WAIT,
    };
    while !stop.is_stopped() {
        // Delayed retries, between batches so their partitions never wait.
        if retried_at.elapsed() >= RETRY_POLL {
            retried_at = Instant::now();
            let caught_up = retry_tick(engine, source, replay.as_deref(), window.as_deref())?;
            totals.counters.add(&caught_up);
        }
        if window.as_ref().is_some_and(|w| w.is_full()) {
            // The paused plugin is that far behind: the input waits.
            stop.wait(RETRY_POLL);
            continue;
        }
        match source.next_batch(options.batch_size, wait)? {
            Next::Batch(batch) => {
                let applied = engine
                    .enqueue_retries(&batch.source, batch.partition, &batch.retries)
                    .and_then(|()| engine.process(&batch.source, batch.partition, &batch.records));
                source.finished(&batch, applied.is_ok());
                let summary = applied.map_err(|e| {
                    anyhow::anyhow!("{} partition {}: {e}", batch.source, batch.partition)
                })?;
                if summary.committed {
                    source.durable();
                }
                if let Some(w) = window.as_ref().filter(|_| engine.any_paused()) {
                    w.keep(&batch.source, batch.partition, &batch.records);
                }
                totals.add(&summary);
                totals.records += batch.retries.len() as u64;
                totals.elapsed = started.elapsed();
                let (bytes_read, size) = source.bytes_read();
                progress(Progress {
                    totals: &totals,
                    bytes_read,
                    size,
                });
            }
            Next::Idle => {
                // Caught up: make what was applied durable before waiting.
                engine.commit()?;
                source.durable();
                if options.until == Until::Idle {
                    break;
                }
            }
            // An input that cannot be read again ends its run once every
            // event is applied or dead-lettered: paused plugins caught up
            // from the window, delayed retries done.
            // A plugin still paused after a while ends the run with an
            // error: its offsets stay where it stopped, so running the
            // same input again resumes it there.
            Next::End
                if window.is_some()
                    && (engine.any_paused() || engine.store().retry_count() > 0) =>
            {
                let since = *ended_at.get_or_insert_with(Instant::now);
                if engine.any_paused() && since.elapsed() >= END_PAUSE_WAIT {
                    engine.commit()?;
                    source.durable();
                    anyhow::bail!("{}", still_paused(engine));
                }
                if noticed.elapsed() >= WAIT_NOTICE {
                    noticed = Instant::now();
                    tracing::warn!(
                        held = window.as_ref().map_or(0, |w| w.len()),
                        retries = engine.store().retry_count(),
                        "the input is read; waiting for paused plugins and delayed retries"
                    );
                }
                stop.wait(RETRY_POLL);
            }
            Next::End => break,
        }
    }
    engine.commit()?;
    source.durable();
    totals.elapsed = started.elapsed();
    // Delayed retries dead-letter outside any batch: the plugins'
    // counters have them all (a plugin removed meanwhile, the batches').
    let dead_run = dead_letters_since(engine, &dead_before);
    totals.counters.dead_lettered = totals.counters.dead_lettered.max(dead_run);
    Ok(totals)
}

/// The work between batches, every [`RETRY_POLL`]: due retries applied
/// and committed, paused plugins probed, caught up or rejoined, the
/// window trimmed; what the catching up counted.
fn retry_tick(
    engine: &Engine,
    source: &dyn Source,
    replay: Option<&dyn Replay>,
    window: Option<&Window>,
) -> anyhow::Result<Counters> {
    // Due retries are committed at once, with all pending work.
    if engine.retry_due(crate::now_ms())? > 0 {
        source.durable();
    }
    let caught_up = match replay {
        Some(replay) => resume::step(engine, replay, crate::now_ms())?,
        None => Counters::default(),
    };
    if let Some(w) = window {
        w.trim(engine)?;
    }
    Ok(caught_up)
}

/// Dead letters of every loaded plugin since `before`.
fn dead_letters_since(engine: &Engine, before: &std::collections::HashMap<String, u64>) -> u64 {
    dead_letters(engine)
        .iter()
        .map(|(name, n)| n.saturating_sub(before.get(name).copied().unwrap_or(0)))
        .sum()
}

/// Each loaded plugin's dead letters so far, by name.
fn dead_letters(engine: &Engine) -> std::collections::HashMap<String, u64> {
    engine
        .projections()
        .iter()
        .map(|p| (p.name().to_string(), p.counters().dead_lettered))
        .collect()
}

#[cfg(test)]
mod tests;
