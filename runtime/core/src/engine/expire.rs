//! Views with a time to live ([`Policy::ttl_ms`]): an expired view reads
//! as absent at once, and a sweep deletes expired views in bounded pages.
//!
//! A view's age counts from its `updated_ms`: the time of the last event
//! applied to it, or of its snapshot. That is event time, so a rebuild
//! from the log expires what the live path expired. A view whose events
//! carry no time (0) never expires. A read judges expiry at its read
//! time; the fold at the time of a key's first event in the batch, so an
//! event that comes after its view expired starts a new view.

use super::*;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;

/// How long a projection's views live, where the sweep is, and what
/// expired since start.
pub(super) struct Expiry {
    ttl_ms: Option<i64>,
    /// The last key the sweep looked at (`None`: start over).
    cursor: Mutex<Option<String>>,
    reads: AtomicU64,
    swept: AtomicU64,
}

impl Expiry {
    pub(super) fn new(ttl_ms: Option<u64>) -> Self {
        Expiry {
            ttl_ms: ttl_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            cursor: Mutex::default(),
            reads: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        }
    }

    /// Whether `record` had expired at `at_ms`.
    pub(super) fn is_expired(&self, record: &ViewRecord, at_ms: i64) -> bool {
        self.ttl_ms.is_some_and(|ttl| {
            record.updated_ms > 0 && at_ms.saturating_sub(record.updated_ms) >= ttl
        })
    }

    /// Count a read that found its view expired.
    pub(super) fn expired_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
}

impl Projection {
    /// How long its views live after their last event, in ms (`None`: for ever).
    pub fn ttl_ms(&self) -> Option<u64> {
        self.expiry.ttl_ms.map(|t| t as u64)
    }

    /// Reads since start that found their view expired (answered as absent).
    pub fn expired_reads(&self) -> u64 {
        self.expiry.reads.load(Ordering::Relaxed)
    }

    /// Expired views the sweep deleted since start.
    pub fn expired_swept(&self) -> u64 {
        self.expiry.swept.load(Ordering::Relaxed)
    }
}

/// What one step of the sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Expired views deleted.
    pub deleted: u64,
    /// Whether every generation's sweep has reached the end of its views
    /// (the next step starts a new pass).
    pub passed: bool,
}

impl Engine {
    /// One step of the sweep: in each generation whose views have a time
    /// to live, look at up to `page` stored views from where its last step
    /// stopped, and delete those expired at `now_ms` in one commit. The
    /// pipeline waits only for that commit.
    pub(crate) fn sweep_expired(&self, now_ms: i64, page: usize) -> Result<Sweep> {
        let page = page.max(1);
        let mut deleted = 0;
        let mut passed = true;
        for p in self.all() {
            if p.expiry.ttl_ms.is_none() {
                continue;
            }
            let after = p.expiry.cursor.lock().recover().clone();
            let views = self.store.views_page(&p.ns, after.as_deref(), page)?;
            let next = match views.last() {
                Some((key, _)) if views.len() == page => Some(key.clone()),
                _ => None,
            };
            passed &= next.is_none();
            *p.expiry.cursor.lock().recover() = next;
            let expired: Vec<String> = views
                .into_iter()
                .filter(|(_, r)| p.expiry.is_expired(r, now_ms))
                .map(|(k, _)| k)
                .collect();
            if expired.is_empty() {
                continue;
            }
            let mut pending = self.write.lock().recover();
            let mut n = 0;
            for key in &expired {
                // Checked again under the write lock: a batch may have
                // renewed the view since the page was read.
                if p.view(&self.store, key)?
                    .is_some_and(|r| p.expiry.is_expired(&r, now_ms))
                {
                    p.set_view(key, None);
                    n += 1;
                }
            }
            if n > 0 {
                pending.writer.get_or_insert_with(|| self.store.writer());
                self.commit_locked(&mut pending)?;
                p.expiry.swept.fetch_add(n, Ordering::Relaxed);
                deleted += n;
            }
        }
        Ok(Sweep { deleted, passed })
    }
}

/// How the background sweep is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepPace {
    /// Pause between two passes over every view.
    pub every: Duration,
    /// Views looked at per step.
    pub page: usize,
    /// Pause between two steps of a pass, so the pipeline's batches run
    /// between them.
    pub between_steps: Duration,
}

/// Sweep expired views, and prune view histories to their bounds, on a
/// thread of their own until `stop`: a pass over every view with a time
/// to live, and every history, each `pace.every`, a page at a time.
pub fn spawn_sweep(
    engine: Arc<Engine>,
    pace: SweepPace,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("projector-sweep".into())
        .spawn(move || {
            let mut wait = pace.every;
            while !stop.wait(wait) {
                let expired = match engine.sweep_expired(now_ms(), pace.page) {
                    Ok(Sweep { passed, .. }) => passed,
                    Err(e) => {
                        tracing::warn!("sweep of expired views: {e}");
                        true
                    }
                };
                // The views' histories, pruned to their bounds alike.
                let pruned = match engine.sweep_history(now_ms(), pace.page) {
                    Ok(p) => p.passed,
                    Err(e) => {
                        tracing::warn!("sweep of view histories: {e}");
                        true
                    }
                };
                // Fetched answers recorded past their age, alike.
                let records = match engine.prune_fetch_records(now_ms(), pace.page) {
                    Ok(passed) => passed,
                    Err(e) => {
                        tracing::warn!("sweep of recorded fetches: {e}");
                        true
                    }
                };
                wait = match expired && pruned && records {
                    true => pace.every,
                    false => pace.between_steps,
                };
            }
        })
}
