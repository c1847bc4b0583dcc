//! The spool of records for a broker (retries, dead letters, changelog
//! records), kept in bundles: a commit's records go into the store as a
//! few values of up to [`BUNDLE`] records each, not one key per record,
//! so a commit that changed many views writes a few keys, and the
//! producer's acknowledgements remove a bundle at once when its last
//! record is acknowledged.
//!
//! A record's id (its `seq`) tells where it is: a bundle's records have
//! the top bit set, the bundle's own id above [`INDEX_BITS`] and their
//! place in it below; the bundle is stored under the id of its first
//! record, so bundles sort in spool order after the records spooled one
//! key each by an earlier version (still read, and removed, as before).
//! What of a bundle was acknowledged is kept in memory until the whole
//! bundle is: after a crash a bundle is sent whole again, at least once,
//! as any unacknowledged record is (the producer drops what the broker
//! already holds first).

use super::*;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Records per bundle, at most.
pub(super) const BUNDLE: usize = 1024;

/// Set in the id of every record kept in a bundle.
const BUNDLED: u64 = 1 << 63;

/// Bits of a bundled id that give the record's place in its bundle.
const INDEX_BITS: u32 = 24;

/// The id of the first record of the bundle holding `id`.
fn base_of(id: u64) -> u64 {
    id & !((1 << INDEX_BITS) - 1)
}

/// Bundles decoded lately, kept for the producer's next reads.
const DECODED: usize = 16;

/// What the producer acknowledged of bundles not yet acknowledged whole
/// (per bundle, its base id: its length and the ids acknowledged), and
/// the bundles it read last, decoded: the producer reads a few records
/// at a time, and would otherwise decode a whole bundle for each read.
#[derive(Debug, Default)]
pub(super) struct Acked {
    bundles: Mutex<HashMap<u64, (usize, HashSet<u64>)>>,
    decoded: Mutex<std::collections::VecDeque<(u64, Arc<[OutboxRecord]>)>>,
}

impl Acked {
    /// The records stored under `k` (value `v`), decoded once.
    fn records(&self, k: &[u8], v: &[u8]) -> Result<Arc<[OutboxRecord]>> {
        let id = id_of(k)?;
        if id & BUNDLED == 0 {
            return Ok(records_at(k, v)?.into());
        }
        let mut decoded = self.decoded.lock().recover();
        if let Some((_, records)) = decoded.iter().find(|(base, _)| *base == id) {
            return Ok(records.clone());
        }
        let records: Arc<[OutboxRecord]> = records_at(k, v)?.into();
        if decoded.len() == DECODED {
            decoded.pop_front();
        }
        decoded.push_back((id, records.clone()));
        Ok(records)
    }

    /// Forget the decoded bundle stored at `base` (removed).
    fn forget(&self, base: u64) {
        self.decoded.lock().recover().retain(|(b, _)| *b != base);
    }
}

/// The id a spool key is stored under.
fn id_of(k: &[u8]) -> Result<u64> {
    k.get(2..10)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt {
            what: "spool key".into(),
            reason: format!("{} bytes", k.len()),
        })
}

impl Writer {
    /// Spool a record to produce; its `seq` is assigned when the commit
    /// puts it in a bundle.
    pub(crate) fn outbox(&mut self, record: OutboxRecord) -> Result<()> {
        self.spooled.push(record);
        Ok(())
    }

    /// Put the records spooled into `batch` as bundles.
    pub(super) fn bundle_spooled(&mut self) -> Result<()> {
        let spooled = std::mem::take(&mut self.spooled);
        for chunk in spooled.chunks(BUNDLE) {
            let base = BUNDLED | (self.db.generate_id()? << INDEX_BITS);
            let records: Vec<&OutboxRecord> = chunk.iter().collect();
            let bytes = encode_bundle(base, &records);
            self.batch.insert(outbox_key(base), bytes);
        }
        Ok(())
    }
}

/// `records` as the bundle stored at `base`, each with its id.
fn encode_bundle(base: u64, records: &[&OutboxRecord]) -> Vec<u8> {
    let numbered: Vec<OutboxRecord> = records
        .iter()
        .enumerate()
        .map(|(i, r)| OutboxRecord {
            seq: base + i as u64,
            ..(*r).clone()
        })
        .collect();
    encode(&numbered)
}

/// The records stored under `k`: a bundle, or one record spooled alone.
fn records_at(k: &[u8], v: &[u8]) -> Result<Vec<OutboxRecord>> {
    match id_of(k)? & BUNDLED {
        0 => Ok(vec![decode("spooled record", v)?]),
        _ => decode("spooled bundle", v),
    }
}

