//! A loaded projection and its caches: views in memory (two generations)
//! and rendered answers.

use super::*;
use projector_common::sync::Recover;

/// A loaded projection: its code and where its views live.
pub struct Projection {
    pub(super) code: SharedCode,
    /// Namespace of its views, offsets and counters.
    pub(super) ns: String,
    pub(super) population: Population,
    pub(super) counters: Mutex<Counters>,
    /// Views as the engine last wrote them, ahead of the store until the
    /// next commit (`None`: known absent), and kept after it as a cache.
    pub(super) views: Arc<RwLock<ViewCache>>,
    /// Keys changed since the last commit.
    pub(super) dirty: Arc<Mutex<Dirty>>,
    /// Rendered answers, when the plugin's render ignores the read time.
    pub(super) rendered: RwLock<RenderCache>,
    /// Events queued for a delayed retry since start.
    pub(super) retried: AtomicU64,
    /// A generation that does not serve reads (being built, or kept
    /// beside the active one).
    pub(super) shadow: AtomicBool,
    /// Being rebuilt from the log, not yet fed by live batches.
    pub(super) building: AtomicBool,
    /// Taken off the live path because it lacks records of a partition
    /// (one that moved here while it was being built): to be caught up
    /// from the source again. See [`Projection::take_behind`].
    pub(super) behind: AtomicBool,
    /// How its transient failures are retried.
    pub(super) retry: RetryConfig,
    /// Pauses it when most of what it sees fails (kept across a replace).
    pub(super) breaker: Arc<Breaker>,
    /// Deliveries it failed since start (retried or dead-lettered), and
    /// the last failure's message: what the breaker counts.
    pub(super) failures: AtomicU64,
    pub(super) last_failure: Mutex<String>,
    /// How long its views live, and what expired (kept across a replace).
    pub(super) expiry: Arc<Expiry>,
    /// The history kept of its views.
    pub(super) keeping: Arc<super::Keeping>,
}

/// The keys of a projection changed since the last commit, and the
/// estimated size of their views ([`super::memory::footprint`]): what the
/// next commit writes, which a memory budget bounds.
#[derive(Default)]
pub(super) struct Dirty {
    pub(super) keys: FxHashSet<CompactString>,
    pub(super) bytes: usize,
}

impl Dirty {
    /// Take the keys for a commit; nothing is dirty after it.
    pub(super) fn take(&mut self) -> Vec<CompactString> {
        self.bytes = 0;
        self.keys.drain().collect()
    }
}

/// Rendered answers by key, each with the state it was rendered from: an
/// entry serves a read only while the view still holds that state, so a
/// view change (or a render racing one) can never serve a stale answer.
pub(super) struct RenderCache {
    pub(super) entries: FxHashMap<String, (Vec<u8>, Arc<RawValue>)>,
    pub(super) bytes: usize,
    /// Bytes kept at most; the cache starts over when full.
    pub(super) limit: usize,
}

impl Default for RenderCache {
    fn default() -> Self {
        RenderCache {
            entries: FxHashMap::default(),
            bytes: 0,
            limit: RENDER_CACHE_BYTES,
        }
    }
}

/// Bytes of rendered answers (and their states) kept per projection; the
/// cache starts over when full.
pub(super) const RENDER_CACHE_BYTES: usize = 256 << 20;

/// Views kept per generation of a projection's view cache by default, at
/// most (the views changed since the last commit are kept whatever their
/// number); `[engine] view_cache_entries`.
pub const VIEW_CACHE_ENTRIES: usize = 200_000;

