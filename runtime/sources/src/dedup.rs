//! The ids of the last records of each partition of the embedded log, kept
//! in memory: what makes an append idempotent by event. The log itself is
//! the durable copy: the window is rebuilt from its last records when it
//! opens, so it cannot disagree with the records after a crash.

use crate::log::Position;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

/// The (source, id) of the last `window` records per partition, by a
/// 64-bit hash. A hit is a candidate only: the caller checks the record it
/// points at, so two ids with one hash never drop an event.
pub(crate) struct RecentIds {
    window: usize,
    /// Hash of (source, id) → where the record with it is.
    at: FxHashMap<u64, Position>,
    /// Per partition, the hashes of its remembered records, oldest first.
    order: Vec<VecDeque<(u64, u64)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RecentIds {
    /// Empty, for `partitions` partitions, remembering `window` records
    /// of each (0: none).
    pub(crate) fn new(partitions: u32, window: usize) -> Self {
        RecentIds {
            window,
            at: FxHashMap::default(),
            order: vec![VecDeque::new(); partitions as usize],
            hasher: Default::default(),
        }
    }

    /// How many records of each partition it remembers.
    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// The hash an id is remembered by.
    pub(crate) fn hash(&self, source: &str, id: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(source.as_bytes());
        h.write_u8(0);
        h.write(id.as_bytes());
        h.finish()
    }

    /// Where the record with this hash is, if remembered.
    pub(crate) fn get(&self, hash: u64) -> Option<Position> {
        self.at.get(&hash).copied()
    }

    /// Remember a record appended at `pos` (offsets of a partition in
    /// order), forgetting its partition's oldest past the window.
    pub(crate) fn insert(&mut self, hash: u64, pos: Position) {
        if self.window == 0 {
            return;
        }
        self.at.insert(hash, pos);
        let order = &mut self.order[pos.partition as usize];
        order.push_back((hash, pos.offset));
        if order.len() > self.window {
            if let Some((old, offset)) = order.pop_front() {
                forget(&mut self.at, old, pos.partition, offset);
            }
        }
    }

    /// Forget the records of `partition` before `offset` (retention).
    pub(crate) fn forget_before(&mut self, partition: u32, offset: u64) {
        let order = &mut self.order[partition as usize];
        let mut gone = Vec::new();
        while order.front().is_some_and(|(_, o)| *o < offset) {
            gone.extend(order.pop_front());
        }
        for (hash, at) in gone {
            forget(&mut self.at, hash, partition, at);
        }
    }

    /// Records remembered, all partitions together.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

/// Remove `hash` if it still points at this record (a newer record with
/// the same hash keeps its entry).
fn forget(at: &mut FxHashMap<u64, Position>, hash: u64, partition: u32, offset: u64) {
    if at.get(&hash) == Some(&Position { partition, offset }) {
        at.remove(&hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: u32, offset: u64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn remembers_the_last_window_per_partition() {
        let mut ids = RecentIds::new(2, 3);
        let h: Vec<u64> = (0..6).map(|i| ids.hash("s", &i.to_string())).collect();
        for (i, hash) in h.iter().enumerate() {
            ids.insert(*hash, pos(0, i as u64));
        }
        ids.insert(ids.hash("s", "other"), pos(1, 0));
        assert_eq!(ids.get(h[0]), None, "past the window");
        assert_eq!(ids.get(h[5]), Some(pos(0, 5)));
        assert_eq!(ids.len(), 4);
        ids.forget_before(0, 5);
        assert_eq!(ids.get(h[4]), None);
        assert_eq!(ids.get(h[5]), Some(pos(0, 5)));
        assert_ne!(
            ids.hash("s", "1"),
            ids.hash("s1", ""),
            "source and id are apart"
        );
    }

    #[test]
    fn a_window_of_zero_remembers_nothing() {
        let mut ids = RecentIds::new(1, 0);
        let h = ids.hash("s", "1");
        ids.insert(h, pos(0, 0));
        assert_eq!(ids.get(h), None);
    }
}
