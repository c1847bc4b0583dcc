//! A [`SourceHost`] in memory, for the sources' unit tests: resume offsets
//! set by the test, restored views and offsets recorded, a spool in a map.
//! What a source asks of its host is all a test needs to give it.

use projector_common::sync::Recover;
use projector_core::engine::Result;
use projector_core::source::{SourceHost, Spool};
use projector_core::store::OutboxRecord;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake was told and holds.
#[derive(Default)]
pub(crate) struct Held {
    /// (source, partition) → where it resumes.
    pub(crate) offsets: BTreeMap<(String, u32), u64>,
    /// (plugin, key) → the restored view (`None`: deleted).
    pub(crate) views: BTreeMap<(String, String), Option<Vec<u8>>>,
    /// (plugin, key, seq) → a restored history entry (`None`: pruned).
    pub(crate) history: BTreeMap<(String, String, u64), Option<Vec<u8>>>,
    /// (plugin, service and path) → a restored recorded answer.
    pub(crate) fetched: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    /// Calls of `restore_views`, with their sizes.
    pub(crate) restore_calls: Vec<usize>,
    /// (plugin, partition) → the offsets a restore recorded.
    pub(crate) restored: BTreeMap<(String, u32), Vec<(String, u64)>>,
    /// Commits asked for.
    pub(crate) commits: u64,
}

/// The fake host.
#[derive(Default)]
pub(crate) struct FakeHost {
    pub(crate) plugins: Vec<String>,
    pub(crate) held: Mutex<Held>,
    pub(crate) spool: Arc<FakeSpool>,
}

impl FakeHost {
    /// A host of `plugins` whose (source, partition)s resume at `offsets`.
    pub(crate) fn new(plugins: &[&str], offsets: &[(&str, u32, u64)]) -> Arc<Self> {
        let host = FakeHost {
            plugins: plugins.iter().map(|p| p.to_string()).collect(),
            ..FakeHost::default()
        };
        host.held.lock().recover().offsets = offsets
            .iter()
            .map(|(s, p, o)| ((s.to_string(), *p), *o))
            .collect();
        Arc::new(host)
    }
}

impl SourceHost for FakeHost {
    fn resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let held = self.held.lock().recover();
        Ok(held
            .offsets
            .get(&(source.to_string(), partition))
            .copied()
            .unwrap_or(0))
    }

    fn retry_resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        self.resume_offset(source, partition)
    }

    fn commit(&self) -> Result<()> {
        self.held.lock().recover().commits += 1;
        Ok(())
    }

    fn commit_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn plugins(&self) -> Vec<String> {
        self.plugins.clone()
    }

    fn partition_offsets(&self, plugin: &str, partition: u32) -> Result<Vec<(String, u64)>> {
        let held = self.held.lock().recover();
        Ok(held
            .restored
            .get(&(plugin.to_string(), partition))
            .cloned()
            .unwrap_or_default())
    }

    fn restore_views(&self, plugin: &str, views: &[(&str, Option<&[u8]>)]) -> Result<()> {
        let mut held = self.held.lock().recover();
        held.restore_calls.push(views.len());
        for (key, value) in views {
            held.views.insert(
                (plugin.to_string(), key.to_string()),
                value.map(<[u8]>::to_vec),
            );
        }
        Ok(())
    }

    fn restore_fetched(&self, plugin: &str, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let mut held = self.held.lock().recover();
        for (key, value) in entries {
            held.fetched
                .insert((plugin.to_string(), key.to_vec()), value.to_vec());
        }
        Ok(())
    }

    fn restore_history(&self, plugin: &str, entries: &[(&str, u64, Option<&[u8]>)]) -> Result<()> {
        let mut held = self.held.lock().recover();
        for (key, seq, value) in entries {
            held.history.insert(
                (plugin.to_string(), key.to_string(), *seq),
                value.map(<[u8]>::to_vec),
            );
        }
        Ok(())
    }

    fn restored(&self, plugin: &str, partitions: &[(u32, Vec<(String, u64)>)]) -> Result<()> {
        let mut held = self.held.lock().recover();
        for (partition, offsets) in partitions {
            held.restored
                .insert((plugin.to_string(), *partition), offsets.clone());
        }
        Ok(())
    }

    fn spool(&self) -> Arc<dyn Spool> {
        self.spool.clone()
    }

    fn format(&self) -> projector_core::envelope::Format {
        projector_core::envelope::Format::Auto
    }
}

/// A spool in a map.
#[derive(Default)]
pub(crate) struct FakeSpool {
    pub(crate) records: Mutex<BTreeMap<u64, OutboxRecord>>,
}

impl Spool for FakeSpool {
    fn id(&self) -> projector_core::store::Result<String> {
        Ok("fake".into())
    }

    fn pending(&self) -> usize {
        self.records.lock().recover().len()
    }

    fn read(
        &self,
        after: Option<u64>,
        skip: &HashSet<u64>,
        max: usize,
    ) -> projector_core::store::Result<Vec<OutboxRecord>> {
        let records = self.records.lock().recover();
        Ok(records
            .range(after.map_or(0, |a| a + 1)..)
            .filter(|(seq, _)| !skip.contains(seq))
            .take(max)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn remove(&self, seqs: &[u64]) -> projector_core::store::Result<()> {
        let mut records = self.records.lock().recover();
        for s in seqs {
            records.remove(s);
        }
        Ok(())
    }

    fn flush(&self) -> projector_core::store::Result<()> {
        Ok(())
    }
}