/// A projection's views in memory, in two generations: `young` takes every
/// view the engine writes; once it is past its size (by default
/// [`VIEW_CACHE_ENTRIES`]) after a
/// commit (so nothing in it is dirty), it becomes `old` and the previous
/// `old` is dropped. A lookup tries `young`, then `old`, so the views in
/// use survive a turnover instead of all being read back from the store.
///
/// Keys are `CompactString`s: a view key of up to 24 bytes is kept inline,
/// so caching a view and marking it dirty allocate nothing for its key.
#[derive(Default)]
pub(super) struct ViewCache {
    young: ViewMap,
    old: ViewMap,
    /// Each generation's size, estimated ([`super::memory::footprint`]).
    pub(super) young_bytes: usize,
    pub(super) old_bytes: usize,
}

/// What [`ViewCache::put`] did: the view it replaced in the young
/// generation (`None`: there was none), and the estimated sizes of the
/// view put and of the one replaced (0 without one).
pub(super) struct Put {
    pub(super) replaced: Option<Option<Arc<ViewRecord>>>,
    pub(super) size: usize,
    pub(super) replaced_size: usize,
}

/// One generation of a view cache (`None`: known absent). Views are
/// shared: a fold or a read takes one without copying its state.
pub(super) type ViewMap = FxHashMap<CompactString, Option<Arc<ViewRecord>>>;

impl ViewCache {
    pub(super) fn get(&self, key: &str) -> Option<&Option<Arc<ViewRecord>>> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Put `record` as the view of `key` in the young generation: the
    /// view it replaces there, if any, and both sizes.
    pub(super) fn put(&mut self, key: &str, record: Option<Arc<ViewRecord>>) -> Put {
        let size = super::memory::footprint(key, &record);
        self.young_bytes += size;
        let replaced = match self.young.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, record)),
            None => {
                self.young.insert(key.into(), record);
                None
            }
        };
        let replaced_size = replaced
            .as_ref()
            .map_or(0, |r| super::memory::footprint(key, r));
        self.young_bytes = self.young_bytes.saturating_sub(replaced_size);
        Put {
            replaced,
            size,
            replaced_size,
        }
    }

    /// Forget `key` in both generations.
    pub(super) fn remove(&mut self, key: &str) {
        if let Some(r) = self.young.remove(key) {
            let size = super::memory::footprint(key, &r);
            self.young_bytes = self.young_bytes.saturating_sub(size);
        }
        if let Some(r) = self.old.remove(key) {
            let size = super::memory::footprint(key, &r);
            self.old_bytes = self.old_bytes.saturating_sub(size);
        }
    }

    /// Start a new generation if `young` holds more than `entries` views
    /// or `bytes`; only after a commit. Returns the generation dropped,
    /// for the caller to free once it no longer holds the cache's lock
    /// (freeing 200k views takes a while, and reads wait for the lock).
    /// The new generation starts at the size of the last, so it does not
    /// grow by rehashing.
    #[must_use]
    pub(super) fn turn_over(&mut self, entries: usize, bytes: usize) -> Option<ViewMap> {
        if self.young.len() <= entries && self.young_bytes <= bytes {
            return None;
        }
        let fresh = ViewMap::with_capacity_and_hasher(self.young.len(), Default::default());
        let young = std::mem::replace(&mut self.young, fresh);
        self.old_bytes = std::mem::take(&mut self.young_bytes);
        Some(std::mem::replace(&mut self.old, young))
    }
}

impl Projection {
    /// Its breaker: `closed`, `open` (with why and when the next probe
    /// is) or `catching-up`.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Times its breaker opened since start.
    pub fn breaker_opened(&self) -> u64 {
        self.breaker.opened()
    }

    /// Count a failed delivery (retried or dead-lettered).
    pub(super) fn failed(&self, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().recover() = error.to_string();
    }

    /// The current view of `key`: in memory if changed or read lately,
    /// else from the store.
    pub(super) fn view(&self, store: &Store, key: &str) -> Result<Option<Arc<ViewRecord>>> {
        if let Some(v) = self.views.read().recover().get(key) {
            return Ok(v.clone());
        }
        Ok(store.view(&self.ns, key)?.map(Arc::new))
    }