/// How many records the value under `k` holds (a bundle's length is the
/// varint its encoding starts with).
fn count_at(k: &[u8], v: &[u8]) -> usize {
    let bundled = k.get(2).is_some_and(|b| b & 0x80 != 0);
    if !bundled {
        return 1;
    }
    let mut n = 0usize;
    for (i, b) in v.iter().take(10).enumerate() {
        n |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    n
}

impl Store {
    /// Spooled records, oldest first, after id `after` (from the first
    /// with `None`), skipping `skip` and what was acknowledged, at most
    /// `max`.
    pub fn outbox(
        &self,
        after: Option<u64>,
        skip: &HashSet<u64>,
        max: usize,
    ) -> Result<Vec<OutboxRecord>> {
        let mut out = Vec::new();
        let start = match after {
            Some(id) if id & BUNDLED != 0 => outbox_key(base_of(id)),
            Some(id) => outbox_key(id.saturating_add(1)),
            None => key(b'x', &[]),
        };
        let end = key(b'y', &[]);
        let acked = self.acked.bundles.lock().recover();
        for item in self.state.range(start..end) {
            let (k, v) = item?;
            let records = self.acked.records(&k, &v)?;
            let base = base_of(records.first().map_or(0, |r| r.seq));
            let done = acked.get(&base).map(|(_, places)| places);
            for record in records.iter() {
                if after.is_some_and(|a| record.seq <= a)
                    || skip.contains(&record.seq)
                    || done.is_some_and(|d| d.contains(&record.seq))
                {
                    continue;
                }
                out.push(record.clone());
                if out.len() == max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Records in the spool, not yet acknowledged.
    pub fn outbox_count(&self) -> usize {
        let held: usize = self
            .state
            .scan_prefix(key(b'x', &[]))
            .filter_map(|item| item.ok())
            .map(|(k, v)| count_at(&k, &v))
            .sum();
        let acked: usize = self
            .acked
            .bundles
            .lock()
            .recover()
            .values()
            .map(|(_, places)| places.len())
            .sum();
        held.saturating_sub(acked)
    }

    /// Remove acknowledged records from the spool: a record spooled
    /// alone at once, a bundle once all its records are.
    pub fn remove_outbox(&self, ids: &[u64]) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut acked = self.acked.bundles.lock().recover();
        for &id in ids {
            if id & BUNDLED == 0 {
                batch.remove(outbox_key(id));
                continue;
            }
            let base = base_of(id);
            let (len, places) = match acked.entry(base) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let Some(v) = self.state.get(outbox_key(base))? else {
                        continue; // removed already
                    };
                    e.insert((count_at(&outbox_key(base), &v), HashSet::new()))
                }
            };
            places.insert(id);
            if places.len() >= *len {
                batch.remove(outbox_key(base));
                acked.remove(&base);
                self.acked.forget(base);
            }
        }
        self.state.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> OutboxRecord {
        OutboxRecord {
            seq: 0,
            topic: "changelog".into(),
            partition: Some(0),
            key: Some(vec![n]),
            payload: Some(vec![n; 3]),
            headers: Vec::new(),
        }
    }

    fn spool(store: &Store, records: impl IntoIterator<Item = OutboxRecord>) {
        let mut w = store.writer();
        for r in records {
            w.outbox(r).expect("spool");
        }
        store.commit(w).expect("commit");
    }

    #[test]
    fn a_commits_records_go_in_bundles_and_leave_when_all_are_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        // One commit of 1 500 records: two bundles (1 024 and 476), two keys.
        spool(&store, (0..1500).map(|n| record(n as u8)));
        assert_eq!(store.state.scan_prefix(key(b'x', &[])).count(), 2);
        assert_eq!(store.outbox_count(), 1500);
        let all = store.outbox(None, &HashSet::new(), 10_000).expect("read");
        assert_eq!(all.len(), 1500);
        let ids: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "in spool order, ids distinct"
        );
        assert_eq!(all[7].key, Some(vec![7]));
        // Read on from a cursor, skipping what is in flight.
        let skip: HashSet<u64> = ids[1000..1010].iter().copied().collect();
        let next = store.outbox(Some(ids[999]), &skip, 20).expect("read");
        assert_eq!(next.first().map(|r| r.seq), Some(ids[1010]));
        assert_eq!(next.len(), 20);
        // Acknowledged in part: the bundle stays, its acknowledged records
        // are not read again; acknowledged whole: its key goes.
        store.remove_outbox(&ids[..1000]).expect("remove");
        assert_eq!(store.outbox_count(), 500);
        assert_eq!(store.state.scan_prefix(key(b'x', &[])).count(), 2);
        let left = store.outbox(None, &HashSet::new(), 10_000).expect("read");
        assert_eq!(left.len(), 500);
        assert_eq!(left[0].seq, ids[1000]);
        store.remove_outbox(&ids[1000..1024]).expect("remove");
        assert_eq!(store.state.scan_prefix(key(b'x', &[])).count(), 1);
        store.remove_outbox(&ids[1024..]).expect("remove");
        assert_eq!(store.outbox_count(), 0);
        assert!(store
            .outbox(None, &HashSet::new(), 10)
            .expect("read")
            .is_empty());
        store.close().expect("close");
    }

    #[test]
    fn records_spooled_one_key_each_by_an_earlier_version_are_read_first_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        // As an earlier version spooled: a key per record, its seq an id.
        let mut batch = sled::Batch::default();
        for seq in [5u64, 6] {
            let r = OutboxRecord {
                seq,
                ..record(seq as u8)
            };
            batch.insert(outbox_key(seq), encode(&r));
        }
        store.state.apply_batch(batch).expect("put");
        spool(&store, [record(9)]);
        assert_eq!(store.outbox_count(), 3);
        let all = store.outbox(None, &HashSet::new(), 10).expect("read");
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(&seqs[..2], &[5, 6]);
        assert!(seqs[2] & BUNDLED != 0);
        assert_eq!(
            store
                .outbox(Some(6), &HashSet::new(), 10)
                .expect("read")
                .len(),
            1
        );
        store.remove_outbox(&seqs).expect("remove");
        assert_eq!(store.outbox_count(), 0);
        store.close().expect("close");
    }
}
