//! The process's memory as the kernel counts it: resident now and at its
//! peak (`VmRSS`, `VmHWM` in `/proc/self/status`), for `/metrics` and for
//! the commands that report what a run took.

/// A field of `/proc/<pid>/status` given in kB, in bytes.
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes of this process resident in memory now (`None` where `/proc`
/// does not say).
pub fn resident_bytes() -> Option<u64> {
    status_kb("self", "VmRSS:")
}

/// The most bytes of process `pid` resident at once so far (`None` where
/// `/proc` does not say, or it is gone).
pub fn peak_resident_bytes(pid: u32) -> Option<u64> {
    status_kb(&pid.to_string(), "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_resident_and_its_peak_is_at_least_that() {
        let now = resident_bytes().expect("/proc/self/status");
        let peak = peak_resident_bytes(std::process::id()).expect("VmHWM");
        assert!(now > 1 << 20, "{now}");
        assert!(peak >= now / 2, "{peak} {now}");
        assert_eq!(peak_resident_bytes(u32::MAX), None);
    }
}
