//! What the store's close tests share.

use std::time::Duration;

/// Run `step` on this thread, and abort the whole test process, saying
/// which step, if it has not finished within `limit`: a hang fails the
/// test instead of blocking it forever (a thread stuck in sled cannot be
/// interrupted, and a panic on another thread would not fail the test).
pub fn within<T>(what: &str, limit: Duration, step: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            eprintln!("HANG: {what} did not finish within {limit:?}");
            std::process::abort();
        }
    });
    let out = step();
    drop(done);
    watchdog.join().expect("the watchdog ends");
    out
}
