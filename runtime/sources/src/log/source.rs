//! The embedded log as a [`Source`] and as the [`Replay`] shadow builds
//! and paused plugins read back from.

use super::{EmbeddedLog, LOG_SOURCE};
use projector_common::sync::Recover;
use projector_core::source::{Batch, Next, Replay, Source, SourceHost};
use projector_core::Record;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The embedded log as a [`Source`]: its partitions in turn, each from
/// where the engine stored it resumes.
pub struct LogSource {
    log: Arc<EmbeddedLog>,
    cursor: Mutex<Cursor>,
}

#[derive(Default)]
struct Cursor {
    /// Next offset to read per partition.
    next: Vec<u64>,
    /// The partition to look at first.
    turn: usize,
}

impl LogSource {
    /// A source over `log`.
    pub fn new(log: Arc<EmbeddedLog>) -> Self {
        LogSource {
            log,
            cursor: Mutex::default(),
        }
    }
}

impl Source for LogSource {
    fn start(&self, host: Arc<dyn SourceHost>) -> anyhow::Result<()> {
        let next = (0..self.log.partitions())
            .map(|p| host.resume_offset(LOG_SOURCE, p))
            .collect::<Result<_, _>>()?;
        *self.cursor.lock().recover() = Cursor { next, turn: 0 };
        Ok(())
    }

    fn next_batch(&self, max: usize, wait: Duration) -> anyhow::Result<Next> {
        for attempt in 0..2 {
            {
                let mut c = self.cursor.lock().recover();
                let n = c.next.len();
                for i in 0..n {
                    let p = (c.turn + i) % n;
                    let records = self.log.read(p as u32, c.next[p], max)?;
                    if let Some(last) = records.last() {
                        c.next[p] = last.offset + 1;
                        c.turn = (p + 1) % n;
                        return Ok(Next::Batch(Batch {
                            source: LOG_SOURCE.into(),
                            partition: p as u32,
                            records,
                            retries: Vec::new(),
                        }));
                    }
                }
            }
            if attempt == 0 && !wait.is_zero() {
                self.log.wait(wait);
            } else {
                break;
            }
        }
        Ok(Next::Idle)
    }

    fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        let ends = self.log.ends().into_iter().enumerate();
        vec![(
            LOG_SOURCE.to_string(),
            ends.map(|(p, e)| (p as u32, e)).collect(),
        )]
    }

    fn replay(&self) -> Option<Arc<dyn Replay>> {
        Some(self.log.clone())
    }
}

impl Replay for EmbeddedLog {
    fn partitions(&self) -> Vec<(String, u32)> {
        (0..EmbeddedLog::partitions(self))
            .map(|p| (LOG_SOURCE.to_string(), p))
            .collect()
    }

    fn complete(&self) -> bool {
        self.starts().iter().all(|s| *s == 0)
    }

    fn read(
        &self,
        _source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        Ok(EmbeddedLog::read(self, partition, from, max)?)
    }
}
