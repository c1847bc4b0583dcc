//! Scheduling priority of the processing threads: on a machine with few
//! cores, the threads that fold events can yield the CPU to the threads
//! that serve reads (`[engine] processing_nice`): a read then waits less
//! behind a batch, and the fold takes what the reads leave.

/// Lower the calling thread's priority to `nice` (0 to 19; Linux keeps a
/// nice value per thread, and threads it starts inherit it).
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, nice.clamp(0, 19))
        .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))
}

/// The calling thread's nice value.
pub fn this_thread() -> i32 {
    rustix::process::getpriority_process(None).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_its_children_inherit_it() {
        let mine = this_thread();
        std::thread::spawn(|| {
            let before = this_thread();
            lower_this_thread(before.max(5)).expect("lowering is allowed");
            assert_eq!(this_thread(), before.max(5));
            let child = std::thread::spawn(this_thread).join().expect("child");
            assert_eq!(child, before.max(5), "inherited");
        })
        .join()
        .expect("thread");
        // The test's own thread is untouched.
        assert_eq!(this_thread(), mine);
    }
}
