//! Inbox projection throughput: embedded log → plugin → sled, with the
//! plugin as a Wasm component and as native Rust, in one run, on one
//! worker thread (by default). Prints events/s for each and the Wasm ÷ native ratio.
//!
//! `BENCH_EVENTS` sets the stream length (default 1 000 000: 10k sites,
//! 100k users, skewed activity), `BENCH_ONLY=wasm|native|ts` runs one side,
//! `BENCH_COMMIT_MS` sets the commit interval (default 1000),
//! `BENCH_BATCH` the batch size (default 4096), `BENCH_WORKERS` the
//! threads folding one batch's keys (default 1), `BENCH_ROUNDS` how many
//! native-then-Wasm rounds to run (default 3; the median is reported). Each run
//! also prints the store commits' share, from the engine's counters, and
//! the processing phase's page faults and kernel share (getrusage).
//!
//! The TypeScript port (`plugins/inbox-unread-ts`) runs once after the
//! rounds, over the first `BENCH_TS_EVENTS` events (default 200 000: a
//! JavaScript engine interprets it), with its component's size, compile
//! and instantiate times and memory per instance. Run with
//! `./scripts/bench.sh inbox`.

use projector_common::shutdown::Shutdown;
use projector_core::driver::Totals;
use projector_core::engine::Engine;
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_guest::Population;
use projector_host::native::NativePlugin;
use projector_host::wasm::WasmHost;
use projector_host::{Limits, SharedCode};
use projector_sources::run::run_log;
use projector_tests::{filled_log, inbox_events, knob, plugin_wasm, InboxShape, Usage};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run(label: &str, code: SharedCode, events: &[String], workers: usize) -> anyhow::Result<Totals> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let started = Instant::now();
    let log = std::sync::Arc::new(filled_log(&store, 4, events)?);
    eprintln!(
        "{label}: ingested {} events into the embedded log in {:.1?}",
        events.len(),
        started.elapsed()
    );
    let engine = std::sync::Arc::new(Engine::new(
        store,
        Format::Auto,
        workers,
        std::time::Duration::from_millis(knob("BENCH_COMMIT_MS", 1000)),
    ));
    engine.add(code, Some(Population::Eager))?;
    let batch = knob("BENCH_BATCH", 4096) as usize;
    let usage = Usage::now();
    let totals = run_log(&engine, &log, batch, &Shutdown::new(), true, |_| {})?;
    let usage = Usage::now().since(&usage);
    engine.store().flush()?;
    let c = totals.counters;
    let commits = engine.commit_stats();
    println!(
        "{label:>6}: {:>9.0} events/s  ({} events, {} view updates applied, {} skipped, {:.2?})",
        totals.records_per_second(),
        totals.records,
        c.applied,
        c.skipped,
        totals.elapsed
    );
    println!(
        "        of which store commits: {:.2} s ({} commits writing {} views: {:.2} µs per view); \
         without them: {:.0} events/s; the commits alone cap it at {:.0} events/s",
        commits.seconds,
        commits.commits,
        commits.views,
        commits.seconds * 1e6 / commits.views.max(1) as f64,
        totals.records as f64 / (totals.elapsed.as_secs_f64() - commits.seconds).max(1e-9),
        totals.records as f64 / commits.seconds.max(1e-9)
    );
    let m = engine.store().materializer_stats();
    println!(
        "        materializer, off the critical path: {} views applied ({} merged away) in {:.2} s; \
         commits that waited for it: {}",
        m.applied, m.merged, m.seconds, m.stalls
    );
    println!("        processing phase: {usage}");
    Ok(totals)
}

/// `[plugins.inbox-unread-ts] limits.max_memory_bytes`, as the README sets it.
const TS_MEMORY_CAP: usize = 128 << 20;

/// The TypeScript plugin, as built plainly and compiled ahead of time
/// (weval): what each component costs, its events/s, and their ratio.
fn typescript(events: &[String], workers: usize) -> anyhow::Result<()> {
    let plain = typescript_one("inbox-unread-ts", events, workers)?;
    let aot = typescript_one("inbox-unread-ts-aot", events, workers)?;
    println!(
        "typescript: compiled ahead of time ÷ plain = {:.2}  (target: ≥ 40000 events/s)",
        aot / plain
    );
    Ok(())
}

