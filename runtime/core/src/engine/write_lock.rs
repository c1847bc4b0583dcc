//! The engine's write lock, with builds last: whoever takes it (a live
//! batch, a commit, a retry, a read that populates a view) goes before a
//! generation being built, which takes it only once nobody waits. A build
//! then holds the others up by one call at most, however it loops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LockResult, Mutex, MutexGuard};
use std::time::Duration;

pub(super) struct WriteLock<T> {
    inner: Mutex<T>,
    /// Takers waiting for it now, builds aside.
    waiting: AtomicUsize,
}

impl<T> WriteLock<T> {
    pub(super) fn new(value: T) -> Self {
        WriteLock {
            inner: Mutex::new(value),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Take it; a build waiting for it lets this go first.
    pub(super) fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.inner.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Take it once nobody else waits for it (a build's step).
    pub(super) fn lock_last(&self) -> LockResult<MutexGuard<'_, T>> {
        while self.waiting.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A build that frees the lock and takes it again at once lets a
    /// taker waiting meanwhile go first.
    #[test]
    fn a_waiting_taker_goes_before_a_build_taking_it_again() {
        for _ in 0..20 {
            let lock = Arc::new(WriteLock::new(Vec::new()));
            let step = lock.lock_last().expect("lock");
            let taker = {
                let lock = lock.clone();
                std::thread::spawn(move || lock.lock().expect("lock").push("taker"))
            };
            while lock.waiting.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            drop(step);
            lock.lock_last().expect("lock").push("build");
            taker.join().expect("taker");
            assert_eq!(*lock.lock().expect("lock"), ["taker", "build"]);
        }
    }
}
