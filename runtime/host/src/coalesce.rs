//! Identical fetches in flight at once go to the service once: the first
//! asks, the others wait for its answer and share it (a singleflight per
//! service and path). A plugin asking for a fresh answer does not join.

use projector_common::sync::Recover;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// One request in flight, and its answer once it came.
struct Flight<T> {
    answer: Mutex<Option<T>>,
    came: Condvar,
}

/// Requests in flight by key.
pub(crate) struct Coalesce<T> {
    flights: Mutex<HashMap<String, Arc<Flight<T>>>>,
}

impl<T> Default for Coalesce<T> {
    fn default() -> Self {
        Coalesce {
            flights: Mutex::default(),
        }
    }
}

impl<T: Clone> Coalesce<T> {
    /// The answer for `key`: from the request in flight for it when there
    /// is one (`true`: shared), else from `ask`, shared with whoever asks
    /// meanwhile.
    pub(crate) fn run(&self, key: &str, ask: impl FnOnce() -> T) -> (T, bool) {
        let (flight, leader) = {
            let mut flights = self.flights.lock().recover();
            match flights.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        answer: Mutex::new(None),
                        came: Condvar::new(),
                    });
                    flights.insert(key.to_string(), f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            let answer = ask();
            *flight.answer.lock().recover() = Some(answer.clone());
            self.flights.lock().recover().remove(key);
            flight.came.notify_all();
            return (answer, false);
        }
        let mut answer = flight.answer.lock().recover();
        while answer.is_none() {
            answer = flight.came.wait(answer).recover();
        }
        (
            answer.clone().expect("set before the leader notified"),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn identical_requests_in_flight_are_asked_once() {
        let c: Arc<Coalesce<u32>> = Arc::default();
        let asked = Arc::new(AtomicU32::new(0));
        let shared = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (c, asked, shared) = (c.clone(), asked.clone(), shared.clone());
                s.spawn(move || {
                    let (answer, joined) = c.run("/a/1", || {
                        asked.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                        7
                    });
                    assert_eq!(answer, 7);
                    shared.fetch_add(u32::from(joined), Ordering::Relaxed);
                });
            }
        });
        let asked = asked.load(Ordering::Relaxed);
        assert!(asked < 8, "asked {asked} times");
        assert_eq!(asked + shared.load(Ordering::Relaxed), 8);
        // Once answered, the next asks again.
        assert_eq!(c.run("/a/1", || 9), (9, false));
    }
}