/// One build of the TypeScript plugin: its events/s.
fn typescript_one(name: &str, events: &[String], workers: usize) -> anyhow::Result<f64> {
    let bytes = std::fs::read(plugin_wasm(name))?;
    let settings = serde_json::json!({});
    let cache = tempfile::tempdir()?;
    // Its documented cap: a JavaScript engine's heap is larger than a Rust
    // guest's, and an instance past half its cap is retired after a batch.
    let limits = Limits {
        max_memory_bytes: TS_MEMORY_CAP,
        ..Limits::default()
    };
    let load = |host: &WasmHost| -> anyhow::Result<(projector_host::wasm::WasmPlugin, f64)> {
        let started = Instant::now();
        let p = host.load(name, &bytes, limits.clone(), &settings)?;
        Ok((p, started.elapsed().as_secs_f64()))
    };
    // Compiled once into an empty cache, then loaded again from it (a restart).
    let (_, cold) = load(&WasmHost::with_compile_cache(cache.path())?)?;
    let (plugin, warm) = load(&WasmHost::with_compile_cache(cache.path())?)?;
    let plugin = Arc::new(plugin);
    println!(
        "{name}: component {:.1} MiB; load (compile, instantiate, configure) {:.2} s cold, \
         {:.3} s from the compile cache",
        bytes.len() as f64 / f64::from(1 << 20),
        cold,
        warm
    );
    let code: SharedCode = plugin.clone();
    let t = run(name, code, events, workers)?;
    println!(
        "        memory per instance: {:.1} MiB of linear memory (cap {} MiB); {} instances started",
        plugin.peak_memory_bytes() as f64 / f64::from(1 << 20),
        TS_MEMORY_CAP >> 20,
        plugin.instances_started()
    );
    println!(
        "{name}: {:.0} events/s over the first {} events",
        t.records_per_second(),
        events.len()
    );
    Ok(t.records_per_second())
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    // `cargo bench` passes `--bench`; nothing else is taken.
    let n = knob("BENCH_EVENTS", 1_000_000) as usize;
    let started = Instant::now();
    let events = inbox_events(InboxShape {
        events: n,
        ..InboxShape::default()
    });
    eprintln!("generated {n} events in {:.1?}", started.elapsed());

    let settings = serde_json::json!({});
    let native: SharedCode = Arc::new(NativePlugin::<inbox_unread::InboxUnread>::new(
        "inbox-unread",
        &settings,
        Limits::default(),
    )?);
    let host = WasmHost::new()?;
    let bytes = std::fs::read(plugin_wasm("inbox-unread"))?;
    let wasm: SharedCode =
        Arc::new(host.load("inbox-unread", &bytes, Limits::default(), &settings)?);

    let workers = knob("BENCH_WORKERS", 1) as usize;
    println!("inbox projection, {n} events, embedded log → plugin → sled, {workers} worker(s)");
    // `BENCH_ONLY=wasm|native|ts` runs one side alone (for profiling).
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("wasm") => return run("wasm", wasm, &events, workers).map(drop),
        Ok("native") => return run("native", native, &events, workers).map(drop),
        Ok("ts") => {
            let n = events.len().min(knob("BENCH_TS_EVENTS", 200_000) as usize);
            return typescript(&events[..n], workers);
        }
        _ => {}
    }
    // Rounds alternate the two sides, so a slow spell of this shared
    // machine weighs on both; the median round is the figure.
    let rounds = knob("BENCH_ROUNDS", 3).max(1) as usize;
    let mut pairs = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        let n = run("native", native.clone(), &events, workers)?;
        let w = run("wasm", wasm.clone(), &events, workers)?;
        assert_eq!(
            n.counters, w.counters,
            "Wasm and native must produce the same outcome"
        );
        let (n, w) = (n.records_per_second(), w.records_per_second());
        println!(" ratio: wasm ÷ native = {:.2}", w / n);
        pairs.push((w / n, n, w));
    }
    typescript(
        &events[..events.len().min(knob("BENCH_TS_EVENTS", 200_000) as usize)],
        workers,
    )?;
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, n, w) = pairs[pairs.len() / 2];
    let all: Vec<String> = pairs.iter().map(|p| format!("{:.2}", p.0)).collect();
    println!(
        "median round: native {n:.0} events/s, wasm {w:.0} events/s, ratio {ratio:.2} \
         (all rounds: {})  (targets: wasm ≥ 200000 events/s on one worker, ratio ≥ 0.9)",
        all.join(", ")
    );
    Ok(())
}
