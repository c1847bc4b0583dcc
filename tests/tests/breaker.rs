//! The circuit breaker: an enrichment service down for a while under load.
//! Instead of every event failing its retries into a dead letter, the
//! plugin is paused (its lag grows, nothing is lost), probed with backoff,
//! and once the service is back it catches up and follows live events
//! again: no dead letter, and every row as if the service never went away.

use projector_tests::services::Services;
use projector_tests::{knob, Served};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PLUGIN: &str = "subscriptions";
const SOURCES: [&str; 4] = ["subscriptions", "billing", "domains", "sites"];
const ASSETS: u64 = 40;

/// An id-only billing event of asset `a{n}`.
fn event(n: u64, version: u64) -> String {
    json!({"id": format!("billing-a{n}-{version}"), "type": "BillingChanged",
           "source": "billing", "key": format!("a{n}"), "version": version, "time": 0,
           "payload": {"user_id": "u1", "asset_id": format!("a{n}")}})
    .to_string()
}

fn plugin_json(s: &Served) -> Value {
    let (status, body) = s.get("/v1/plugins");
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["plugin"] == PLUGIN).cloned())
        .expect("the plugin is listed")
}

fn lag(s: &Served) -> f64 {
    s.get_text("/metrics")
        .lines()
        .filter(|l| l.starts_with("projector_lag_records{") && l.contains(PLUGIN))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The source services, billing holding every asset's entity, always
/// newer than the events.
fn billing_services() -> Services {
    let services = Services::start(&SOURCES);
    for n in 0..ASSETS {
        services.get("billing").set(
            &format!("a{n}"),
            vec![json!({"version": 1_000_000, "payment_status": "paid",
                        "next_charge_ms": 0, "amount_cents": 4200 + n, "currency": "EUR"})],
        );
    }
    services
}

#[test]
fn a_service_down_under_load_pauses_the_plugin_instead_of_dead_lettering() {
    let outage = Duration::from_millis(knob("BREAKER_OUTAGE_MS", 10_000));
    let services = billing_services();
    let s = Served::start(
        &[PLUGIN],
        &format!(
            "{}[plugins.subscriptions]\nservices = [\"billing\"]\n\
             retry = {{ attempts = 3, delay_ms = 200 }}\n\
             breaker = {{ min_failures = 10, probe_delay_ms = 200, max_probe_delay_ms = 1000 }}\n",
            services.config(&[])
        ),
    );

    // A producer posting events of every asset, versions rising.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (base, client) = (s.base.clone(), s.client.clone());
        std::thread::spawn(move || {
            let mut version = 0;
            while !stop.load(Ordering::Relaxed) {
                version += 1;
                let batch: Vec<String> = (0..ASSETS).map(|n| event(n, version)).collect();
                let r = client
                    .post(format!("{base}/v1/events"))
                    .body(batch.join("\n"))
                    .send()
                    .expect("post");
                assert_eq!(r.status(), 200);
                sent.fetch_add(ASSETS, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
            version
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    services.get("billing").set_down(true);
    let down_at = Instant::now();

    // The breaker opens, and the plugin's lag grows while it is open.
    let mut opened = None;
    while down_at.elapsed() < outage {
        let b = plugin_json(&s)["breaker"].clone();
        if b["state"] == "open" && opened.is_none() {
            opened = Some((b, lag(&s)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (open, lag_at_open) = opened.expect("the breaker opened during the outage");
    assert!(
        open["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed")),
        "{open}"
    );
    let lag_in_outage = lag(&s);
    assert!(
        lag_in_outage > lag_at_open + 2.0 * ASSETS as f64,
        "lag grows while paused: {lag_at_open} then {lag_in_outage}"
    );
    assert_eq!(
        s.metric("projector_breaker_open", &format!("plugin=\"{PLUGIN}\"")),
        1.0
    );

    services.get("billing").set_down(false);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let last_version = producer.join().expect("producer");

    // It closes, catches up, and everything is applied: lag drains.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = plugin_json(&s);
        let done = p["breaker"]["state"] == "closed"
            && lag(&s) == 0.0
            && s.metric("projector_retry_queue", "") == 0.0;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {p}, lag {}",
            lag(&s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = plugin_json(&s);
    assert!(p["breaker"]["opened"].as_u64() >= Some(1), "{p}");
    assert_eq!(p["events"]["dead_lettered"], 0, "{p}");
    s.app.engine.commit().expect("commit");
    let letters = s.app.engine.store().dead_letters().count();
    assert_eq!(letters, 0, "no dead letter");
    for n in 0..ASSETS {
        let key = format!("u1:a{n}");
        let v = s
            .app
            .engine
            .read(PLUGIN, &key, 0)
            .expect("read")
            .unwrap_or_else(|| panic!("no view of {key}"));
        assert_eq!(
            v.versions.get("billing"),
            Some(last_version),
            "{key}: the last event applied"
        );
        let row = v.json().expect("a valid view renders");
        assert_eq!(row["amount"]["cents"], 4200 + n, "{key}: {row}");
    }
    eprintln!(
        "breaker: {} events posted, outage {:?}, lag at open {lag_at_open}, in the outage {lag_in_outage}; {}",
        sent.load(Ordering::Relaxed),
        outage,
        p["breaker"]
    );
}

/// A file of `versions` rounds of events (one per asset) and an app in
/// `dir` with the plugin on `services`, its breaker quick to probe, and
/// `retry` (TOML, may be empty) for its retries.
fn file_replay(
    dir: &std::path::Path,
    services: &Services,
    versions: u64,
    retry: &str,
) -> (projector::app::App, std::path::PathBuf) {
    let file = dir.join("events.ndjson");
    let lines: Vec<String> = (1..=versions)
        .flat_map(|v| (0..ASSETS).map(move |n| event(n, v)))
        .collect();
    projector_tests::write_ndjson(&file, &lines);
    let app = projector_tests::open_app(
        dir,
        &[PLUGIN],
        &format!(
            "[plugins.subscriptions]\nservices = [\"billing\"]\n{retry}\
             breaker = {{ min_failures = 10, probe_delay_ms = 200, max_probe_delay_ms = 1000 }}\n{}",
            services.config(&[])
        ),
    );
    (app, file)
}

/// No dead letter, and every row holds its asset's event `version` and
/// the service's amount.
fn assert_rows(app: &projector::app::App, version: u64) {
    assert_eq!(
        app.engine.store().dead_letters().count(),
        0,
        "no dead letter"
    );
    for n in 0..ASSETS {
        let key = format!("u1:a{n}");
        let v = app
            .engine
            .read(PLUGIN, &key, 0)
            .expect("read")
            .unwrap_or_else(|| panic!("no view of {key}"));
        assert_eq!(v.versions.get("billing"), Some(version), "{key}");
        let row = v.json().expect("a valid view renders");
        assert_eq!(row["amount"]["cents"], 4200 + n, "{key}: {row}");
    }
}

/// A file cannot be read again, so the run keeps what a paused plugin
/// missed: `projector replay` of a file while the service is down for
/// 3 s pauses the plugin and waits instead of dead-lettering, then
/// catches up, runs its delayed retries, and ends with every row as if
/// the service never went away.
#[test]
fn a_file_replay_waits_for_a_service_that_is_down_instead_of_dead_lettering() {
    const VERSIONS: u64 = 20;
    let services = billing_services();
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, file) = file_replay(
        dir.path(),
        &services,
        VERSIONS,
        "retry = { attempts = 3, delay_ms = 200 }\n",
    );
    services.get("billing").set_down(true);
    let started = Instant::now();
    let totals = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            services.get("billing").set_down(false);
        });
        projector_sources::run::replay_file(&app.engine, &file, 64, |_| {})
    })
    .expect("replay");
    let p = app.engine.projection(PLUGIN).expect("loaded");
    eprintln!(
        "file replay with the service down 3 s: {:?}, breaker opened {} times, {totals:?}",
        started.elapsed(),
        p.breaker_opened()
    );
    assert!(p.breaker_opened() >= 1, "the breaker opened");
    assert_eq!(p.counters().dead_lettered, 0, "{:?}", p.counters());
    assert_eq!(app.engine.store().retry_count(), 0, "no retry left queued");
    assert_rows(&app, VERSIONS);
}

/// A file replay whose service stays down ends, 30 s after its input is
/// read, with an error naming the paused plugin; replaying the same file
/// once the service is back resumes the plugin where it stopped.
#[test]
fn a_file_replay_ends_with_an_error_while_a_plugin_stays_paused_and_resumes_on_the_next() {
    let services = billing_services();
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, file) = file_replay(dir.path(), &services, 5, "");
    services.get("billing").set_down(true);
    let ended = projector_sources::run::replay_file(&app.engine, &file, 64, |_| {});
    let error = format!("{:#}", ended.expect_err("the plugin is still paused"));
    assert!(
        error.contains("still pauses subscriptions") && error.contains("failed"),
        "{error}"
    );
    services.get("billing").set_down(false);
    projector_sources::run::replay_file(&app.engine, &file, 64, |_| {}).expect("replay");
    assert_rows(&app, 5);
}
