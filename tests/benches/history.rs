//! What a view history costs: the inbox stream (`BENCH_EVENTS`, default
//! 1 000 000) through the Wasm inbox plugin, embedded log → plugin → sled,
//! once with `history` off and once with `history = { versions = 50, ms =
//! 7 days }`, in one run. Prints events/s and the commits' time per view
//! for each, the entries kept and their bytes, the store's size on disk
//! (write amplification: the history's bytes per event, and the store's
//! growth), and the latency of `as_of` reads (the engine's, in process) of
//! random views at random times of the run. `BENCH_ONLY=off|on` runs one
//! side (for profiling). Run with `./scripts/bench.sh history`.

use projector_common::shutdown::Shutdown;
use projector_core::engine::{AsOf, Engine, HistoryBounds, Policy};
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_guest::Population;
use projector_host::wasm::WasmHost;
use projector_host::{Limits, SharedCode};
use projector_sources::run::run_log;
use projector_tests::{filled_log, inbox_events, knob, plugin_wasm, InboxShape};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes of the files under `dir`.
fn size_on_disk(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += match entry.metadata() {
            Ok(m) if m.is_dir() => size_on_disk(&path),
            Ok(m) => m.len(),
            Err(_) => 0,
        };
    }
    total
}

struct Run {
    events_per_s: f64,
    commit_us_per_view: f64,
    disk: u64,
}

fn run(
    label: &str,
    code: SharedCode,
    events: &[String],
    history: Option<HistoryBounds>,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let log = Arc::new(filled_log(&store, 4, events)?);
    store.flush()?;
    let log_bytes = size_on_disk(dir.path());
    let mut engine = Engine::new(
        store,
        Format::Auto,
        1,
        Duration::from_millis(knob("BENCH_COMMIT_MS", 1000)),
    );
    let mut policy = engine.policy("inbox-unread");
    policy.history = history;
    engine.set_policy("inbox-unread", Policy { ..policy });
    let engine = Arc::new(engine);
    engine.add(code, Some(Population::Eager))?;
    let started_ms = projector_core::now_ms();
    let totals = run_log(&engine, &log, 4096, &Shutdown::new(), true, |_| {})?;
    let ended_ms = projector_core::now_ms();
    engine.commit()?;
    engine.store().settle()?;
    engine.store().flush()?;
    let disk = size_on_disk(dir.path());
    let commits = engine.commit_stats();
    let commit_us_per_view = commits.seconds * 1e6 / commits.views.max(1) as f64;
    println!(
        "{label:>12}: {:>8.0} events/s; commits {:.2} s, {:.2} µs per view ({} views written); store {:.1} MiB on disk ({:.1} MiB with the log alone)",
        totals.records_per_second(),
        commits.seconds,
        commit_us_per_view,
        commits.views,
        disk as f64 / f64::from(1 << 20),
        log_bytes as f64 / f64::from(1 << 20)
    );
    if history.is_some() {
        // The entries kept, and what they weigh.
        let keys: Vec<String> = engine
            .store()
            .views("inbox-unread")
            .filter_map(|v| v.ok().map(|(k, _)| k))
            .collect();
        let (mut entries, mut bytes) = (0u64, 0u64);
        for k in &keys {
            for (_, e) in engine.store().history("inbox-unread", k)? {
                entries += 1;
                bytes += projector_core::store::encode_history(&e).len() as u64;
            }
        }
        println!(
            "{:>12}  {entries} history entries for {} views ({:.2} per event), {:.1} MiB of entries ({:.0} bytes per event)",
            "",
            keys.len(),
            entries as f64 / events.len() as f64,
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / events.len() as f64
        );
        // `as_of` reads of random views at random times of the run.
        let n = knob("BENCH_READS", 20_000) as usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut latencies = Vec::with_capacity(n);
        let mut found = 0;
        for _ in 0..n {
            let key = &keys[next() as usize % keys.len()];
            let at = started_ms + (next() % (ended_ms - started_ms).max(1) as u64) as i64;
            let t = Instant::now();
            let past = engine.view_as_of("inbox-unread", key, &AsOf::Time(at), ended_ms)?;
            latencies.push(t.elapsed());
            found += usize::from(past.is_some_and(|p| p.view.is_some()));
        }
        latencies.sort();
        let q =
            |f: f64| latencies[((latencies.len() as f64 * f) as usize).min(latencies.len() - 1)];
        println!(
            "{:>12}  as_of reads (in process, rendered): p50 {:.1?}, p99 {:.1?}, max {:.1?} over {n} reads ({found} found a view then)",
            "",
            q(0.5),
            q(0.99),
            latencies.last().copied().unwrap_or_default()
        );
    }
    engine.store().clone().close()?;
    Ok(Run {
        events_per_s: totals.records_per_second(),
        commit_us_per_view,
        disk,
    })
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let n = knob("BENCH_EVENTS", 1_000_000) as usize;
    let events = inbox_events(InboxShape {
        events: n,
        ..InboxShape::default()
    });
    let settings = serde_json::json!({});
    let host = WasmHost::new()?;
    let bytes = std::fs::read(plugin_wasm("inbox-unread"))?;
    let wasm: SharedCode =
        Arc::new(host.load("inbox-unread", &bytes, Limits::default(), &settings)?);
    println!(
        "view history, {n} inbox events, Wasm plugin, commits every {} ms",
        knob("BENCH_COMMIT_MS", 1000)
    );
    let kept = Some(HistoryBounds {
        versions: 50,
        ms: 7 * 24 * 3600 * 1000,
    });
    // `BENCH_ONLY=off|on` runs one side alone (for profiling).
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("off") => return run("history off", wasm, &events, None).map(drop),
        Ok("on") => return run("history on", wasm, &events, kept).map(drop),
        _ => {}
    }
    let off = run("history off", wasm.clone(), &events, None)?;
    let on = run("history on", wasm, &events, kept)?;
    println!(
        "history on ÷ off: events/s {:.2}, commit time per view {:.2}, store on disk {:.2}",
        on.events_per_s / off.events_per_s,
        on.commit_us_per_view / off.commit_us_per_view.max(1e-9),
        on.disk as f64 / off.disk.max(1) as f64
    );
    Ok(())
}
