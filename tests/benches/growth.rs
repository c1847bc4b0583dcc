//! Cost as the data grows: the inbox plugin alone, eager, `projector
//! replay` (the release binary, a process of its own) from an empty store
//! over two streams from `gen-inbox`: 1M events (1 000 sites, 100 000
//! users) and four times that with four times the keys (4M, 4 000,
//! 400 000). Prints, for each, events/s (from the replay's own summary),
//! the cost per event against the first stream's, the peak RSS (the
//! process's `VmHWM`) and the store's size on disk; first with each
//! part's default bounds, then under a memory budget (`[engine]
//! memory_mb = BENCH_MEMORY_MB`, default 256), where it also replays a
//! tiny stream (1 000 events): what the process takes at all, which the
//! budget does not cover. `BENCH_SCALE` scales both
//! streams (default 1). Run with `./scripts/bench.sh growth`, which
//! builds the release binary first.

use projector_tests::{knob, plugins_dir, root};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes of the files under `dir`.
fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        total += match entry.metadata() {
            Ok(m) if m.is_dir() => size_on_disk(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        };
    }
    total
}

struct Run {
    events_per_s: f64,
    peak: u64,
    store: u64,
}

fn run(events: u64, sites: u64, users: u64, memory_mb: Option<u64>) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.ndjson");
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_gen-inbox"))
        .args([events, sites, users].map(|n| n.to_string()))
        .stdout(std::fs::File::create(&file)?)
        .status()?;
    anyhow::ensure!(status.success(), "gen-inbox: {status}");
    eprintln!("generated {events} events in {:.1?}", started.elapsed());
    plugins_dir(dir.path(), &["inbox-unread"]);
    let config = dir.path().join("projector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins\"\n\
             [engine]\ncompile_cache_dir = {:?}\n{}\
             [plugins.inbox-unread]\npopulation = \"eager\"\n",
            root().join("target/bench-compile-cache"),
            memory_mb.map_or(String::new(), |mb| format!("memory_mb = {mb}\n"))
        ),
    )?;
    let binary = root().join("target/release/projector");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: ./scripts/bench.sh growth builds it",
        binary.display()
    );
    let mut child = Command::new(binary)
        .current_dir(dir.path())
        .args(["--config", "projector.toml", "replay", "events.ndjson"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let summary = std::thread::spawn(move || -> Vec<String> {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect()
    });
    // Its peak, read until it exits (the kernel keeps the high-water mark).
    let mut peak = 0;
    loop {
        if let Some(p) = projector_common::resident::peak_resident_bytes(pid) {
            peak = peak.max(p);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = summary.join().expect("the reader");
    let line = lines
        .iter()
        .find(|l| l.contains("events/s"))
        .ok_or_else(|| anyhow::anyhow!("no summary from the replay: {lines:?}"))?;
    let events_per_s: f64 = line
        .rsplit(", ")
        .next()
        .and_then(|s| s.trim_end_matches(" events/s").parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no events/s in {line:?}"))?;
    let store = size_on_disk(&dir.path().join("data"));
    println!(
        "{events:>8} events, {sites:>5} sites, {users:>7} users: {events_per_s:>8.0} events/s, peak RSS {:>5.0} MiB, store {:>5.0} MiB on disk",
        peak as f64 / f64::from(1 << 20),
        store as f64 / f64::from(1 << 20)
    );
    Ok(Run {
        events_per_s,
        peak,
        store,
    })
}

fn main() -> anyhow::Result<()> {
    let scale = knob("BENCH_SCALE", 1);
    let budget = knob("BENCH_MEMORY_MB", 256);
    println!("growth: the inbox plugin alone, eager, `projector replay` from an empty store");
    for memory_mb in [None, Some(budget)] {
        match memory_mb {
            None => println!("each part's default bounds:"),
            Some(mb) => println!("under a memory budget of {mb} MiB ([engine] memory_mb):"),
        }
        let small = run(1_000_000 * scale, 1_000 * scale, 100_000 * scale, memory_mb)?;
        let large = run(4_000_000 * scale, 4_000 * scale, 400_000 * scale, memory_mb)?;
        println!(
            "  4× the events and keys: cost per event {:.2}× (target ≤ 1.15×), peak RSS {:.2}×, store {:.2}×",
            small.events_per_s / large.events_per_s,
            large.peak as f64 / small.peak.max(1) as f64,
            large.store as f64 / small.store.max(1) as f64
        );
        if let Some(mb) = memory_mb {
            // What the process takes at all (its code, the compiled plugin,
            // the runtime's threads): the same replay of a tiny stream. The
            // budget bounds what the runtime adds to it.
            let tiny = run(1_000, 10, 100, memory_mb)?;
            let budget = (mb << 20) as f64;
            let added = |r: &Run| r.peak.saturating_sub(tiny.peak) as f64 / budget;
            println!(
                "  peak RSS ÷ budget: {:.2} and {:.2} (the process's code and threads included); \
                 what the runtime added (past the tiny stream's {:.0} MiB) ÷ budget: {:.2} and {:.2}",
                small.peak as f64 / budget,
                large.peak as f64 / budget,
                tiny.peak as f64 / f64::from(1 << 20),
                added(&small),
                added(&large)
            );
        }
    }
    Ok(())
}
