//! A memory budget (`[engine] memory_mb`): one figure that bounds the
//! parts of the runtime that grow with the data, each given a share.
//!
//! | part | share | bounded by |
//! | --- | --- | --- |
//! | store cache | 1/4 | sled's page cache: sled counts what it caches by its size on disk, and holds about four times that in memory (measured), so its `cache_capacity` is a sixteenth of the budget |
//! | view caches | 1/4 | every generation's views in memory, by their size; a generation commits early and turns over when its share is full |
//! | render caches | 1/32 | rendered answers kept per generation |
//! | unapplied views | 1/16 | committed records waiting for the materializer; past it a commit waits, and a commit's record is kept under it (the views changed since the last commit are committed early when they reach it) |
//! | the rest | 13/32 | sled's writes in flight, Wasm instances, a batch at work, source queues, the allocator's slack |
//!
//! The budget is what the runtime adds to what the process takes at all
//! (its code, the compiled plugins, the runtime's threads): the test of
//! it measures that on a tiny stream first. Under a budget, freed memory
//! goes back to the kernel at once instead of after 10 s (as fast, in the
//! measurements: a replay of 900 000 inbox events under 128 MiB peaked at
//! 241 MB resident against 279 MB keeping it 100 ms), and the
//! materializer writes batches of 512 views instead of 4096.
//!
//! Without a budget the defaults stand: 256 MiB of store cache, views by
//! count (`view_cache_entries`), 256 MiB of rendered answers per
//! generation, 500 000 unapplied views.

use super::*;

/// The memory budget, and each part's share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The whole budget, in bytes.
    pub total: u64,
}

/// Each part's use (and, with a budget, its bound), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Views in memory, every generation's, as estimated by their size.
    pub view_caches: u64,
    /// Rendered answers kept.
    pub render_caches: u64,
    /// Committed records waiting for the materializer.
    pub unapplied: u64,
}

/// The least budget taken, in MiB: below it the fixed parts alone would
/// not fit.
pub const MIN_MEMORY_MB: u64 = 64;

impl MemoryBudget {
    /// A budget of `mb` MiB.
    pub fn mb(mb: u64) -> Self {
        MemoryBudget { total: mb << 20 }
    }
    /// What sled's page cache takes in memory (a quarter of the budget).
    pub fn store(&self) -> u64 {
        self.total / 4
    }
    /// sled's `cache_capacity`: it counts cached pages by their size on
    /// disk and holds about four times that in memory.
    pub fn store_cache(&self) -> u64 {
        self.store() / 4
    }
    /// Every generation's views in memory together.
    pub fn view_caches(&self) -> u64 {
        self.total / 4
    }
    /// Every generation's rendered answers together.
    pub fn render_caches(&self) -> u64 {
        self.total / 32
    }
    /// Committed records waiting for the materializer.
    pub fn unapplied(&self) -> u64 {
        self.total / 16
    }
}

/// The size a cached view takes, estimated: its slot in the map, its key
/// past what is kept inline, the shared record and what it owns (state,
/// versions, the floor and the recent versions), and an eighth more for
/// the allocator's size classes.
pub(super) fn footprint(key: &str, record: &Option<Arc<ViewRecord>>) -> usize {
    // A slot (key, value) at the map's load factor, and its control byte.
    const SLOT: usize =
        (std::mem::size_of::<CompactString>() + std::mem::size_of::<usize>()) * 8 / 7 + 1;
    let key = if key.len() > 24 { key.len() } else { 0 };
    let record = record.as_ref().map_or(0, |r| {
        let per_version = std::mem::size_of::<(CompactString, u64)>();
        let view = &r.view;
        let versions =
            view.versions.0.capacity() + view.floor.0.capacity() + view.recent.0.capacity();
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<ViewRecord>()
            + view.state.as_ref().map_or(0, Vec::capacity)
            + versions * per_version
    });
    let owned = key + record;
    SLOT + owned + owned / 8
}

impl Engine {
    /// Bound the view caches, render caches and unapplied views by
    /// `budget` (sled's cache is sized when the store is opened:
    /// [`MemoryBudget::store_cache`]).
    pub fn set_memory_budget(&mut self, budget: MemoryBudget) {
        self.store
            .bound_memory(budget.unapplied().try_into().unwrap_or(usize::MAX));
        self.memory = Some(budget);
    }

    /// The memory budget, if one is set.
    pub fn memory_budget(&self) -> Option<MemoryBudget> {
        self.memory
    }

