//! Commits: everything applied in memory goes to the store in one atomic
//! batch, at most every commit interval.

use super::*;
use projector_common::sync::Recover;

/// What store commits have cost since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitStats {
    /// Atomic batches written to the store.
    pub commits: u64,
    /// Views put or removed.
    pub views: u64,
    /// Time the commits took on the processing thread: encoding the
    /// changed views and the store's atomic batch.
    pub seconds: f64,
}

impl Engine {
    /// Commit everything applied so far: views, offsets, counters and dead
    /// letters, in one atomic batch.
    pub fn commit(&self) -> Result<()> {
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)
    }

    pub(super) fn commit_locked(&self, pending: &mut Pending) -> Result<()> {
        pending.healthy()?;
        let Some(mut writer) = pending.writer.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let projections = self.all();
        let changelog = self.changelog();
        let mut views_written = 0;
        for p in &projections {
            let dirty = p.dirty.lock().recover().take();
            let views = p.views.read().recover();
            views_written += dirty.len() as u64;
            if let (Some(c), false) = (&changelog, p.is_shadow() || p.is_building()) {
                if let Err(e) = self.spool_changes(&**c, pending, &mut writer, p, &dirty, &views) {
                    pending.failed = Some(e.to_string());
                    return Err(e);
                }
            }
            if let Err(e) = self.keep_history(&mut writer, pending, p, &dirty, &views) {
                pending.failed = Some(e.to_string());
                return Err(e);
            }
            for key in dirty {
                match views.get(&key) {
                    Some(Some(record)) => writer.put_view(&p.ns, &key, record),
                    Some(None) => writer.remove_view(&p.ns, &key),
                    None => unreachable!("a dirty key stays in the view cache until committed"),
                }
            }
        }
        if let Err(e) = self.store.commit(writer) {
            pending.failed = Some(e.to_string());
            return Err(e.into());
        }
        {
            let mut c = self.commits.lock().recover();
            c.commits += 1;
            c.views += views_written;
            c.seconds += started.elapsed().as_secs_f64();
        }
        pending.since = None;
        let bounds = self.cache_bounds(projections.len());
        for p in &projections {
            let dropped = p
                .views
                .write()
                .recover()
                .turn_over(bounds.entries, bounds.view_bytes);
            if p.rendered.read().recover().limit != bounds.render_bytes {
                p.rendered.write().recover().limit = bounds.render_bytes;
            }
            drop(dropped);
        }
        Ok(())
    }

    /// Commit if the oldest pending work is a commit interval old (at
    /// once with a zero interval); whether it did.
    ///
    /// The commit runs on the processing thread, and is cheap there: the
    /// views go to the store as one record, which the store's materializer
    /// applies to their keys off this thread.
    pub(super) fn commit_due(&self, pending: &mut Pending) -> Result<bool> {
        let since = *pending.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.commit_interval {
            self.commit_locked(pending)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// How often pending work is committed, at most.
    pub fn commit_interval(&self) -> Duration {
        self.commit_interval
    }

    /// What store commits have cost since start.
    pub fn commit_stats(&self) -> CommitStats {
        *self.commits.lock().recover()
    }
}
