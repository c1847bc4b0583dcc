//! Fetched answers recorded for replay (`record_fetches`), kept in a tree
//! of the store per plugin (`fetch-record/<plugin>`): by service and path,
//! the newest answer the live path fetched, with when; the newest by the
//! entity's version where answers carry one (a top-level `version` number
//! in the JSON body), so a lagging replica's older answer, fetched later,
//! does not replace a newer one. A replay reads it
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

/// How much of a plugin's fetched answers is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBounds {
    /// Age past which an answer is neither used nor kept, in ms.
    pub ms: u64,
    /// Size (keys and stored answers) past which the oldest answers are
    /// dropped, in bytes.
    pub max_bytes: u64,
}

/// One plugin's recorded answers.
#[derive(Debug)]
pub struct StoredRecord {
    tree: sled::Tree,
    /// Age past which an answer is neither used nor kept, in ms.
    ms: u64,
    /// Size past which the oldest answers are dropped, in bytes.
    max_bytes: u64,
    /// The size of what is kept now (keys and stored answers), in bytes.
    bytes: AtomicU64,
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

/// The entity version an answer carries: the top-level `version` number
/// of its JSON body, when it has one.
fn entity_version(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: Option<u64>,
    }
    serde_json::from_slice::<Versioned>(body).ok()?.version
}

/// Whether the stored answer `new` should replace `kept` for its path:
/// the entity's newer version where both answers carry one (a lagging
/// replica's older answer, fetched later, does not replace it), else
/// the one recorded later.
fn replaces(new: &[u8], kept: &[u8]) -> bool {
    let (Ok(new), Ok(kept)) = (
        postcard::from_bytes::<Kept>(new),
        postcard::from_bytes::<Kept>(kept),
    ) else {
        return true;
    };
    match (entity_version(&new.2), entity_version(&kept.2)) {
        (Some(n), Some(k)) if n != k => n > k,
        _ => new.0 >= kept.0,
    }
}

/// A plugin's record, and the key its pruning goes on after.
pub(super) type Pruning = (Arc<StoredRecord>, Option<Vec<u8>>);

impl StoredRecord {
    /// The record of `plugin` in `store`, answers kept within `bounds`.
    pub(crate) fn open(store: &Store, plugin: &str, bounds: RecordBounds) -> Result<Self> {
        let tree = store.tree(&format!("fetch-record/{plugin}"))?;
        let mut bytes = 0;
        for item in tree.iter() {
            let (k, v) = item.map_err(crate::store::Error::from)?;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok(StoredRecord {
            tree,
            ms: bounds.ms,
            max_bytes: bounds.max_bytes,
            bytes: AtomicU64::new(bytes),
            recent: Mutex::default(),
        })
    }

    /// Put `value` at `key`, counting the size kept.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let before = self
            .tree
            .insert(key, value)
            .map_err(crate::store::Error::from)?;
        let was = before.map_or(0, |b| (key.len() + b.len()) as u64);
        self.bytes
            .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(was, Ordering::Relaxed);
        Ok(())
    }

