//! Aggregation throughput with enrichment (seed 002): the subscriptions
//! plugin (Wasm) over id-only events, fetching each entity from four local
//! source services on loopback, against the same history with the
//! entities carried in the events. Prints events/s for both, the cache hit
//! ratio and the mean fetch latency per service.
//!
//! Then the id-only events again with the services answering after
//! `BENCH_SERVICE_MS` (1: about a data centre's round trip), on
//! `BENCH_WORKERS` and on `BENCH_FETCH_WORKERS` workers (32: each worker
//! folds its keys on its own instance, so that many fetches wait at once),
//! with each run's ratio to the entity events, and the fetches coalesced.
//!
//! Knobs: `BENCH_ASSETS` (2000), `BENCH_EVENTS` (20000), `BENCH_WORKERS`
//! (2), `BENCH_SERVICE_MS` (1), `BENCH_FETCH_WORKERS` (32). Run with
//! `./scripts/bench.sh enrich`.

use projector::app::App;
use projector::config::Config;
use projector_core::Record;
use projector_tests::knob;
use projector_tests::plugins_dir;
use projector_tests::services::Services;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOURCES: [&str; 4] = ["subscriptions", "billing", "domains", "sites"];

fn entity(source: &str, version: u64, asset: u64) -> Value {
    match source {
        "subscriptions" => json!({"version": version, "product": "site-plan",
            "plan": "premium", "trial_end_ms": null, "expires_ms": 1_900_000_000_000i64}),
        "billing" => json!({"version": version, "payment_status": "paid",
            "next_charge_ms": 1_800_000_000_000i64, "amount_cents": 1200, "currency": "EUR"}),
        "domains" => json!({"version": version, "name": format!("a{asset}.example.com"),
            "expires_ms": 1_900_000_000_000i64}),
        _ => json!({"version": version, "name": format!("site {asset}"),
            "url": format!("https://a{asset}.example.com")}),
    }
}

fn event(source: &str, version: u64, asset: u64, entity: Option<Value>) -> Vec<u8> {
    let ty = match source {
        "subscriptions" => "SubscriptionChanged",
        "billing" => "BillingChanged",
        "domains" => "DomainChanged",
        _ => "SiteChanged",
    };
    let mut payload =
        json!({"user_id": format!("u{}", asset / 3), "asset_id": format!("a{asset}")});
    if let Some(e) = entity {
        payload["entity"] = e;
    }
    json!({"id": format!("{source}-{asset}-{version}"), "type": ty, "source": source,
           "key": format!("a{asset}"), "version": version, "time": 0, "payload": payload})
    .to_string()
    .into_bytes()
}

/// The runtime in `dir` after it processed `events`. The caller keeps
/// `dir` until the app is dropped: its store closes into it.
fn run(
    label: &str,
    dir: &Path,
    services: &Services,
    events: &[Vec<u8>],
    workers: u64,
) -> anyhow::Result<(App, f64)> {
    plugins_dir(dir, &["subscriptions"]);
    // Site data changes rarely: cached for a minute (seed 002's in-memory
    // cache of small sources). The others are asked every time.
    let text = format!(
        "data_dir = \"data\"\nplugins_dir = \"plugins\"\n[engine]\nworkers = {workers}\n{}[plugins.subscriptions]\nservices = [\"subscriptions\", \"billing\", \"domains\", \"sites\"]\n",
        services.config(&[("sites", "cache_ttl_ms = 60000")])
    );
    let app = App::open(Config::parse(&text, "bench.toml", dir)?)?;
    let started = Instant::now();
    let mut applied = 0;
    for (i, chunk) in events.chunks(1024).enumerate() {
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(j, value)| Record::wire(0, (i * 1024 + j) as u64, None, value.clone()))
            .collect();
        applied += app.engine.process("bench", 0, &records)?.total().applied;
    }
    app.engine.commit()?;
    let elapsed = started.elapsed();
    let rate = events.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{label}: {rate:.0} events/s ({} events, {applied} applied, {workers} workers, {elapsed:.2?})",
        events.len()
    );
    Ok((app, rate))
}

