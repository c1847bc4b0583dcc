//! Kafka path throughput: librdkafka's mock cluster → Wasm inbox
//! projection → sled, against a raw rdkafka consume of the same topic,
//! in one run. Prints both rates and the ratio (for reference), and the
//! same projection fed from the embedded log in the same run: what the
//! projection itself can take, so the Kafka path's own cost shows apart
//! from the projection's (target: Kafka path ÷ embedded log ≥ 0.9).
//!
//! Rates are taken from the first record received to the views applied
//! to their keys (the last commit and the store's materializer caught
//! up), on both paths, so the group join (about 3 s on the mock cluster)
//! is not counted. The mock cluster keeps at most 5 MiB per partition,
//! hence 16 partitions for the default 200 000 events (`BENCH_EVENTS`).
//! `BENCH_WORKERS` sets the threads that fold a batch's keys (default 1).
//! With `PROJECTOR_KAFKA_BOOTSTRAP` set (`./scripts/bench.sh kafka` starts
//! `scripts/kafka.sh`'s broker and sets it), the same rounds run again on
//! Apache Kafka, on a topic of their own.
//! Each of `BENCH_ROUNDS` rounds (3) runs both paths, which one first
//! alternating; the median round's ratio is the figure.
//! Run with `./scripts/bench.sh kafka`.

use projector_common::shutdown::Shutdown;
use projector_core::engine::Engine;
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_guest::Population;
use projector_host::wasm::WasmHost;
use projector_host::{Limits, SharedCode};
use projector_sources::kafka::KafkaConfig;
use projector_sources::run::run_log;
use projector_sources::run::KafkaRun;
use projector_tests::kafka::{cluster, ends, kept, produce, wait_caught_up};
use projector_tests::{filled_log, inbox_events, plugin_wasm, InboxShape};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: u32 = 16;

/// Records/s of a plain consumer reading every partition from the start.
fn raw_consume(bootstrap: &str, topic: &str, total: u64) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut n = 0u64;
    let mut bytes = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while n < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the raw consume read {n} of {total} records in 120 s"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let secs = first.map_or(1e-9, |f| f.elapsed().as_secs_f64());
    std::hint::black_box(bytes);
    Ok(n as f64 / secs)
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let n = projector_tests::knob("BENCH_EVENTS", 200_000) as usize;
    let events = inbox_events(InboxShape {
        events: n,
        sites: 5_000,
        users: 50_000,
        seed: 3,
    });
    let host = WasmHost::new()?;
    let bytes = std::fs::read(plugin_wasm("inbox-unread"))?;
    let workers = projector_tests::knob("BENCH_WORKERS", 1) as usize;
    let new_engine = |store: Store| -> anyhow::Result<Engine> {
        let engine = Engine::new(store, Format::Auto, workers, Duration::from_millis(1000));
        let settings = serde_json::json!({});
        let wasm: SharedCode =
            Arc::new(host.load("inbox-unread", &bytes, Limits::default(), &settings)?);
        engine.add(wasm, Some(Population::Eager))?;
        Ok(engine)
    };

    let c = cluster("inbox", PARTITIONS as i32);
    let mock = c.bootstrap_servers();
    let started = Instant::now();
    produce(&mock, "inbox", PARTITIONS, &events);
    eprintln!("produced {n} events in {:.1?}", started.elapsed());
    let kept = kept(&mock, "inbox", PARTITIONS);
    anyhow::ensure!(
        kept == n as u64,
        "the mock cluster kept {kept} of {n} events (5 MiB per partition): lower BENCH_EVENTS"
    );
    println!("kafka path, {n} events over {PARTITIONS} partitions of the mock cluster");
    rounds(&new_engine, &mock, "inbox", &events)?;
    drop(c);

    // Apache Kafka, when a broker is named (`./scripts/bench.sh kafka`
    // starts one): the same events on a topic of its own.
    let Ok(apache) = std::env::var("PROJECTOR_KAFKA_BOOTSTRAP") else {
        println!("(PROJECTOR_KAFKA_BOOTSTRAP is unset: no Apache Kafka run)");
        return Ok(());
    };
    let topic = projector_tests::broker::fresh("bench-inbox");
    projector_tests::broker::create_topic(&apache, &topic, PARTITIONS as i32);
    produce(&apache, &topic, PARTITIONS, &events);
    println!("kafka path, {n} events over {PARTITIONS} partitions of Apache Kafka at {apache}");
    let run = rounds(&new_engine, &apache, &topic, &events);
    projector_tests::broker::delete_topics(&apache, &[&topic]);
    run
}