    /// What each bounded part holds now.
    pub fn memory_use(&self) -> MemoryUse {
        let mut out = MemoryUse {
            unapplied: self.store.materializer_stats().waiting_bytes,
            ..MemoryUse::default()
        };
        for p in self.all() {
            let views = p.views.read().recover();
            out.view_caches += (views.young_bytes + views.old_bytes) as u64;
            out.render_caches += p.rendered.read().recover().bytes as u64;
        }
        out
    }

    /// Per generation now: (views, bytes of views) a cache generation may
    /// hold before it turns over, and bytes of rendered answers kept.
    pub(super) fn cache_bounds(&self, generations: usize) -> CacheBounds {
        let n = generations.max(1) as u64;
        match self.memory {
            None => CacheBounds {
                entries: self.view_cache_entries,
                view_bytes: usize::MAX,
                render_bytes: projection::RENDER_CACHE_BYTES,
            },
            // Two cache generations per projection generation.
            Some(b) => CacheBounds {
                entries: usize::MAX,
                view_bytes: (b.view_caches() / n / 2) as usize,
                render_bytes: (b.render_caches() / n) as usize,
            },
        }
    }

    /// Whether the pending work is to be committed now, before its
    /// interval, to stay within the budget: when a generation's young
    /// views fill their share (the cache turns over only after a commit),
    /// or when the views changed since the last commit would make a
    /// record past the unapplied views' share (the record, its copy in
    /// the store's log and its views waiting for the materializer all
    /// take that much again).
    pub(super) fn caches_full(&self) -> bool {
        let Some(budget) = self.memory else {
            return false;
        };
        let all = self.all();
        let bounds = self.cache_bounds(all.len());
        let mut changed = 0;
        for p in &all {
            if p.views.read().recover().young_bytes > bounds.view_bytes {
                return true;
            }
            changed += p.dirty.lock().recover().bytes;
        }
        changed as u64 > budget.unapplied()
    }
}

/// What one generation's caches may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CacheBounds {
    /// Views per cache generation.
    pub(super) entries: usize,
    /// Bytes of views per cache generation.
    pub(super) view_bytes: usize,
    /// Bytes of rendered answers.
    pub(super) render_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_with_room_for_the_rest() {
        let b = MemoryBudget::mb(256);
        assert_eq!(b.total, 256 << 20);
        let parts = b.store() + b.view_caches() + b.render_caches() + b.unapplied();
        assert_eq!(parts, b.total / 32 * 19, "13/32 left for the rest");
        assert_eq!(b.store_cache(), b.total / 16);
    }

    #[test]
    fn a_views_footprint_grows_with_its_state_and_versions() {
        use projector_guest::rules::View;
        let small = Some(Arc::new(ViewRecord {
            view: View::from_snapshot(vec![0; 10], Default::default()),
            updated_ms: 0,
        }));
        let large = Some(Arc::new(ViewRecord {
            view: View::from_snapshot(vec![0; 1000], Default::default()),
            updated_ms: 0,
        }));
        let absent = footprint("k", &None);
        assert!(absent > 0 && absent < 100, "{absent}");
        let (s, l) = (footprint("k", &small), footprint("k", &large));
        assert!(l - s >= 990, "{s} {l}");
        let long_key = "k".repeat(100);
        assert!(footprint(&long_key, &small) >= s + 100);
    }

    #[test]
    fn a_view_cache_counts_its_size_and_turns_over_past_its_bytes() {
        use projector_guest::rules::View;
        let record = |n: usize| {
            Some(Arc::new(ViewRecord {
                view: View::from_snapshot(vec![0; n], Default::default()),
                updated_ms: 0,
            }))
        };
        let mut cache = projection::ViewCache::default();
        assert!(cache.put("a", record(100)).replaced.is_none());
        let one = cache.young_bytes;
        assert_eq!(one, footprint("a", &record(100)));
        // Replacing a view counts the new size, not both.
        assert!(cache.put("a", record(1000)).replaced.is_some());
        assert_eq!(cache.young_bytes, footprint("a", &record(1000)));
        cache.put("b", record(1000));
        let two = cache.young_bytes;
        // Within its bytes: kept; past them: the young turns old.
        assert!(cache.turn_over(usize::MAX, two).is_none());
        assert!(cache.turn_over(usize::MAX, two - 1).is_some());
        assert_eq!((cache.young_bytes, cache.old_bytes), (0, two));
        assert!(cache.get("a").is_some(), "the old generation still serves");
        cache.remove("a");
        assert_eq!(cache.old_bytes, two - footprint("a", &record(1000)));
        assert!(cache.get("a").is_none());
    }
}