/// The id-only events again, the services answering after `ms`, on
/// `workers`: their events/s against the entity events', and the fetches
/// coalesced.
fn with_latency(
    services: &Services,
    events: &[Vec<u8>],
    ms: u64,
    workers: u64,
    entity_rate: f64,
) -> anyhow::Result<()> {
    for source in SOURCES {
        services.get(source).set_delay_ms(ms);
    }
    let dir = tempfile::tempdir()?;
    let label = format!("id-only, services after {ms} ms, {workers:>2} workers");
    let (app, rate) = run(&label, dir.path(), services, events, workers)?;
    let coalesced: u64 = app
        .fetcher
        .stats()
        .iter()
        .map(|(_, s)| s.coalesced.load(Relaxed))
        .sum();
    println!(
        "  ÷ entity events: {:.2} (target ≥ 0.8 at 1 ms); {coalesced} fetches coalesced",
        rate / entity_rate
    );
    drop(app);
    for source in SOURCES {
        services.get(source).set_delay_ms(0);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let assets = knob("BENCH_ASSETS", 2000);
    let n = knob("BENCH_EVENTS", 20_000);
    let workers = knob("BENCH_WORKERS", 2);
    let services = Services::start(&SOURCES);
    let mut rng = StdRng::seed_from_u64(3);
    let mut versions = vec![[0u64; 4]; assets as usize];
    let (mut by_id, mut carrying) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let asset = rng.gen_range(0..assets);
        let s = rng.gen_range(0..4);
        versions[asset as usize][s] += 1;
        let v = versions[asset as usize][s];
        let source = SOURCES[s];
        by_id.push(event(source, v, asset, None));
        carrying.push(event(source, v, asset, Some(entity(source, v, asset))));
    }
    // The services hold each entity's latest version.
    for asset in 0..assets {
        for (s, source) in SOURCES.iter().enumerate() {
            let v = versions[asset as usize][s].max(1);
            services
                .get(source)
                .set(&format!("a{asset}"), vec![entity(source, v, asset)]);
        }
    }
    // Each directory is declared before its app, so that it is removed
    // after the app's store closed (locals drop in reverse order): a store
    // whose directory is gone cannot write its blobs, and sled 0.34's
    // flush then never finishes.
    let dir = tempfile::tempdir()?;
    let (app, entity_rate) = run(
        "entity events (no fetch)",
        dir.path(),
        &services,
        &carrying,
        workers,
    )?;
    drop(app);
    let dir = tempfile::tempdir()?;
    let (app, _) = run(
        "id-only events (fetch)  ",
        dir.path(),
        &services,
        &by_id,
        workers,
    )?;
    let (mut fetches, mut hits) = (0, 0);
    for (service, s) in app.fetcher.stats() {
        let requests = s.requests.load(Relaxed);
        fetches += s.fetches.load(Relaxed);
        hits += s.cache_hits.load(Relaxed);
        let bucket = |q| {
            s.latency_quantile_micros(q)
                .map_or("-".to_string(), |b| format!("<= {b} µs"))
        };
        println!(
            "  {service:<13} fetches {:>6}, cache hits {:>6}, requests {:>6}, errors {}, mean request {:.0} µs, p50 {}, p99 {}",
            s.fetches.load(Relaxed),
            s.cache_hits.load(Relaxed),
            requests,
            s.errors.load(Relaxed),
            s.request_micros.load(Relaxed) as f64 / requests.max(1) as f64,
            bucket(0.5),
            bucket(0.99),
        );
    }
    println!(
        "cache hit ratio {:.1}% over {fetches} fetches",
        100.0 * hits as f64 / fetches.max(1) as f64
    );
    drop(app);
    drop(dir);
    let ms = knob("BENCH_SERVICE_MS", 1);
    with_latency(&services, &by_id, ms, workers, entity_rate)?;
    with_latency(
        &services,
        &by_id,
        ms,
        knob("BENCH_FETCH_WORKERS", 32),
        entity_rate,
    )?;
    Ok(())
}
