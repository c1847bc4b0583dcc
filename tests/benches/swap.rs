//! Stall of a `replace` deploy: events flow through the embedded log
//! into the hostile fixture (v1) while v2 is deployed. Prints the largest
//! gap between two consecutive batches in steady state and around the
//! swap (target: under 10 ms), and how long the deploy took off the
//! event path (compile and start). Then a shadow deploy of v1 rebuilds a
//! generation from the whole log: prints its rate in events/s.
//! `BENCH_EVENTS` sets the stream length (default 300 000). Run with
//! `./scripts/bench.sh swap`.

use projector_common::shutdown::Shutdown;
use projector_sources::run::run_log;
use projector_tests::{filled_log, open_app, plugin_wasm};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let n = projector_tests::knob("BENCH_EVENTS", 300_000);
    let dir = tempfile::tempdir()?;
    // A fresh compile cache: v2 is really compiled during the deploy.
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncompile_cache_dir = \"cache\"\n",
    );
    let events: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("e{i}"), "type": "count", "source": "bench",
                "key": format!("k{}", i % 10_000), "version": i + 1, "time": i, "payload": {}})
            .to_string()
        })
        .collect();
    let log = Arc::new(filled_log(app.engine.store(), 4, &events)?);
    let v2 = std::fs::read(plugin_wasm("hostile-v2"))?;

    let done: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(4096)));
    let pipeline = {
        let (engine, log, done) = (app.engine.clone(), log.clone(), done.clone());
        std::thread::spawn(move || {
            run_log(&engine, &log, 256, &Shutdown::new(), true, |_| {
                done.lock().expect("times").push(Instant::now());
            })
        })
    };
    let batches = n as usize / 256;
    while done.lock().expect("times").len() < batches / 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let deploy_start = Instant::now();
    let deployed = app.deployer.deploy("hostile", &v2, "bench", true)?;
    let deploy_end = Instant::now();
    let totals = pipeline.join().expect("pipeline")?;
    anyhow::ensure!(deployed.changed, "v2 was not deployed");

    let times = done.lock().expect("times").clone();
    let gaps: Vec<(Instant, Duration)> = times.windows(2).map(|w| (w[1], w[1] - w[0])).collect();
    let steady = gaps
        .iter()
        .skip(100)
        .filter(|(at, _)| *at < deploy_start)
        .map(|(_, g)| *g)
        .max()
        .unwrap_or_default();
    let swapped_at = deployed.swapped_at.unwrap_or(deploy_end);
    let max_gap = |from: Instant, to: Instant| {
        gaps.iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or_default()
    };
    // While v2 compiles, on the same two cores.
    let compiling = max_gap(deploy_start, swapped_at);
    // The swap itself: the batch waiting for it, and v2's first batches.
    let around = max_gap(swapped_at, swapped_at + Duration::from_millis(200));
    println!(
        "replace while {} events flow ({:.0} events/s, batches of 256)",
        totals.records,
        totals.records_per_second()
    );
    println!("  largest gap between batches, steady state: {steady:.2?}");
    println!("  largest gap between batches while v2 compiles beside them: {compiling:.2?}");
    println!("  largest gap between batches at the swap (200 ms from it): {around:.2?}  (target < 10 ms)");
    println!(
        "  deploy off the event path (compile + start v2): {:.1?}",
        deploy_end - deploy_start
    );

    // Shadow rebuild of the whole log.
    app.deployer.set_replay(log.clone());
    let v1 = std::fs::read(plugin_wasm("hostile"))?;
    let started = Instant::now();
    app.deployer.deploy_shadow(
        "hostile",
        &v1,
        "bench",
        projector_deploy::ShadowMethod::Rebuild,
        false,
    )?;
    let status = loop {
        let s = app
            .deployer
            .shadow("hostile")
            .ok_or_else(|| anyhow::anyhow!("no shadow"))?;
        anyhow::ensure!(!s.phase.starts_with("failed"), "{}", s.phase);
        if s.phase != "building" {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  shadow rebuild of {} events: {:.0} events/s ({secs:.2} s, compile included)",
        status.done,
        status.done as f64 / secs
    );
    Ok(())
}