    /// Drop the answer at `key`, counting the size kept.
    fn drop_key(&self, key: &[u8]) -> Result<()> {
        let before = self.tree.remove(key).map_err(crate::store::Error::from)?;
        if let Some(b) = before {
            self.bytes
                .fetch_sub((key.len() + b.len()) as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The size of what is kept now (keys and stored answers), in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When the record is past its size, drop its oldest answers until it
    /// is within nine tenths of it (so it is not done again at once);
    /// how many were dropped. Reads the whole record.
    pub(crate) fn shrink(&self) -> Result<u64> {
        if self.bytes() <= self.max_bytes {
            return Ok(0);
        }
        let mut kept = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(crate::store::Error::from)?;
            let at = postcard::from_bytes::<Kept>(&v).map_or(i64::MIN, |k| k.0);
            kept.push((at, k));
        }
        kept.sort_unstable_by_key(|(at, _)| *at);
        let target = self.max_bytes / 10 * 9;
        let mut dropped = 0;
        for (_, key) in kept {
            if self.bytes() <= target {
                break;
            }
            self.drop_key(&key)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The answers recorded since the last call: (key, stored form).
    pub(crate) fn take_recent(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut *self.recent.lock().recover())
    }

    /// Put answers restored from a changelog (key, stored form): each
    /// unless the answer kept for its path is newer ([`replaces`]), or it
    /// is past the bound.
    pub(crate) fn restore(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let now = now_ms();
        let at = |bytes: &[u8]| postcard::from_bytes::<Kept>(bytes).ok().map(|k| k.0);
        for (key, value) in entries {
            if at(value).is_none_or(|t| self.old(t, now)) {
                continue;
            }
            let kept = self.tree.get(key).map_err(crate::store::Error::from)?;
            if kept.is_some_and(|k| !replaces(value, &k)) {
                continue;
            }
            self.put(key, value)?;
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
                self.drop_key(&k)?;
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
        // An answer that carries an older version of the entity than the
        // one recorded (a lagging replica) does not replace it.
        if entity_version(&answer.body).is_some() {
            if let Ok(Some(k)) = self.tree.get(&key) {
                if !replaces(&bytes, &k) {
                    return;
                }
            }
        }
        if let Err(e) = self.put(&key, &bytes) {
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
        let Some(bounds) = self.policy(plugin).record_fetches else {
            return Ok(None);
        };
        let mut records = self.fetch_records.lock().recover();
        if let Some(r) = records.get(plugin) {
            return Ok(Some(r.0.clone()));
        }
        let r = Arc::new(StoredRecord::open(&self.store, plugin, bounds)?);
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

    /// The size of `plugin`'s record of fetched answers, in bytes (`None`:
    /// it records none, or has not been loaded).
    pub fn recorded_bytes(&self, plugin: &str) -> Option<u64> {
        let records = self.fetch_records.lock().recover();
        records.get(plugin).map(|r| r.0.bytes())
    }

    /// Put `plugin`'s recorded answers restored from its changelog into
    /// its record (none when it records no answers).
    pub fn restore_fetched(&self, plugin: &str, entries: &[(&[u8], &[u8])]) -> Result<()> {
        match self.fetch_record(plugin)? {
            Some(r) => r.restore(entries),
            None => Ok(()),
        }
    }

    /// One step of pruning every plugin's record: answers past its age,
    /// and the oldest while it is past its size; whether each reached its
    /// end. The records are pruned without holding their list, so commits
    /// spooling answers meanwhile do not wait.
    pub(crate) fn prune_fetch_records(&self, now: i64, page: usize) -> Result<bool> {
        let records: Vec<(String, Pruning)> = self
            .fetch_records
            .lock()
            .recover()
            .iter()
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        let mut passed = true;
        for (name, (record, cursor)) in records {
            let (next, _) = record.prune(now, cursor.as_deref(), page)?;
            let shrunk = record.shrink()?;
            if shrunk > 0 {
                tracing::info!(
                    plugin = name,
                    dropped = shrunk,
                    bytes = record.bytes(),
                    "fetch record past its size: oldest answers dropped"
                );
            }
            passed &= next.is_none();
            if let Some(kept) = self.fetch_records.lock().recover().get_mut(&name) {
                kept.1 = next;
            }
        }
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(ms: u64, max_bytes: u64) -> RecordBounds {
        RecordBounds { ms, max_bytes }
    }

    #[test]
    fn a_record_past_its_size_drops_its_oldest_answers_and_counts_what_it_keeps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let r = StoredRecord::open(&store, "p", bounds(3_600_000, 10_000)).expect("record");
        let answer = Fetched {
            status: 200,
            body: vec![7; 900],
            stale: false,
        };
        // 20 answers of about 930 bytes, recorded oldest first: past 10 000.
        let now = now_ms();
        for n in 0..20 {
            let bytes =
                postcard::to_allocvec(&(now - 20 + n as i64, 200u16, &answer.body)).expect("bytes");
            let key = record_key("billing", &format!("/billing/a{n:02}"));
            r.restore(&[(&key, &bytes)]).expect("put");
        }
        let size = r.bytes();
        assert!(size > 10_000, "{size}");
        // Rewriting a path replaces its size, it does not add to it.
        r.record("billing", "/billing/a19", &answer);
        assert_eq!(r.bytes(), size);
        let dropped = r.shrink().expect("shrink");
        assert!(r.bytes() <= 9_000, "{} kept", r.bytes());
        assert_eq!(r.len() as u64, 20 - dropped);
        // The oldest went, the newest stayed.
        assert_eq!(r.recorded("billing", "/billing/a00"), None);
        assert_eq!(r.recorded("billing", "/billing/a19"), Some(answer));
        assert_eq!(
            r.shrink().expect("shrink"),
            0,
            "within its size: nothing more"
        );
        // The count survives a reopen.
        let kept = r.bytes();
        drop(r);
        let r = StoredRecord::open(&store, "p", bounds(3_600_000, 10_000)).expect("record");
        assert_eq!(r.bytes(), kept);
        store.close().expect("close");
    }

    #[test]
    fn answers_are_kept_by_service_and_path_and_dropped_past_their_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let r = StoredRecord::open(&store, "p", bounds(60_000, 1 << 20)).expect("record");
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
        let r = StoredRecord::open(&store, "p", bounds(60_000, 1 << 20)).expect("record");
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

    #[test]
    fn an_answer_of_an_older_entity_version_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let r = StoredRecord::open(&store, "p", bounds(60_000, 1 << 20)).expect("record");
        let answer = |v: u64| Fetched {
            status: 200,
            body: format!(r#"{{"version":{v},"amount":{}}}"#, v * 100).into_bytes(),
            stale: false,
        };
        r.record("billing", "/billing/a1", &answer(3));
        // A lagging replica answers version 2 afterwards: the record keeps 3.
        r.record("billing", "/billing/a1", &answer(2));
        assert_eq!(r.recorded("billing", "/billing/a1"), Some(answer(3)));
        r.record("billing", "/billing/a1", &answer(4));
        assert_eq!(r.recorded("billing", "/billing/a1"), Some(answer(4)));
        // Answers without a version: the one recorded last.
        let plain = |text: &str| Fetched {
            status: 200,
            body: text.as_bytes().to_vec(),
            stale: false,
        };
        r.record("sites", "/sites/a1", &plain("first"));
        r.record("sites", "/sites/a1", &plain("second"));
        assert_eq!(r.recorded("sites", "/sites/a1"), Some(plain("second")));
        // A restore goes by the version too, whatever the times.
        let key = record_key("billing", "/billing/a1");
        let kept =
            |at: i64, v: u64| postcard::to_allocvec(&(at, 200u16, answer(v).body)).expect("bytes");
        r.restore(&[(&key, &kept(now_ms() + 5_000, 1))])
            .expect("restore");
        assert_eq!(r.recorded("billing", "/billing/a1"), Some(answer(4)));
        r.restore(&[(&key, &kept(now_ms() - 5_000, 9))])
            .expect("restore");
        assert_eq!(r.recorded("billing", "/billing/a1"), Some(answer(9)));
        store.close().expect("close");
    }
}
