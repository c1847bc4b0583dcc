//! Per-thread CPU accounting of the peer bench over a phase: the measured
//! process (its busiest threads, from `/proc/…/task/*/schedstat`), the
//! broker, and the rest of the machine (`/proc/stat`). Linux only; what
//! `/proc` does not tell counts as zero. It only reads and reports.

use std::collections::BTreeMap;

/// CPU time of a process (per thread) and of the broker over a phase.
pub(crate) struct Cpu {
    pub(crate) broker: Option<u32>,
    pub(crate) process: f64,
    pub(crate) threads: BTreeMap<String, (f64, f64)>,
    pub(crate) broker_s: f64,
    pub(crate) machine: f64,
}

impl Cpu {
    /// From now on, for the running process `pid`.
    pub(crate) fn start(pid: u32, broker: Option<u32>) -> Cpu {
        Cpu {
            broker,
            process: cpu_seconds(&format!("/proc/{pid}/stat")),
            threads: thread_seconds(pid),
            broker_s: broker.map_or(0.0, |b| cpu_seconds(&format!("/proc/{b}/stat"))),
            machine: machine_seconds(),
        }
    }

    /// From now on, for a process about to start: all of its time counts.
    pub(crate) fn before_start(broker: Option<u32>) -> Cpu {
        Cpu {
            broker,
            process: 0.0,
            threads: BTreeMap::new(),
            broker_s: broker.map_or(0.0, |b| cpu_seconds(&format!("/proc/{b}/stat"))),
            machine: machine_seconds(),
        }
    }

    /// One line: the CPU seconds of `pid` (the process it started with)
    /// and its busiest threads, the broker's, over `wall` seconds.
    pub(crate) fn report(&self, pid: u32, wall: f64) -> String {
        let process = cpu_seconds(&format!("/proc/{pid}/stat")) - self.process;
        let mut threads: Vec<(String, f64, f64)> = thread_seconds(pid)
            .into_iter()
            .map(|(name, (on, waiting))| {
                let before = self.threads.get(&name).copied().unwrap_or_default();
                (name, on - before.0, waiting - before.1)
            })
            .filter(|(_, on, _)| *on >= 0.05)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = threads
            .iter()
            .take(6)
            .map(|(name, on, waiting)| format!("{name} {on:.1}+{waiting:.1}"))
            .collect();
        let broker = self.broker.map_or(0.0, |b| {
            cpu_seconds(&format!("/proc/{b}/stat")) - self.broker_s
        });
        let rest = machine_seconds() - self.machine - process - broker;
        let cores = |s: f64| s / wall.max(1e-9);
        format!(
            "CPU over {wall:.1} s: process {process:.1} s ({:.2} cores; busiest threads, s on a core + \
             s waiting for one: {}); \
             broker {broker:.1} s ({:.2} cores); the rest of the machine {rest:.1} s ({:.2} cores)",
            cores(process),
            top.join(", "),
            cores(broker),
            cores(rest)
        )
    }
}

/// Busy CPU seconds of the whole machine, every core (`/proc/stat`).
pub(crate) fn machine_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy as f64 / 100.0
}

/// User + system CPU seconds of a `/proc/…/stat` file (0 when unreadable).
pub(crate) fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Per thread name of `pid`: seconds on a core and seconds runnable but
/// waiting for one (`/proc/…/task/*/schedstat`). The main thread is
/// `main`; a trailing number is folded to `#`, so a pool's threads add up.
pub(crate) fn thread_seconds(pid: u32) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let name = if task.file_name().to_string_lossy() == pid.to_string() {
            "main".to_string()
        } else {
            match comm.trim_end_matches(|c: char| c.is_ascii_digit()) {
                short if short.len() < comm.len() => format!("{short}#"),
                _ => comm.to_string(),
            }
        };
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns: Vec<f64> = sched
            .split_whitespace()
            .filter_map(|f| f.parse::<f64>().ok())
            .collect();
        let e: &mut (f64, f64) = out.entry(name).or_default();
        e.0 += ns.first().copied().unwrap_or(0.0) / 1e9;
        e.1 += ns.get(1).copied().unwrap_or(0.0) / 1e9;
    }
    out
}
