//! Restore from the changelog against rebuilding by replaying the source,
//! in one run, on librdkafka's mock cluster in this process:
//!
//! 1. an instance with `changelog = true` and an empty store replays the
//!    inbox topic (the Wasm inbox projection), which also fills the
//!    changelog: the rebuild's views/s;
//! 2. a second instance with an empty store joins the same group once the
//!    first has left: every partition is restored from the changelog.
//!
//! Prints views, seconds and views/s of each and the ratio (target: 1M
//! views restored in under 10 s). The mock cluster keeps at most about
//! 5 MiB per partition, so the bench spreads the default 700 000 events
//! (`BENCH_EVENTS`, about a million views) over as many partitions as
//! keep them all (`BENCH_PARTITIONS` sets more). Run with
//! `./scripts/bench.sh restore`.

use projector_host::wasm::WasmHost;
use projector_host::Limits;
use projector_sources::run::KafkaRun;
use projector_tests::kafka::{ends, kept, mock_partitions, produce, wait_caught_up};
use projector_tests::unread::{self, PLUGIN};
use projector_tests::{inbox_events, knob, plugin_wasm, InboxShape};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let n = knob("BENCH_EVENTS", 700_000) as usize;
    let events = inbox_events(InboxShape {
        events: n,
        sites: 100_000,
        users: 1_000_000,
        seed: 5,
    });
    let partitions = mock_partitions(&events, knob("BENCH_PARTITIONS", 64) as u32);
    eprintln!("{partitions} partitions: the fewest the mock cluster keeps {n} events on");
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    for (topic, count) in [
        ("inbox".to_string(), partitions as i32),
        ("inbox.bench.retry".into(), partitions as i32),
        ("inbox.bench.dlq".into(), partitions as i32),
        ("bench.inbox-unread.changelog".into(), partitions as i32),
        ("bench.members".into(), 1),
    ] {
        cluster.create_topic(&topic, count, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let started = Instant::now();
    produce(&bootstrap, "inbox", partitions, &events);
    eprintln!("produced {n} events in {:.1?}", started.elapsed());
    let end = ends(&bootstrap, "inbox", partitions);
    let kept = kept(&bootstrap, "inbox", partitions);
    anyhow::ensure!(
        kept == n as u64,
        "the mock cluster kept {kept} of {n} events on {partitions} partitions (5 MiB each): raise BENCH_PARTITIONS"
    );

    let host = WasmHost::new()?;
    let bytes = std::fs::read(plugin_wasm(PLUGIN))?;
    let settings = serde_json::json!({ "max_unread": 1_000_000 });
    let new_engine = |dir: &Path| unread::engine(&host, &bytes, Limits::default(), &settings, dir);
    let config = unread::kafka_config(&bootstrap, "bench", "inbox");

    // 1. The rebuild: replay the source into an empty store.
    let dir = tempfile::tempdir()?;
    let engine = new_engine(dir.path())?;
    let run = KafkaRun::start(engine.clone(), config.clone(), 4096)?;
    while run.stats.consumed.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let first = Instant::now();
    wait_caught_up(&engine, "inbox", &end, Duration::from_secs(1200));
    let replay_secs = first.elapsed().as_secs_f64();
    engine.commit()?;
    // The changelog complete before the first instance leaves.
    let spooled = Instant::now();
    while engine.store().outbox_count() > 0 {
        anyhow::ensure!(
            spooled.elapsed() < Duration::from_secs(600),
            "the spool never drained"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain_secs = spooled.elapsed().as_secs_f64();
    let views = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len() as u64;
    let produced = run.stats.produced.load(Ordering::Relaxed);
    run.join()?;
    drop(engine);

    // 2. The restore: a new instance, empty store, the same group.
    let dir = tempfile::tempdir()?;
    let engine = new_engine(dir.path())?;
    let begun = Instant::now();
    let run = KafkaRun::start(engine.clone(), config, 4096)?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut assigned_at = None;
    loop {
        let restoring = !run
            .stats
            .restoring
            .lock()
            .map(|r| r.is_empty())
            .unwrap_or(true);
        if restoring {
            assigned_at.get_or_insert_with(Instant::now);
        }
        let restores = run.stats.restores.load(Ordering::Relaxed);
        if restores >= u64::from(partitions) && !restoring {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the restore never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let restore_ms = run.stats.restore_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    let restored = run.stats.restore_views.load(Ordering::Relaxed);
    let records = run.stats.restore_records.load(Ordering::Relaxed);
    let wall = assigned_at.map_or(0.0, |a| a.elapsed().as_secs_f64());
    let consumed = run.stats.consumed.load(Ordering::Relaxed);
    run.join()?;
    eprintln!("second instance up to its restore: {:.1?}", begun.elapsed());
    let restored_views = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len() as u64;
    anyhow::ensure!(
        restored_views == views,
        "{restored_views} views after the restore, {views} after the replay"
    );

    println!(
        "restore from the changelog vs replay of the source: {n} events, {views} views, {partitions} partitions of the mock cluster"
    );
    println!(
        "   replay (wasm fold → sled, changelog produced): {replay_secs:>6.1} s  {:>9.0} views/s  ({:.0} events/s)",
        views as f64 / replay_secs,
        n as f64 / replay_secs
    );
    println!(
        "   changelog: {produced} records produced ({:.2} per view); the spool drained {drain_secs:.1} s after the replay",
        produced as f64 / views.max(1) as f64
    );
    println!(
        "   restore ({records} changelog records read, {restored} views put): {restore_ms:>6.1} s  {:>9.0} views/s  (from the first assignment to the last restore: {wall:.1} s; {consumed} source records consumed after it)",
        views as f64 / restore_ms.max(1e-9),
    );
    println!(
        "   restore ÷ replay time: {:.2}  (replay is {:.1}× slower); 1M views would restore in {:.1} s (target < 10 s)",
        restore_ms / replay_secs,
        replay_secs / restore_ms.max(1e-9),
        restore_ms * 1e6 / views.max(1) as f64
    );
    Ok(())
}
