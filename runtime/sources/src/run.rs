//! The runs the CLI and the tests start: an NDJSON file replayed to its
//! end, the embedded log followed until stopped or idle, a Kafka group
//! consumed on a thread of its own. Each builds its source and hands it
//! to the one loop, [`projector_core::driver`].

use crate::file::FileSource;
#[cfg(feature = "kafka")]
use crate::kafka::{KafkaConfig, KafkaSource, KafkaStats};
use crate::log::{EmbeddedLog, LogSource};
use projector_common::shutdown::Shutdown;
use projector_core::driver::{self, Options, Progress, Totals, Until};
use projector_core::engine::Engine;
use std::path::Path;
use std::sync::Arc;
#[cfg(feature = "kafka")]
use std::thread::JoinHandle;
#[cfg(feature = "kafka")]
use std::time::{Duration, Instant};

/// Replay an NDJSON file (or `-` for stdin) into the engine, to its end.
pub fn replay_file(
    engine: &Arc<Engine>,
    path: &Path,
    batch_size: usize,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    let source = FileSource::open(path)?;
    let options = Options::new(batch_size, Until::Stopped);
    driver::run(engine, &source, &options, &Shutdown::new(), progress)
}

/// Follow the embedded log into the engine until `stop` is set, or, with
/// `exit_when_idle`, until every partition is caught up.
pub fn run_log(
    engine: &Arc<Engine>,
    log: &Arc<EmbeddedLog>,
    batch_size: usize,
    stop: &Shutdown,
    exit_when_idle: bool,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Totals> {
    let until = if exit_when_idle {
        Until::Idle
    } else {
        Until::Stopped
    };
    let source = LogSource::new(log.clone());
    let options = Options::new(batch_size, until);
    driver::run(engine, &source, &options, stop, progress)
}

/// Totals of a Kafka run.
#[cfg(feature = "kafka")]
#[derive(Debug, Default, Clone)]
pub struct KafkaTotals {
    /// Records taken from the topics (retries included).
    pub records: u64,
    /// Events applied, over every plugin.
    pub applied: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

/// A Kafka source driven into the engine by the pipeline, on a thread of
/// its own, until [`KafkaRun::stop`].
#[cfg(feature = "kafka")]
pub struct KafkaRun {
    stop: Shutdown,
    /// The source's live counters.
    pub stats: Arc<KafkaStats>,
    pipeline: Option<JoinHandle<anyhow::Result<KafkaTotals>>>,
}

#[cfg(feature = "kafka")]
impl KafkaRun {
    /// Join the group and consume `config.topics` into `engine`, in
    /// batches of `batch_size`, committing at the engine's interval.
    pub fn start(
        engine: Arc<Engine>,
        config: KafkaConfig,
        batch_size: usize,
    ) -> anyhow::Result<KafkaRun> {
        let source = Arc::new(KafkaSource::new(config)?);
        // Started here, so that a broker or topic missing fails the call.
        driver::start(&engine, &*source)?;
        let stop = Shutdown::new();
        let pipeline = {
            let (source, stop) = (source.clone(), stop.clone());
            std::thread::Builder::new()
                .name("projector-pipeline".into())
                .spawn(move || {
                    let started = Instant::now();
                    let options = Options::new(batch_size, Until::Stopped);
                    let totals = driver::drive(&engine, &*source, &options, &stop, |_| {})?;
                    Ok(KafkaTotals {
                        records: totals.records,
                        applied: totals.counters.applied,
                        elapsed: started.elapsed(),
                    })
                })?
        };
        let stats = source.stats.clone();
        Ok(KafkaRun {
            stop,
            stats,
            pipeline: Some(pipeline),
        })
    }
    /// Ask the pipeline to finish (the batch in flight is completed and
    /// committed, the group is left).
    pub fn stop(&self) {
        self.stop.stop();
    }
    /// Whether the pipeline has ended.
    pub fn is_finished(&self) -> bool {
        self.pipeline.as_ref().is_none_or(|p| p.is_finished())
    }
    /// Stop and wait for every thread.
    pub fn join(mut self) -> anyhow::Result<KafkaTotals> {
        self.stop();
        match self.pipeline.take() {
            Some(p) => p
                .join()
                .map_err(|_| anyhow::anyhow!("the Kafka pipeline thread panicked"))?,
            None => Ok(KafkaTotals::default()),
        }
    }
}

#[cfg(feature = "kafka")]
impl Drop for KafkaRun {
    fn drop(&mut self) {
        self.stop();
    }
}
