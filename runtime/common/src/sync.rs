//! Locks that outlive a panic: the one place poisoning is handled.
//!
//! A thread that panics while holding a lock leaves it poisoned. Every
//! lock of the runtime guards state that stays consistent between
//! statements (caches, queues, counters), so the guard is taken back
//! rather than spreading the panic to every other thread.

use std::sync::{LockResult, PoisonError};

/// Take a lock's guard whether or not the lock is poisoned.
pub trait Recover<G> {
    /// The guard (or what a condition variable's wait gives back).
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_still_gives_its_guard() {
        let m = Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().recover();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.lock().recover() += 1;
        assert_eq!(*m.lock().recover(), 2);
    }
}
