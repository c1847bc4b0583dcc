//! One commit's changes, gathered before [`Store::commit`] applies them.
//!
//! Everything but the views goes straight into the atomic sled batch. The
//! views go into one record (see [`super::unapplied`]): a commit writes a
//! few keys, however many views it changed.

use super::unapplied::ViewRecordBuf;
use super::*;

/// One batch of changes to the store, applied by `Store::commit`.
pub(crate) struct Writer {
    pub(super) batch: sled::Batch,
    pub(super) views: ViewRecordBuf,
    /// The store key being put, reused from view to view.
    key: Vec<u8>,
    pub(super) db: sled::Db,
    /// Records spooled for a broker, put in bundles by the commit.
    pub(super) spooled: Vec<OutboxRecord>,
}

impl Writer {
    pub(super) fn new(db: sled::Db, views: ViewRecordBuf) -> Self {
        Writer {
            batch: sled::Batch::default(),
            views,
            key: Vec::new(),
            db,
            spooled: Vec::new(),
        }
    }

    /// Put `record` as the view of `view_key` in namespace `ns`.
    pub(crate) fn put_view(&mut self, ns: &str, view_key: &str, record: &ViewRecord) {
        self.views
            .put(view_key_into(&mut self.key, ns, view_key), Some(record));
    }

    /// Put a view of namespace `ns` in its changelog form (see
    /// `changelog_value`; `None`: removed). Its encoding version is
    /// checked, not the view itself: the changelog holds what a runtime
    /// wrote, and a corrupt view fails when it is read.
    pub(crate) fn put_changelog_view(
        &mut self,
        ns: &str,
        view_key: &str,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let stored = match value.map(<[u8]>::split_first) {
            None => None,
            Some(Some((&CHANGELOG_ENCODING, rest))) => Some(rest),
            Some(other) => {
                return Err(Error::Corrupt {
                    what: format!("changelog view {view_key:?}"),
                    reason: match other {
                        Some((v, _)) => {
                            format!("encoding version {v}, this runtime reads {CHANGELOG_ENCODING}")
                        }
                        None => "empty".into(),
                    },
                })
            }
        };
        self.views
            .put_encoded(view_key_into(&mut self.key, ns, view_key), stored);
        Ok(())
    }

    /// Remove the view of `view_key` from namespace `ns`.
    pub(crate) fn remove_view(&mut self, ns: &str, view_key: &str) {
        self.views
            .put(view_key_into(&mut self.key, ns, view_key), None);
    }

    /// Set `next` as the offset `ns` processes next in (source, partition).
    pub(crate) fn set_offset(&mut self, ns: &str, source: &str, partition: u32, next: u64) {
        self.batch
            .insert(offset_key(ns, source, partition), &next.to_be_bytes());
    }

    /// Set the counters of namespace `ns` (totals, not a change).
    pub(crate) fn set_counters(&mut self, ns: &str, counters: &Counters) {
        self.batch
            .insert(key(b'c', &[ns.as_bytes()]), encode(counters));
    }

    /// Queue a retry; its `seq` is assigned here.
    pub(crate) fn retry(&mut self, mut entry: RetryEntry) -> Result<()> {
        entry.seq = self.db.generate_id()?;
        let bytes = json("retry", &entry)?;
        self.batch
            .insert(retry_key(entry.not_before_ms, entry.seq), bytes);
        Ok(())
    }

    /// Record (or extend) an audit run of `ns`.
    pub(crate) fn audit(&mut self, ns: &str, run: &AuditRun) {
        self.batch.insert(
            audit_key(ns, &run.source, run.partition, run.from),
            encode(run),
        );
    }

    /// Take a retry off the queue.
    pub(crate) fn remove_retry(&mut self, entry: &RetryEntry) {
        self.batch.remove(retry_key(entry.not_before_ms, entry.seq));
    }

    /// Take a dead letter out (it was sent back through its plugin).
    pub(crate) fn remove_dead_letter(&mut self, seq: u64) {
        self.batch.remove(key(b'd', &[&seq.to_be_bytes()]));
    }

    /// Record a dead letter; its `seq` is assigned here.
    pub(crate) fn dead_letter(&mut self, mut letter: DeadLetter) -> Result<()> {
        letter.seq = self.db.generate_id()?;
        let bytes = json("dead letter", &letter)?;
        self.batch
            .insert(key(b'd', &[&letter.seq.to_be_bytes()]), bytes);
        Ok(())
    }
}

/// `value` as JSON (retries and dead letters are kept readable).
fn json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        what: what.into(),
        reason: e.to_string(),
    })
}
