//! Aggregation throughput with enrichment (seed 002): the subscriptions
//! plugin (Wasm) over id-only events, fetching each entity from four local
//! source services on loopback, against the same history with the
//! entities carried in the events. Prints events/s for each run, and its
//! fetch figures (per service: fetches, cache hits, requests, latency).
//!
//! The id-only events run three ways, each with the services answering
//! at once and after `BENCH_SERVICE_MS` (1: about a data centre's round
//! trip): each fetch waiting in `apply` (the plugin's `prefetch = false`:
//! one request at a time per worker), fetched ahead (a batch's needs at
//! once, up to `max_in_flight` per service), and fetched ahead through
//! the services' batch endpoint. Each run's fetch counts (requests,
//! fetched ahead, batched, coalesced) and per-service figures; at the end
//! each way's rate after the delay ÷ at once (the latency hidden), and ÷
//! the entity events.
//!
//! Each run takes `BENCH_EVENTS` events (100 000: runs of a second or
//! more, so a batch's start-up does not weigh), but for fetches waiting in
//! `apply` after the delay, which take the first 10 000 (at about a
//! thousand events/s).
//!
//! Knobs: `BENCH_ASSETS` (2000), `BENCH_EVENTS` (100000), `BENCH_WORKERS`
//! (2), `BENCH_SERVICE_MS` (1), `BENCH_FETCHING` (`batch`, `fetched` or
//! `fetch in`: only the runs of that way of fetching, for a profile).
//! Run with `./scripts/bench.sh enrich`.

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

/// How one run fetches: ahead or not, and through the batch endpoint.
#[derive(Clone, Copy, PartialEq)]
enum Fetching {
    /// Each fetch waits in `apply`, one at a time per worker.
    InApply,
    /// A batch's needs fetched ahead, up to `max_in_flight` at once.
    Ahead,
    /// Fetched ahead through the services' batch endpoint.
    Batched,
}

impl Fetching {
    fn name(self) -> &'static str {
        match self {
            Fetching::InApply => "fetch in apply",
            Fetching::Ahead => "fetched ahead",
            Fetching::Batched => "batch endpoint",
        }
    }
}

/// The runtime in `dir` after it processed `events`. The caller keeps
/// `dir` until the app is dropped: its store closes into it.
fn run(
    label: &str,
    dir: &Path,
    services: &Services,
    events: &[Vec<u8>],
    workers: u64,
    fetching: Fetching,
) -> anyhow::Result<(App, f64)> {
    plugins_dir(dir, &["subscriptions"]);
    // Site data changes rarely: cached for a minute (seed 002's in-memory
    // cache of small sources). The others are asked every time.
    let batch = match fetching {
        Fetching::Batched => "batch_path = \"/batch\"\n",
        _ => "",
    };
    let extra: Vec<(&str, String)> = SOURCES
        .iter()
        .map(|s| {
            let cache = if *s == "sites" {
                "cache_ttl_ms = 60000\n"
            } else {
                ""
            };
            (*s, format!("{cache}{batch}"))
        })
        .collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(s, e)| (*s, e.as_str())).collect();
    let text = format!(
        "data_dir = \"data\"\nplugins_dir = \"plugins\"\n[engine]\nworkers = {workers}\n{}[plugins.subscriptions]\nservices = [\"subscriptions\", \"billing\", \"domains\", \"sites\"]\nprefetch = {}\n",
        services.config(&extra),
        fetching != Fetching::InApply,
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

/// The fetch counts of a run, summed over the services.
fn counts(app: &App) -> String {
    let sum = |f: fn(&projector_host::fetch::ServiceStats) -> u64| -> u64 {
        app.fetcher.stats().iter().map(|(_, s)| f(s)).sum()
    };
    let peak = app
        .fetcher
        .stats()
        .iter()
        .map(|(_, s)| s.in_flight_peak.load(Relaxed))
        .max()
        .unwrap_or(0);
    format!(
        "requests {}, most in flight at once {peak} (a service), fetched ahead {}, batched {}, coalesced {}, cache hits {}, errors {}",
        sum(|s| s.requests.load(Relaxed)),
        sum(|s| s.prefetched.load(Relaxed)),
        sum(|s| s.batched.load(Relaxed)),
        sum(|s| s.coalesced.load(Relaxed)),
        sum(|s| s.cache_hits.load(Relaxed)),
        sum(|s| s.errors.load(Relaxed)),
    )
}

/// The id-only events again, the services answering after `ms`, fetched
/// as `fetching` says: their events/s, and the fetch counts.
fn with_latency(
    services: &Services,
    events: &[Vec<u8>],
    ms: u64,
    workers: u64,
    fetching: Fetching,
    entity_rate: f64,
) -> anyhow::Result<f64> {
    for source in SOURCES {
        services.get(source).set_delay_ms(ms);
    }
    let dir = tempfile::tempdir()?;
    let label = format!("id-only, services after {ms} ms, {:<14}", fetching.name());
    let (app, rate) = run(&label, dir.path(), services, events, workers, fetching)?;
    println!(
        "  ÷ entity events: {:.2}; {}",
        rate / entity_rate,
        counts(&app)
    );
    for (service, s) in app.fetcher.stats() {
        let requests = s.requests.load(Relaxed);
        let bucket = |q| {
            s.latency_quantile_micros(q)
                .map_or("-".to_string(), |b| format!("<= {b} µs"))
        };
        println!(
            "    {service:<13} fetches {:>6}, cache hits {:>6}, requests {:>6}, mean request {:.0} µs, p50 {}, p99 {}",
            s.fetches.load(Relaxed),
            s.cache_hits.load(Relaxed),
            requests,
            s.request_micros.load(Relaxed) as f64 / requests.max(1) as f64,
            bucket(0.5),
            bucket(0.99),
        );
    }
    drop(app);
    for source in SOURCES {
        services.get(source).set_delay_ms(0);
    }
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let assets = knob("BENCH_ASSETS", 2000);
    let n = knob("BENCH_EVENTS", 100_000);
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
        Fetching::Ahead,
    )?;
    drop(app);
    let only = std::env::var("BENCH_FETCHING").unwrap_or_default();
    let ms = knob("BENCH_SERVICE_MS", 1);
    let mut table = Vec::new();
    for fetching in [Fetching::InApply, Fetching::Ahead, Fetching::Batched] {
        if !only.is_empty() && !fetching.name().starts_with(only.as_str()) {
            continue;
        }
        let at_once = with_latency(&services, &by_id, 0, workers, fetching, entity_rate)?;
        // One request at a time per worker: a thousand events/s or so.
        let some = match fetching {
            Fetching::InApply => &by_id[..by_id.len().min(10_000)],
            _ => &by_id[..],
        };
        let later = with_latency(&services, some, ms, workers, fetching, entity_rate)?;
        table.push((fetching.name(), at_once, later));
    }
    println!("id-only events/s, services answering at once and after {ms} ms (targets: after ÷ at once ≥ 0.8; batch endpoint ÷ entity events ≥ 0.5):");
    for (name, at_once, later) in table {
        println!(
            "  {name:<14}: {at_once:>7.0} at once, {later:>7.0} after {ms} ms: ÷ {:.2}; ÷ entity events {:.2} and {:.2}",
            later / at_once,
            at_once / entity_rate,
            later / entity_rate,
        );
    }
    Ok(())
}
