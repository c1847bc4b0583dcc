//! Closing the database, in bounded time.
//!
//! sled 0.34.7 flushes when the last handle of a tree drops, and a flush
//! can wait forever: a write whose blob file cannot be created (a removed
//! data directory, no space, no file descriptor) fails after its
//! reservation took a writer slot in a log buffer, and never gives the
//! slot back (`Log::reserve_inner`, `pagecache/logger.rs` 315–369), so
//! the buffer is never written and `make_stable` waits for it on a
//! condition variable with no timeout (`pagecache/iobuf.rs` 997), holding
//! sled's process-wide concurrency lock (1012).
//!
//! So no flush of the store, and no drop of its database, is left to
//! wait on sled unbounded. [`Open`] is the one owner of a store's
//! closing, shared by every handle: the last to go stops the
//! materializer, flushes, then releases the database, the last two on a
//! helper thread, each step awaited at most [`FLUSH_BOUND`]. A flush that does
//! not finish by then is reported with what it was for, and the database
//! is left open until the process ends (its handle forgotten) rather than
//! dropped: its drop would wait forever. Every flush of the store goes
//! through the same bound ([`Open::flush`]).
//!
//! What stays durable: a commit is one atomic sled batch (views record,
//! offsets, counters, letters), durable once a flush or sled's own
//! flusher (every 200 ms) wrote it. A store reopened after a flush that
//! never finished recovers every commit written before the buffer that
//! never was, each whole, and its sources resume from the offsets stored
//! with them; nothing after it is recovered.
//!
//! Never called by the engine: [`super::Store`] closes through it.

use super::unapplied::Materializer;
use super::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the store waits for a flush, and for each step of its close
/// (the materializer's stop, the flush, the release), before it gives up
/// on it.
pub const FLUSH_BOUND: Duration = Duration::from_secs(30);

/// A store's database while open, and how it closes.
pub(super) struct Open {
    path: String,
    /// `None` once closed (released or forgotten).
    db: Option<sled::Db>,
    /// `None` until started, and after the store closed.
    materializer: Option<Materializer>,
    /// A flush did not finish: none will now, and the database is never
    /// dropped.
    wedged: AtomicBool,
}

impl Open {
    /// The database of the store in `dir`, its materializer not started.
    pub(super) fn new(dir: &Path, db: sled::Db) -> Self {
        Open {
            path: dir.display().to_string(),
            db: Some(db),
            materializer: None,
            wedged: AtomicBool::new(false),
        }
    }

    /// Hand over the started materializer: it is stopped on close.
    pub(super) fn started(&mut self, materializer: Materializer) {
        self.materializer = Some(materializer);
    }

    /// Make everything committed so far durable, within [`FLUSH_BOUND`];
    /// `what` says what the flush is for when it does not finish.
    pub(super) fn flush(&self, what: &str) -> Result<()> {
        self.flush_within(what, FLUSH_BOUND)
    }

    /// [`Open::flush`] within `bound`.
    pub(super) fn flush_within(&self, what: &str, bound: Duration) -> Result<()> {
        match &self.db {
            Some(db) => self.flush_db(db, what, bound),
            None => Err(self.unflushed(what, "the store is closed".into())),
        }
    }

    fn flush_db(&self, db: &sled::Db, what: &str, bound: Duration) -> Result<()> {
        if self.wedged.load(Ordering::SeqCst) {
            return Err(self.unflushed(what, "an earlier flush never finished".into()));
        }
        let db = db.clone();
        match within("projector-store-flush", bound, move || db.flush()) {
            Some(flushed) => {
                flushed?;
                Ok(())
            }
            None => {
                self.wedged.store(true, Ordering::SeqCst);
                let e = self.unflushed(
                    what,
                    format!("did not finish within {} ms", bound.as_millis()),
                );
                tracing::warn!("{e}");
                Err(e)
            }
        }
    }

    fn unflushed(&self, what: &str, reason: String) -> Error {
        Error::Unflushed {
            path: self.path.clone(),
            what: what.to_string(),
            reason,
        }
    }

    /// Close now, each step within `bound`: stop the materializer (what
    /// waits is applied first), flush, release the database. Whether
    /// everything committed is durable.
    pub(super) fn close(mut self, bound: Duration) -> Result<()> {
        self.close_within(bound)
    }

    fn close_within(&mut self, bound: Duration) -> Result<()> {
        let Some(db) = self.db.take() else {
            return Ok(());
        };
        if let Some(mut materializer) = self.materializer.take() {
            if !materializer.stop(Instant::now() + bound) {
                tracing::warn!(
                    "store at {}: the materializer did not stop within {} ms; the views it had not applied are applied when the store opens again",
                    self.path,
                    bound.as_millis()
                );
            }
        }
        let flushed = self.flush_db(&db, "closing", bound);
        if self.wedged.load(Ordering::SeqCst) {
            // Its drop would flush, and wait forever.
            std::mem::forget(db);
            return flushed;
        }
        // The last handle of the database: sled flushes every tree whose
        // last handle this is, until a flush finds nothing new.
        if within("projector-store-close", bound, move || drop(db)).is_none() {
            tracing::warn!(
                "store at {}: releasing the database did not finish within {} ms (a tree of it is still written to?); it finishes on its own thread",
                self.path,
                bound.as_millis()
            );
        }
        flushed
    }
}

impl Drop for Open {
    /// The last handle of the store is gone: close it.
    fn drop(&mut self) {
        match self.close_within(FLUSH_BOUND) {
            // Said when it did not finish.
            Ok(()) | Err(Error::Unflushed { .. }) => {}
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// Run `job` on a thread of its own and wait at most `bound` for it: its
/// result, or `None` when it did not finish (or could not start). A
/// thread that does not finish is left to finish by itself (joining it
/// could wait forever): the one thread of the store not joined.
fn within<T: Send + 'static>(
    name: &str,
    bound: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(job());
        });
    let thread = match thread {
        Ok(thread) => thread,
        Err(e) => {
            tracing::error!("store: cannot start a thread ({name}): {e}");
            return None;
        }
    };
    let done = rx.recv_timeout(bound).ok()?;
    // Sending was its last act.
    let _ = thread.join();
    Some(done)
}
