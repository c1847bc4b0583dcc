//! The narrow host a source is given: what an input may ask of the
//! runtime (where its partitions resume, a commit before a partition
//! leaves, the restore of views from a changelog, the spool's records),
//! and nothing else. The engine implements it; a source never sees the
//! engine, so it cannot fold, read or deploy, and it can be tested
//! against a fake.

use super::Spool;
use crate::engine::{Engine, Result};
use crate::envelope::Format;
use std::sync::Arc;
use std::time::Duration;

/// What a source may ask of the runtime it feeds.
pub trait SourceHost: Send + Sync {
    /// Where `source`'s `partition` resumes: the offset after the last
    /// record every loaded plugin stored (0 for a partition never seen).
    fn resume_offset(&self, source: &str, partition: u32) -> Result<u64>;

    /// Where a retry topic's partition resumes (the retries taken into
    /// the store so far).
    fn retry_resume_offset(&self, source: &str, partition: u32) -> Result<u64>;

    /// Make everything applied so far durable (before a partition leaves
    /// this instance).
    fn commit(&self) -> Result<()>;

    /// How often the engine commits on its own.
    fn commit_interval(&self) -> Duration;

    /// The names of the plugins on the live path.
    fn plugins(&self) -> Vec<String>;

    /// `plugin`'s stored offsets of every source on view partition
    /// `partition` (what a restore compares a changelog with).
    fn partition_offsets(&self, plugin: &str, partition: u32) -> Result<Vec<(String, u64)>>;

    /// Put restored views of `plugin` into the store (`None`: the view was
    /// deleted).
    fn restore_views(&self, plugin: &str, views: &[(&str, Option<&[u8]>)]) -> Result<()>;

    /// Put restored history entries of `plugin`'s views into the store:
    /// (view key, seq, stored form; `None`: the entry was pruned).
    fn restore_history(&self, plugin: &str, entries: &[(&str, u64, Option<&[u8]>)]) -> Result<()>;

    /// Put answers `plugin` recorded for replay, restored from its
    /// changelog, into its record: (service and path, stored form).
    fn restore_fetched(&self, plugin: &str, entries: &[(&[u8], &[u8])]) -> Result<()>;

    /// Record the offsets a restore brought `plugin`'s partitions to.
    fn restored(&self, plugin: &str, partitions: &[(u32, Vec<(String, u64)>)]) -> Result<()>;

    /// The store's spool of outgoing records (retries, dead letters,
    /// changelog records) that a source with a broker sends.
    fn spool(&self) -> Arc<dyn Spool>;

    /// The format records are decoded in: a source with a thread of its
    /// own decodes there ([`Record::decoded`](crate::Record::decoded)),
    /// off the pipeline's.
    fn format(&self) -> Format;
}

impl SourceHost for Engine {
    fn resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        Engine::resume_offset(self, source, partition)
    }

    fn retry_resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        Engine::retry_resume_offset(self, source, partition)
    }

    fn commit(&self) -> Result<()> {
        Engine::commit(self)
    }

    fn commit_interval(&self) -> Duration {
        Engine::commit_interval(self)
    }

    fn plugins(&self) -> Vec<String> {
        self.projections()
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    fn partition_offsets(&self, plugin: &str, partition: u32) -> Result<Vec<(String, u64)>> {
        Engine::partition_offsets(self, plugin, partition)
    }

    fn restore_views(&self, plugin: &str, views: &[(&str, Option<&[u8]>)]) -> Result<()> {
        Engine::restore_views(self, plugin, views)
    }

    fn restored(&self, plugin: &str, partitions: &[(u32, Vec<(String, u64)>)]) -> Result<()> {
        Engine::restored(self, plugin, partitions)
    }

    fn restore_history(&self, plugin: &str, entries: &[(&str, u64, Option<&[u8]>)]) -> Result<()> {
        Engine::restore_history(self, plugin, entries)
    }

    fn restore_fetched(&self, plugin: &str, entries: &[(&[u8], &[u8])]) -> Result<()> {
        Engine::restore_fetched(self, plugin, entries)
    }

    fn spool(&self) -> Arc<dyn Spool> {
        Arc::new(self.store().clone())
    }

    fn format(&self) -> Format {
        Engine::format(self)
    }
}
