//! The records a source that cannot replay them (a file, stdin) handed
//! out while a plugin's breaker held it back, kept in memory: what the
//! paused plugin is brought back from ([`super::resume`]). The pipeline
//! takes no new batch while the window is full, so memory stays bounded
//! and an outage costs no dead letter: the input waits instead.

use crate::engine::Engine;
use crate::source::Replay;
use crate::Record;
use projector_common::sync::Recover;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Records held for paused plugins, by (source, partition), in offset order.
pub(crate) struct Window {
    held: Mutex<BTreeMap<(String, u32), VecDeque<Record>>>,
    bound: usize,
}

impl Window {
    /// A window of at most `bound` records (past it, [`Window::is_full`]).
    pub(crate) fn new(bound: usize) -> Self {
        Window {
            held: Mutex::default(),
            bound,
        }
    }

    /// Keep `records` of (source, partition), which a paused plugin has
    /// not applied.
    pub(crate) fn keep(&self, source: &str, partition: u32, records: &[Record]) {
        self.held
            .lock()
            .recover()
            .entry((source.to_string(), partition))
            .or_default()
            .extend(records.iter().cloned());
    }

    /// Drop what every generation has applied (before where each
    /// partition would resume).
    pub(crate) fn trim(&self, engine: &Engine) -> crate::engine::Result<()> {
        let mut held = self.held.lock().recover();
        for ((source, partition), records) in held.iter_mut() {
            let applied = engine.resume_offset(source, *partition)?;
            while records.front().is_some_and(|r| r.offset < applied) {
                records.pop_front();
            }
        }
        Ok(())
    }

    /// Records held now.
    pub(crate) fn len(&self) -> usize {
        self.held.lock().recover().values().map(VecDeque::len).sum()
    }

    /// Whether the window holds its bound: the pipeline waits.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.bound
    }
}

impl Replay for Window {
    fn partitions(&self) -> Vec<(String, u32)> {
        self.held.lock().recover().keys().cloned().collect()
    }

    /// Never: the window holds only what paused plugins lack, not the
    /// input from its start (no shadow rebuilds from it).
    fn complete(&self) -> bool {
        false
    }

    fn read(
        &self,
        source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        let held = self.held.lock().recover();
        let Some(records) = held.get(&(source.to_string(), partition)) else {
            return Ok(Vec::new());
        };
        if records.front().is_some_and(|r| r.offset > from) {
            anyhow::bail!(
                "{source}/{partition}: records from {from} are no longer held (the window starts at {})",
                records.front().map_or(0, |r| r.offset)
            );
        }
        Ok(records
            .iter()
            .skip_while(|r| r.offset < from)
            .take(max)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(from: u64, n: u64) -> Vec<Record> {
        (from..from + n)
            .map(|o| Record::wire(0, o, None, format!("{o}").into_bytes()))
            .collect()
    }

    #[test]
    fn it_reads_what_it_holds_from_an_offset_and_counts_toward_its_bound() {
        let w = Window::new(10);
        w.keep("file:x", 0, &records(5, 4));
        w.keep("file:x", 0, &records(9, 4));
        assert_eq!(w.partitions(), [("file:x".to_string(), 0)]);
        let read: Vec<u64> = w
            .read("file:x", 0, 7, 3)
            .expect("read")
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(read, [7, 8, 9]);
        assert!(
            w.read("file:x", 0, 4, 3).is_err(),
            "offset 4 was never held"
        );
        assert!(w.read("file:y", 0, 0, 3).expect("read").is_empty());
        assert_eq!(w.len(), 8);
        assert!(!w.is_full());
        w.keep("file:x", 0, &records(13, 2));
        assert!(w.is_full());
    }
}
