//! The index of views committed and not yet applied to their keys: the
//! newest waiting value per key, in shards.
//!
//! Reads look a key up here before the tree. A commit adds tens of
//! thousands of keys at once, so one lock over the whole index would make
//! a read wait for a whole commit's inserts (up to 20 ms measured while
//! the read bench's writes flowed); each shard is locked only for its own
//! share, with the keys copied and grouped before any lock is taken.

use projector_common::sync::Recover;
use rustc_hash::{FxHashMap, FxHasher};
use sled::IVec;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

const SHARDS: usize = 16;

/// A view waiting to be applied: the commit it came from, and its value
/// (a slice of that commit's record), `None` if removed.
#[derive(Clone)]
pub(super) struct Waiting {
    pub(super) seq: u64,
    pub(super) value: Option<IVec>,
}

type Shard = FxHashMap<Box<[u8]>, Waiting>;

#[derive(Default)]
pub(super) struct Index {
    shards: [RwLock<Shard>; SHARDS],
    /// Keys waiting, across the shards (changed under a shard's lock).
    len: AtomicUsize,
}

fn shard_of(key: &[u8]) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    (h.finish() >> 32) as usize % SHARDS
}

impl Index {
    /// The newest waiting value of `key`: `Some(None)` if it was removed,
    /// `None` if nothing waits for it.
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.shards[shard_of(key)]
            .read()
            .recover()
            .get(key)
            .map(|w| w.value.clone())
    }

    /// Keys waiting.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Make `views` (key, value) of commit `seq` the newest waiting ones.
    pub(super) fn add(&self, seq: u64, views: impl Iterator<Item = (Box<[u8]>, Option<IVec>)>) {
        let mut grouped: [Vec<(Box<[u8]>, Waiting)>; SHARDS] = Default::default();
        for (key, value) in views {
            grouped[shard_of(&key)].push((key, Waiting { seq, value }));
        }
        for (shard, entries) in self.shards.iter().zip(grouped) {
            if entries.is_empty() {
                continue;
            }
            let mut shard = shard.write().recover();
            let before = shard.len();
            shard.extend(entries);
            self.len.fetch_add(shard.len() - before, Ordering::Relaxed);
        }
    }

    /// Every waiting view of commits up to `through`, as it is now.
    pub(super) fn through(&self, through: u64) -> Vec<(Box<[u8]>, Option<IVec>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().recover();
            out.extend(
                shard
                    .iter()
                    .filter(|(_, w)| w.seq <= through)
                    .map(|(k, w)| (k.clone(), w.value.clone())),
            );
        }
        out
    }

    /// Forget `keys`, applied from commits up to `through`, unless a newer
    /// commit put them again meanwhile.
    pub(super) fn applied<'a>(&self, keys: impl Iterator<Item = &'a [u8]>, through: u64) {
        let mut grouped: [Vec<&[u8]>; SHARDS] = Default::default();
        for key in keys {
            grouped[shard_of(key)].push(key);
        }
        for (shard, keys) in self.shards.iter().zip(grouped) {
            if keys.is_empty() {
                continue;
            }
            let mut shard = shard.write().recover();
            let before = shard.len();
            for k in keys {
                if shard.get(k).is_some_and(|w| w.seq <= through) {
                    shard.remove(k);
                }
            }
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views<'a>(
        seq: u8,
        keys: &'a [&'a str],
    ) -> impl Iterator<Item = (Box<[u8]>, Option<IVec>)> + 'a {
        keys.iter()
            .map(move |k| (k.as_bytes().into(), Some(IVec::from(&[seq][..]))))
    }

    #[test]
    fn the_newest_commit_of_a_key_wins_and_an_applied_key_leaves_unless_put_again() {
        let index = Index::default();
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        index.add(1, views(1, &names));
        index.add(2, views(2, &names[..10]));
        assert_eq!(index.len(), 100);
        assert_eq!(index.get(b"k3"), Some(Some(IVec::from(&[2u8][..]))));
        assert_eq!(index.get(b"k50"), Some(Some(IVec::from(&[1u8][..]))));
        assert_eq!(index.get(b"absent"), None);

        // The materializer took commit 1's views; commit 2 came meanwhile.
        let taken = index.through(1);
        assert_eq!(taken.len(), 90, "k0..k9 wait with commit 2");
        index.applied(names.iter().map(|k| k.as_bytes()), 1);
        assert_eq!(index.len(), 10, "only the keys commit 2 put again wait");
        assert_eq!(index.get(b"k3"), Some(Some(IVec::from(&[2u8][..]))));
        assert_eq!(index.get(b"k50"), None);

        index.applied(names[..10].iter().map(|k| k.as_bytes()), 2);
        assert_eq!(index.len(), 0);
        assert!(index.through(u64::MAX).is_empty());
    }
}
