//! Each service's threads for fetching ahead: up to its `max_in_flight`,
//! started as work comes and kept while it keeps coming, so a batch does
//! not pay for starting threads (and their allocators' fresh pages); a
//! thread idle for [`IDLE`] ends.

use projector_common::sync::Recover;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a lane waits for work before it ends.
const IDLE: Duration = Duration::from_secs(30);

/// Work for a lane.
pub(super) type Task = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Inner {
    queue: VecDeque<Task>,
    started: usize,
    idle: usize,
}

/// One service's lanes.
pub(super) struct Lanes {
    max: usize,
    inner: Mutex<Inner>,
    came: Condvar,
}

impl Lanes {
    /// At most `max` threads.
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Lanes {
            max: max.max(1),
            inner: Mutex::default(),
            came: Condvar::new(),
        })
    }

    /// Run `task` on a lane: an idle one, a new one while fewer than `max`
    /// run, or the next to be free. An error when no lane runs and none
    /// could be started: then the caller must do the work itself (the
    /// task stays queued for a lane started later).
    pub(super) fn run(self: &Arc<Self>, task: Task) -> std::io::Result<()> {
        let mut inner = self.inner.lock().recover();
        inner.queue.push_back(task);
        if inner.idle >= inner.queue.len() || inner.started >= self.max {
            drop(inner);
            self.came.notify_one();
            return Ok(());
        }
        inner.started += 1;
        drop(inner);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("projector-prefetch".into())
            .spawn(move || me.serve());
        if let Err(e) = spawned {
            let mut inner = self.inner.lock().recover();
            inner.started -= 1;
            if inner.started == 0 {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Lanes running now.
    #[cfg(test)]
    fn started(&self) -> usize {
        self.inner.lock().recover().started
    }

    fn serve(&self) {
        let mut inner = self.inner.lock().recover();
        loop {
            if let Some(task) = inner.queue.pop_front() {
                drop(inner);
                task();
                inner = self.inner.lock().recover();
                continue;
            }
            inner.idle += 1;
            let (guard, waited) = self.came.wait_timeout(inner, IDLE).recover();
            inner = guard;
            inner.idle -= 1;
            if waited.timed_out() && inner.queue.is_empty() {
                inner.started -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn tasks_run_on_at_most_max_lanes_which_are_kept_between_batches() {
        let lanes = Lanes::new(3);
        let done = Arc::new(AtomicUsize::new(0));
        for round in 1..=2 {
            let (tx, rx) = mpsc::channel();
            for _ in 0..10 {
                let (done, tx) = (done.clone(), tx.clone());
                lanes
                    .run(Box::new(move || {
                        std::thread::sleep(Duration::from_millis(5));
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(std::thread::current().id());
                    }))
                    .expect("a lane");
            }
            let ids: std::collections::HashSet<_> = (0..10)
                .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("ran"))
                .collect();
            assert!(ids.len() <= 3, "round {round}: {} threads", ids.len());
            assert_eq!(done.load(Ordering::Relaxed), 10 * round);
            assert!(lanes.started() <= 3);
        }
    }
}