/// The rounds on the broker at `bootstrap`, whose `topic` holds `events`.
fn rounds(
    new_engine: &dyn Fn(Store) -> anyhow::Result<Engine>,
    bootstrap: &str,
    topic: &str,
    events: &[String],
) -> anyhow::Result<()> {
    let end = ends(bootstrap, topic, PARTITIONS);
    let total: u64 = end.iter().sum();
    let raw = raw_consume(bootstrap, topic, total)?;
    println!("   raw rdkafka consume: {raw:>9.0} records/s");
    // Rounds alternate which path runs first: the first run of a process
    // pays for its fresh pages (the kernel zeroing them), which a later
    // run takes from memory the allocator kept. The median round is the
    // figure.
    let rounds = projector_tests::knob("BENCH_ROUNDS", 3).max(1) as usize;
    let mut pairs = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let group = format!("{topic}-bench-{round}");
        let kafka = || kafka_path(new_engine, bootstrap, topic, &group, &end);
        let embedded = || embedded_path(new_engine, events, total);
        let ((projected, batches), embedded) = if round % 2 == 1 {
            let k = kafka()?;
            (k, embedded()?)
        } else {
            let e = embedded()?;
            (kafka()?, e)
        };
        let first = if round % 2 == 1 {
            "Kafka"
        } else {
            "embedded log"
        };
        println!("round {round} of {rounds} ({first} first):");
        println!(
            " projector (wasm→sled): {projected:>9.0} records/s  ({batches} batches, {:.0} records each on average)",
            total as f64 / batches.max(1) as f64
        );
        println!(
            "                 ratio: {:.2}  (for reference: the projection, not Kafka, bounds it)",
            projected / raw
        );
        println!(" the same projection from the embedded log: {embedded:>9.0} records/s");
        println!("   kafka path ÷ embedded log: {:.2}", projected / embedded);
        pairs.push((projected / embedded, projected, embedded));
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, projected, embedded) = pairs[pairs.len() / 2];
    let all: Vec<String> = pairs.iter().map(|p| format!("{:.2}", p.0)).collect();
    println!(
        "median round: Kafka path {projected:.0}, embedded log {embedded:.0} records/s; \
         kafka path ÷ embedded log: {ratio:.2} (all rounds: {})  (target ≥ 0.9; the Kafka \
         path's own cost, the broker's included when it runs in this process)",
        all.join(", ")
    );
    Ok(())
}

/// Records/s of projector's consumer group `group` → Wasm → sled, from
/// the first record received to the views applied; and its batches.
fn kafka_path(
    new_engine: &dyn Fn(Store) -> anyhow::Result<Engine>,
    bootstrap: &str,
    topic: &str,
    group: &str,
    end: &[u64],
) -> anyhow::Result<(f64, u64)> {
    let total: u64 = end.iter().sum();
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(new_engine(Store::open(dir.path())?)?);
    let mut config = KafkaConfig::new(bootstrap, group, &[topic]);
    config.max_buffered_records = 32_768;
    let run = KafkaRun::start(engine.clone(), config, 4096)?;
    while run.stats.consumed.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let first = Instant::now();
    wait_caught_up(&engine, topic, end, Duration::from_secs(600));
    // Both paths are timed to their views applied to their keys: a run
    // shorter than the commit interval would otherwise leave the
    // materializer's work outside its window.
    engine.commit()?;
    engine.store().settle()?;
    let secs = first.elapsed().as_secs_f64();
    let batches = run.stats.batches.load(Ordering::Relaxed);
    eprintln!(
        "  kafka path: {secs:.2} s, {} pauses, at most {} records buffered, {} rebalances",
        run.stats.pauses.load(Ordering::Relaxed),
        run.stats.max_buffered.load(Ordering::Relaxed),
        run.stats.rebalances.load(Ordering::Relaxed)
    );
    run.join()?;
    Ok((total as f64 / secs, batches))
}

/// Records/s of the same projection fed from the embedded log, to the
/// views applied.
fn embedded_path(
    new_engine: &dyn Fn(Store) -> anyhow::Result<Engine>,
    events: &[String],
    total: u64,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let log = Arc::new(filled_log(&store, PARTITIONS, events)?);
    let engine = Arc::new(new_engine(store)?);
    let started = Instant::now();
    let totals = run_log(&engine, &log, 4096, &Shutdown::new(), true, |_| {})?;
    engine.store().settle()?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        totals.records == total,
        "the embedded log gave {} of {total} records",
        totals.records
    );
    Ok(totals.records as f64 / secs)
}
