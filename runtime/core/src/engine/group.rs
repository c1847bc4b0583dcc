//! A batch's events grouped by view key: each key once, in the order of
//! its first event, with its events in batch order. Flat arrays: no
//! allocation per key, and the keys are borrowed from the plugin's answer.

use rustc_hash::FxHashMap;
use std::ops::Range;

/// Keys and the events of each.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Groups<'k> {
    keys: Vec<&'k str>,
    /// Group `n`'s events are `events[starts[n]..starts[n + 1]]`.
    starts: Vec<usize>,
    /// Indexes into the batch's events.
    events: Vec<usize>,
}

impl<'k> Groups<'k> {
    /// Group `(event, key)` pairs given in event order.
    pub(super) fn new(pairs: impl IntoIterator<Item = (usize, &'k str)>) -> Self {
        let mut slot: FxHashMap<&'k str, usize> = FxHashMap::default();
        let mut keys = Vec::new();
        let mut tagged: Vec<(usize, usize)> = Vec::new();
        for (event, key) in pairs {
            let n = *slot.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            });
            tagged.push((n, event));
        }
        // A counting sort by group: stable, so each key keeps its events
        // in batch order.
        let mut starts = vec![0usize; keys.len() + 1];
        for &(n, _) in &tagged {
            starts[n + 1] += 1;
        }
        for n in 0..keys.len() {
            starts[n + 1] += starts[n];
        }
        let mut next = starts[..keys.len()].to_vec();
        let mut events = vec![0usize; tagged.len()];
        for (n, event) in tagged {
            events[next[n]] = event;
            next[n] += 1;
        }
        Groups {
            keys,
            starts,
            events,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn key(&self, n: usize) -> &'k str {
        self.keys[n]
    }

    /// The events of group `n`, as indexes into the batch's events.
    pub(super) fn members(&self, n: usize) -> &[usize] {
        &self.events[self.starts[n]..self.starts[n + 1]]
    }

    /// The events of the groups in `range`, in group order (each group's
    /// together, as [`Groups::members`] gives them).
    pub(super) fn members_of(&self, range: Range<usize>) -> &[usize] {
        &self.events[self.starts[range.start]..self.starts[range.end]]
    }

    /// Where group `n`'s events lie in [`Groups::members_of`] a range
    /// starting at `first`.
    pub(super) fn span(&self, first: usize, n: usize) -> Range<usize> {
        let base = self.starts[first];
        self.starts[n] - base..self.starts[n + 1] - base
    }

    /// The groups in `range` on their own, for a worker given only the
    /// events they use: those events (sorted indexes into the batch), and
    /// the groups with their events renumbered into them.
    pub(super) fn share(&self, range: Range<usize>) -> (Vec<usize>, Groups<'k>) {
        let mut used = self.members_of(range.clone()).to_vec();
        used.sort_unstable();
        used.dedup();
        let local = |i: &usize| {
            used.binary_search(i)
                .expect("a member is among the used events")
        };
        let base = self.starts[range.start];
        let groups = Groups {
            keys: self.keys[range.clone()].to_vec(),
            starts: self.starts[range.start..=range.end]
                .iter()
                .map(|s| s - base)
                .collect(),
            events: self.members_of(range).iter().map(local).collect(),
        };
        (used, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_first_seen_order_with_their_events_in_batch_order() {
        let g = Groups::new([(0, "b"), (0, "a"), (1, "a"), (2, "c"), (3, "b"), (3, "a")]);
        assert_eq!(g.len(), 3);
        assert_eq!(
            (0..g.len()).map(|n| g.key(n)).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert_eq!(g.members(0), [0, 3]);
        assert_eq!(g.members(1), [0, 1, 3]);
        assert_eq!(g.members(2), [2]);
        assert_eq!(g.members_of(1..3), [0, 1, 3, 2]);
        assert_eq!(g.span(1, 2), 3..4);
        assert_eq!(Groups::new([]), Groups::default().with_start());
    }

    #[test]
    fn a_share_renumbers_its_events_into_those_it_uses() {
        let g = Groups::new([(0, "a"), (2, "b"), (5, "b"), (5, "c"), (7, "c")]);
        let (used, local) = g.share(1..3);
        assert_eq!(used, [2, 5, 7]);
        assert_eq!(local.len(), 2);
        assert_eq!(local.key(0), "b");
        assert_eq!(local.members(0), [0, 1]);
        assert_eq!(local.members(1), [1, 2]);
    }

    impl Groups<'_> {
        /// The empty grouping as [`Groups::new`] makes it.
        fn with_start(mut self) -> Self {
            self.starts = vec![0];
            self
        }
    }
}
