//! Fetched answers recorded for replay (`record_fetches`), kept in a tree
//! of the store per plugin (`fetch-record/<plugin>`): by service and path,
//! the newest answer the live path fetched, with when. A replay reads it
//! first ([`projector_host::fetch_record`]); the sweep drops answers older
//! than the plugin's bound.
//!
//! With a changelog, each answer recorded while a partition's events were
//! applied goes to that partition's changelog in the same commit (kind
//! `fetch`), so the instance that restores the partition gets the answers
//! its views were built from; a restore keeps the newer of two answers
//! for a path, and drops those past the bound. No tombstone follows a
//! pruned answer: the restore's age check drops it instead.

use super::*;
use projector_guest::Fetched;
use projector_host::fetch_record::FetchRecord;

/// One plugin's recorded answers.
#[derive(Debug)]
pub struct StoredRecord {
    tree: sled::Tree,
    /// Age past which an answer is neither used nor kept, in ms.
    ms: u64,
    /// Answers recorded since the engine last took them for the changelog
    /// (key, stored form); at most [`RECENT`].
    recent: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Recorded answers held for the changelog, at most: past it (no
/// changelog takes them) the oldest are not kept for it.
const RECENT: usize = 1 << 16;

fn record_key(service: &str, path: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(service.len() + path.len() + 1);
    k.extend_from_slice(service.as_bytes());
    k.push(0);
    k.extend_from_slice(path.as_bytes());
    k
}

/// (recorded at, status, body).
type Kept = (i64, u16, Vec<u8>);

/// A plugin's record, and the key its pruning goes on after.
pub(super) type Pruning = (Arc<StoredRecord>, Option<Vec<u8>>);

impl StoredRecord {
    /// The record of `plugin` in `store`, answers kept `ms`.
    pub(crate) fn open(store: &Store, plugin: &str, ms: u64) -> Result<Self> {
        Ok(StoredRecord {
            tree: store.tree(&format!("fetch-record/{plugin}"))?,
            ms,
            recent: Mutex::default(),
        })
    }

    /// The answers recorded since the last call: (key, stored form).
    pub(crate) fn take_recent(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut *self.recent.lock().recover())
    }

    /// Put answers restored from a changelog (key, stored form): each
    /// unless one recorded later is kept, or it is past the bound.
    pub(crate) fn restore(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let now = now_ms();
        let at = |bytes: &[u8]| postcard::from_bytes::<Kept>(bytes).ok().map(|k| k.0);
        for (key, value) in entries {
            let Some(when) = at(value).filter(|t| !self.old(*t, now)) else {
                continue;
            };
            let kept = self.tree.get(key).map_err(crate::store::Error::from)?;
            if kept.is_some_and(|k| at(&k).is_some_and(|t| t >= when)) {
                continue;
            }
            self.tree
                .insert(*key, *value)
                .map_err(crate::store::Error::from)?;
        }
        Ok(())
    }

    fn old(&self, at_ms: i64, now: i64) -> bool {
        now.saturating_sub(at_ms) > self.ms as i64
    }

    /// Drop up to `page` answers older than the bound at `now`, from
    /// `after` on; the last key looked at (`None`: the end was reached)
    /// and how many were dropped.
    pub(crate) fn prune(
        &self,
        now: i64,
        after: Option<&[u8]>,
        page: usize,
    ) -> Result<(Option<Vec<u8>>, u64)> {
        let mut dropped = 0;
        let mut last = None;
        let start = after.map(|a| {
            let mut k = a.to_vec();
            k.push(0);
            k
        });
        let range = match &start {
            Some(s) => self.tree.range(s.clone()..),
            None => self.tree.iter(),
        };
        for (n, item) in range.enumerate() {
            if n == page {
                return Ok((last, dropped));
            }
            let (k, v) = item.map_err(crate::store::Error::from)?;
            let stale =
                postcard::from_bytes::<Kept>(&v).map_or(true, |(at, _, _)| self.old(at, now));
            if stale {
                self.tree.remove(&k).map_err(crate::store::Error::from)?;
                dropped += 1;
            }
            last = Some(k.to_vec());
        }
        Ok((None, dropped))
    }

    /// Answers recorded now.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

impl FetchRecord for StoredRecord {
    fn recorded(&self, service: &str, path: &str) -> Option<Fetched> {
        let v = self.tree.get(record_key(service, path)).ok()??;
        let (at, status, body): Kept = postcard::from_bytes(&v).ok()?;
        (!self.old(at, now_ms())).then_some(Fetched {
            status,
            body,
            stale: false,
        })
    }

    fn record(&self, service: &str, path: &str, answer: &Fetched) {
        let kept: (i64, u16, &[u8]) = (now_ms(), answer.status, &answer.body);
        let Ok(bytes) = postcard::to_allocvec(&kept) else {
            return;
        };
        let key = record_key(service, path);
        if let Err(e) = self.tree.insert(&key, bytes.as_slice()) {
            tracing::warn!(service, path, "recording a fetched answer: {e}");
            return;
        }
        let mut recent = self.recent.lock().recover();
        if recent.len() < RECENT {
            recent.push((key, bytes));
        }
    }
}

impl Engine {
    /// Where `plugin`'s fetched answers are recorded for replay, when its
    /// policy asks (`record_fetches`); one per plugin, shared by its
    /// versions and generations.
    pub fn fetch_record(&self, plugin: &str) -> Result<Option<Arc<StoredRecord>>> {
        let Some(ms) = self.policy(plugin).record_fetches_ms else {
            return Ok(None);
        };
        let mut records = self.fetch_records.lock().recover();
        if let Some(r) = records.get(plugin) {
            return Ok(Some(r.0.clone()));
        }
        let r = Arc::new(StoredRecord::open(&self.store, plugin, ms)?);
        records.insert(plugin.to_string(), (r.clone(), None));
        Ok(Some(r))
    }

    /// Spool the answers `p`'s plugin recorded since the last call to the
    /// changelog of `partition`, whose events were applied meanwhile
    /// (when this instance owns it; a shadow generation's are dropped).
    pub(super) fn spool_fetched(
        &self,
        writer: &mut Writer,
        p: &Projection,
        partition: u32,
    ) -> Result<()> {
        let record = self
            .fetch_records
            .lock()
            .recover()
            .get(p.name())
            .map(|r| r.0.clone());
        let Some(recent) = record.map(|r| r.take_recent()) else {
            return Ok(());
        };
        let changelog = self
            .changelog()
            .filter(|c| !p.is_shadow() && c.owns(partition));
        let Some(c) = changelog else {
            return Ok(());
        };
        for (key, kept) in &recent {
            if let Some(record) = c.fetched(p.name(), partition, key, kept) {
                writer.outbox(record)?;
            }
        }
        Ok(())
    }

    /// Put `plugin`'s recorded answers restored from its changelog into
    /// its record (none when it records no answers).
    pub fn restore_fetched(&self, plugin: &str, entries: &[(&[u8], &[u8])]) -> Result<()> {
        match self.fetch_record(plugin)? {
            Some(r) => r.restore(entries),
            None => Ok(()),
        }
    }

    /// One step of pruning every plugin's record of answers past its
    /// bound; whether each reached its end.
    pub(crate) fn prune_fetch_records(&self, now: i64, page: usize) -> Result<bool> {
        let mut passed = true;
        let mut records = self.fetch_records.lock().recover();
        for (record, cursor) in records.values_mut() {
            let (next, _) = record.prune(now, cursor.as_deref(), page)?;
            passed &= next.is_none();
            *cursor = next;
        }
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_by_service_and_path_and_dropped_past_their_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let r = StoredRecord::open(&store, "p", 60_000).expect("record");
        let answer = Fetched {
            status: 200,
            body: br#"{"version":3}"#.to_vec(),
            stale: false,
        };
        r.record("billing", "/billing/a1", &answer);
        assert_eq!(r.recorded("billing", "/billing/a1"), Some(answer));
        assert_eq!(r.recorded("billing", "/billing/a2"), None);
        assert_eq!(r.recorded("sites", "/billing/a1"), None);
        // Not yet old: kept; an hour later: dropped.
        assert_eq!(r.prune(now_ms(), None, 10).expect("prune"), (None, 0));
        assert_eq!(r.prune(now_ms() + 3_600_000, None, 10).expect("prune").1, 1);
        assert!(r.is_empty());
        store.close().expect("close");
    }

    #[test]
    fn recorded_answers_are_held_for_the_changelog_and_a_restore_keeps_the_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let r = StoredRecord::open(&store, "p", 60_000).expect("record");
        let answer = |v: u8| Fetched {
            status: 200,
            body: vec![v],
            stale: false,
        };
        r.record("billing", "/a", &answer(1));
        let recent = r.take_recent();
        assert_eq!(recent.len(), 1);
        assert!(r.take_recent().is_empty(), "taken once");
        let kept = |at: i64, v: u8| postcard::to_allocvec(&(at, 200u16, vec![v])).expect("bytes");
        let now = now_ms();
        let (older, newer, stale) = (kept(now - 1_000, 2), kept(now + 1_000, 3), kept(0, 4));
        let key = record_key("billing", "/a");
        // Older than what is kept: left; newer: taken; past the bound: dropped.
        r.restore(&[(&key, &older)]).expect("restore");
        assert_eq!(r.recorded("billing", "/a"), Some(answer(1)));
        r.restore(&[(&key, &newer)]).expect("restore");
        assert_eq!(r.recorded("billing", "/a"), Some(answer(3)));
        let other = record_key("billing", "/b");
        r.restore(&[(&other, &stale)]).expect("restore");
        assert_eq!(r.recorded("billing", "/b"), None);
        assert_eq!(r.len(), 1);
        store.close().expect("close");
    }
}
