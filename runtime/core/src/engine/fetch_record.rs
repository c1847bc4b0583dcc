//! Fetched answers recorded for replay (`record_fetches`), kept in a tree
//! of the store per plugin (`fetch-record/<plugin>`): by service and path,
//! the newest answer the live path fetched, with when. A replay reads it
//! first ([`projector_host::fetch_record`]); the sweep drops answers older
//! than the plugin's bound.

use super::*;
use projector_guest::Fetched;
use projector_host::fetch_record::FetchRecord;

/// One plugin's recorded answers.
#[derive(Debug)]
pub struct StoredRecord {
    tree: sled::Tree,
    /// Age past which an answer is neither used nor kept, in ms.
    ms: u64,
}

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
        })
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
        if let Err(e) = self.tree.insert(record_key(service, path), bytes) {
            tracing::warn!(service, path, "recording a fetched answer: {e}");
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
}
