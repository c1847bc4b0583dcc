//! One stop signal for every thread the runtime starts.
//!
//! A [`Shutdown`] is cloned into each thread; the thread polls
//! [`Shutdown::is_stopped`] between units of work, or sleeps with
//! [`Shutdown::wait`], which wakes at once when it is stopped. Whoever
//! started a thread keeps its handle and joins it after stopping, so no
//! thread outlives the runtime that started it.

use crate::sync::Recover;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A stop signal shared by clones.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Shutdown {
    /// A signal not stopped yet.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Ask every holder to stop; waiters wake at once.
    pub fn stop(&self) {
        let _held = self.0.lock.lock().recover();
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.changed.notify_all();
    }

    /// Whether [`Shutdown::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Relaxed)
    }

    /// Sleep up to `timeout`, less if stopped meanwhile; whether stopped.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut held = self.0.lock.lock().recover();
        while !self.is_stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            held = self.0.changed.wait_timeout(held, left).recover().0;
        }
        self.is_stopped()
    }

    /// Resolves once stopped (for async tasks; it looks every 20 ms).
    pub async fn stopped(&self) {
        while !self.is_stopped() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_stopped_or_at_its_timeout() {
        let s = Shutdown::new();
        let started = Instant::now();
        assert!(!s.wait(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let other = s.clone();
        let waiter = std::thread::spawn(move || other.wait(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        s.stop();
        assert!(waiter.join().expect("joined"), "woken by the stop");
        assert!(s.is_stopped());
    }
}
