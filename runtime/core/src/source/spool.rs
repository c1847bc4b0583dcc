//! The spool as a source sees it: records the engine committed for a
//! broker (retries, dead letters, changelog records), read oldest first,
//! removed once the broker acknowledged them. Written only by the
//! engine's commits; a source with a broker sends them.

use crate::store::{OutboxRecord, Result, Store};
use std::collections::HashSet;

/// The store setting naming this store's spool.
const SPOOL_ID: &str = "kafka/spool-id";

/// The store's spool of outgoing records.
pub trait Spool: Send + Sync {
    /// This store's spool id, made on first use: what tells its records
    /// apart from other instances' in a shared topic.
    fn id(&self) -> Result<String>;

    /// Records waiting.
    fn pending(&self) -> usize;

    /// Records waiting, oldest first, after seq `after` (from the first
    /// with `None`), skipping `skip`, at most `max`.
    fn read(
        &self,
        after: Option<u64>,
        skip: &HashSet<u64>,
        max: usize,
    ) -> Result<Vec<OutboxRecord>>;

    /// Forget records the broker acknowledged.
    fn remove(&self, seqs: &[u64]) -> Result<()>;

    /// Make the removals so far durable.
    fn flush(&self) -> Result<()>;
}

impl Spool for Store {
    fn id(&self) -> Result<String> {
        if let Some(id) = self.setting(SPOOL_ID)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        // Unique enough among the stores producing to one topic: the time
        // the store first spooled, to the nanosecond, and the process.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!("{nanos:x}-{:x}", std::process::id());
        self.set_setting(SPOOL_ID, Some(id.as_bytes()))?;
        Ok(id)
    }

    fn pending(&self) -> usize {
        self.outbox_count()
    }

    fn read(
        &self,
        after: Option<u64>,
        skip: &HashSet<u64>,
        max: usize,
    ) -> Result<Vec<OutboxRecord>> {
        self.outbox(after, skip, max)
    }

    fn remove(&self, seqs: &[u64]) -> Result<()> {
        self.remove_outbox(seqs)
    }

    fn flush(&self) -> Result<()> {
        Store::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_keeps_its_spool_id_across_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = {
            let store = Store::open(dir.path()).expect("open");
            let id = Spool::id(&store).expect("id");
            assert_eq!(Spool::id(&store).expect("id again"), id);
            id
        };
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(Spool::id(&store).expect("id"), first);
        assert_eq!(store.pending(), 0);
    }
}