    /// Make `record` the current view of `key`, to be written at the next
    /// commit.
    pub(super) fn set_view(&self, key: &str, record: Option<ViewRecord>) {
        let record = record.map(Arc::new);
        let Put {
            replaced,
            size,
            replaced_size,
        } = self.views.write().recover().put(key, record);
        let mut dirty = self.dirty.lock().recover();
        if !dirty.keys.contains(key) {
            dirty.keys.insert(key.into());
            dirty.bytes += size;
        } else {
            // Dirty, so in the young generation: it replaced its last size.
            dirty.bytes = (dirty.bytes + size).saturating_sub(replaced_size);
        }
        drop(dirty);
        // The view replaced is freed once no lock is held.
        drop(replaced);
    }

    /// The plugin's answer for `state`, from the render cache when the
    /// plugin allows it. The answer is checked (size, JSON) before use.
    pub(super) fn render(&self, key: &str, state: &[u8], now_ms: i64) -> Result<Arc<RawValue>> {
        let cacheable = !self.code.info().render_uses_time;
        if cacheable {
            let cache = self.rendered.read().recover();
            if let Some((from, answer)) = cache.entries.get(key) {
                if from.as_slice() == state {
                    return Ok(answer.clone());
                }
            }
        }
        let answer = self.render_uncached(key, state, now_ms)?;
        if cacheable {
            let mut cache = self.rendered.write().recover();
            let size = key.len() + state.len() + answer.get().len();
            if cache.bytes + size > cache.limit {
                let limit = cache.limit;
                *cache = RenderCache {
                    limit,
                    ..RenderCache::default()
                };
            }
            cache.bytes += size;
            if let Some((old, a)) = cache
                .entries
                .insert(key.to_string(), (state.to_vec(), answer.clone()))
            {
                cache.bytes -= key.len() + old.len() + a.get().len();
            }
        }
        Ok(answer)
    }

    /// The plugin's answer for `state`, checked, rendered now and not
    /// cached (a state of the past).
    pub(super) fn render_uncached(
        &self,
        key: &str,
        state: &[u8],
        now_ms: i64,
    ) -> Result<Arc<RawValue>> {
        let plugin = self.code.name();
        let text = self
            .code
            .session()
            .render(key, state, now_ms)?
            .map_err(|e| Error::Guest {
                plugin: plugin.into(),
                message: format!("render: {e}"),
            })?;
        let limit = self.code.limits().max_render_bytes;
        if text.len() > limit {
            return Err(plugin::Error::BadOutput {
                plugin: plugin.into(),
                message: format!(
                    "render gave {} bytes, over the {limit}-byte limit",
                    text.len()
                ),
            }
            .into());
        }
        Ok(RawValue::from_string(text)
            .map_err(|e| plugin::Error::BadOutput {
                plugin: plugin.into(),
                message: format!("render gave invalid JSON: {e}"),
            })?
            .into())
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.code.name()
    }
    /// The plugin code this generation runs.
    pub fn code(&self) -> &SharedCode {
        &self.code
    }
    /// How events for a key with no view are treated; config may override the plugin's choice.
    pub fn population(&self) -> Population {
        self.population
    }
    /// Event counts so far, including those applied but not yet committed.
    pub fn counters(&self) -> Counters {
        *self.counters.lock().recover()
    }
    /// Where its views, offsets and counters live.
    pub fn ns(&self) -> &str {
        &self.ns
    }
    /// Whether this generation is kept beside the active one instead of serving reads.
    pub(crate) fn is_shadow(&self) -> bool {
        self.shadow.load(Ordering::Relaxed)
    }
    /// Whether this generation is still being rebuilt from the log, not yet fed live batches.
    pub fn is_building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }
    /// Whether this generation was taken off the live path for lacking
    /// records (it is building again, from its own offsets); clears the
    /// mark, so one caller catches it up.
    pub fn take_behind(&self) -> bool {
        self.behind.swap(false, Ordering::Relaxed)
    }
    /// Events queued for a delayed retry since start.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
}
