//! Enrichment against real source services on 127.0.0.1:0, with the
//! subscriptions plugin (seed 002): id-only events fetched and aggregated
//! across four sources, stale and duplicate data, a lagging replica, a
//! source that is down or slow, the allow-list, and read-time rendering.

use projector_tests::services::Services;
use projector_tests::{dead_letters, open_app, records};
use serde_json::{json, Value};

const PLUGIN: &str = "subscriptions";
const DAY: i64 = 24 * 60 * 60 * 1000;
const SOURCES: [&str; 4] = ["subscriptions", "billing", "domains", "sites"];

fn type_of(source: &str) -> &'static str {
    match source {
        "subscriptions" => "SubscriptionChanged",
        "billing" => "BillingChanged",
        "domains" => "DomainChanged",
        _ => "SiteChanged",
    }
}

/// An event of `source` about `user`'s `asset`; with `entity`, the data
/// itself, else only the ids.
fn ev(source: &str, version: u64, user: &str, asset: &str, entity: Option<Value>) -> Vec<u8> {
    let mut payload = json!({"user_id": user, "asset_id": asset});
    if let Some(e) = entity {
        payload["entity"] = e;
    }
    json!({"id": format!("{source}-{asset}-{version}"), "type": type_of(source),
           "source": source, "key": asset, "version": version, "time": 0, "payload": payload})
    .to_string()
    .into_bytes()
}

fn entity(source: &str, version: u64, asset: &str) -> Value {
    match source {
        "subscriptions" => json!({"version": version, "product": "site-plan",
            "plan": format!("plan-v{version}"), "trial_end_ms": null, "expires_ms": 500 * DAY}),
        "billing" => json!({"version": version, "payment_status": "paid",
            "next_charge_ms": 40 * DAY, "amount_cents": 100 * version, "currency": "EUR"}),
        "domains" => json!({"version": version, "name": format!("{asset}-v{version}.example.com"),
            "expires_ms": 300 * DAY}),
        _ => json!({"version": version, "name": format!("site {asset} v{version}"),
            "url": format!("https://{asset}.example.com")}),
    }
}

fn config(services: &Services, allowed: &[&str], extra: &[(&str, &str)]) -> String {
    let list: Vec<String> = allowed.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "{}[plugins.subscriptions]\nservices = [{}]\n",
        services.config(extra),
        list.join(", ")
    )
}

/// Services answering version 1 of every source's entity of assets
/// `a0..a{assets}`.
fn services_at_first_versions(assets: u64) -> Services {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        for a in 0..assets {
            let asset = format!("a{a}");
            services
                .get(source)
                .set(&asset, vec![entity(source, 1, &asset)]);
        }
    }
    services
}

/// Id-only events of version 1 of every source, for user `u{a}`'s asset
/// `a{a}` of each asset below `assets`.
fn first_versions(assets: u64) -> Vec<String> {
    (0..assets)
        .flat_map(|a| {
            SOURCES.map(|source| {
                let (user, asset) = (format!("u{a}"), format!("a{a}"));
                String::from_utf8(ev(source, 1, &user, &asset, None)).expect("utf-8")
            })
        })
        .collect()
}

fn row(app: &projector::app::App, key: &str, now: i64) -> Value {
    app.engine
        .read(PLUGIN, key, now)
        .expect("read")
        .and_then(|v| v.json())
        .unwrap_or_else(|| panic!("no valid view of {key}"))
}

#[test]
fn id_only_events_are_enriched_across_four_sources() {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        for asset in ["a1", "a2"] {
            services
                .get(source)
                .set(asset, vec![entity(source, 3, asset)]);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    let mut batch = Vec::new();
    for (user, asset) in [("u1", "a1"), ("u2", "a2")] {
        for source in SOURCES {
            batch.push(ev(source, 3, user, asset, None));
        }
    }
    let summary = app
        .engine
        .process("t", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!((summary.applied, summary.dead_lettered), (8, 0));
    let r = row(&app, "u2:a2", 0);
    assert_eq!(r["plan"], "plan-v3");
    assert_eq!(r["amount"], json!({"cents": 300, "currency": "EUR"}));
    assert_eq!(r["domain"], "a2-v3.example.com");
    assert_eq!(r["site"]["name"], "site a2 v3");
    assert_eq!(r["status"], "active");
    for source in SOURCES {
        assert_eq!(
            services.get(source).requests(),
            2,
            "{source}: one fetch per event"
        );
    }
}

#[test]
fn out_of_order_and_duplicate_events_give_the_right_row() {
    let services = Services::start(&SOURCES);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    // Each source's versions 1..=4 arrive shuffled, some twice.
    let mut batch = Vec::new();
    for source in SOURCES {
        for v in [2, 4, 1, 4, 3, 2] {
            batch.push(ev(source, v, "u1", "a1", Some(entity(source, v, "a1"))));
        }
    }
    app.engine
        .process("t", 0, &records(0, batch))
        .expect("batch");
    let r = row(&app, "u1:a1", 0);
    assert_eq!(r["plan"], "plan-v4");
    assert_eq!(r["amount"]["cents"], 400);
    assert_eq!(r["domain"], "a1-v4.example.com");
    assert_eq!(r["site"]["name"], "site a1 v4");
    assert!(dead_letters(&app).is_empty());
    for source in SOURCES {
        assert_eq!(
            services.get(source).requests(),
            0,
            "entity events need no fetch"
        );
    }
}

#[test]
fn a_lagging_source_is_fetched_again_until_it_is_newer() {
    let services = Services::start(&SOURCES);
    // The first answer comes from a replica one version behind.
    services.get("billing").set(
        "a1",
        vec![entity("billing", 3, "a1"), entity("billing", 4, "a1")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    app.engine
        .process(
            "t",
            0,
            &records(0, vec![ev("billing", 4, "u1", "a1", None)]),
        )
        .expect("batch");
    assert_eq!(row(&app, "u1:a1", 0)["amount"]["cents"], 400);
    assert_eq!(services.get("billing").requests(), 2);
    assert!(dead_letters(&app).is_empty());

    // A replica that lags longer than the plugin's refetches: the event
    // waits for a delayed retry while the other keys flow, then converges.
    services.get("sites").set(
        "a1",
        vec![
            entity("sites", 1, "a1"),
            entity("sites", 1, "a1"),
            entity("sites", 1, "a1"),
            entity("sites", 2, "a1"),
        ],
    );
    services
        .get("sites")
        .set("a2", vec![entity("sites", 2, "a2")]);
    let c = app
        .engine
        .process(
            "t",
            0,
            &records(
                1,
                vec![
                    ev("sites", 2, "u1", "a1", None),
                    ev("sites", 2, "u2", "a2", None),
                ],
            ),
        )
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.dead_lettered), (1, 0), "{c:?}");
    assert_eq!(row(&app, "u2:a2", 0)["site"]["name"], "site a2 v2");
    app.engine.commit().expect("commit");
    assert_eq!(app.engine.store().retry_count(), 1);
    let later = projector_core::now_ms() + 60_000;
    assert_eq!(app.engine.retry_due(later).expect("retry"), 1);
    assert_eq!(row(&app, "u1:a1", 0)["site"]["name"], "site a1 v2");
    assert_eq!(app.engine.store().retry_count(), 0);
    assert!(dead_letters(&app).is_empty());

    // Behind a cache: asking again goes past the cached old answer.
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = "cache_ttl_ms = 600000";
    services.get("domains").set(
        "a1",
        vec![entity("domains", 6, "a1"), entity("domains", 7, "a1")],
    );
    let app = open_app(
        dir.path(),
        &[PLUGIN],
        &config(&services, &SOURCES, &[("domains", cached)]),
    );
    app.engine
        .process(
            "t",
            0,
            &records(0, vec![ev("domains", 7, "u1", "a1", None)]),
        )
        .expect("batch");
    assert_eq!(row(&app, "u1:a1", 0)["domain"], "a1-v7.example.com");
    assert_eq!(services.get("domains").requests(), 2);
}

#[test]
fn a_source_down_is_served_from_cache_where_allowed_and_elsewhere_fails_the_event() {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        services
            .get(source)
            .set("a1", vec![entity(source, 5, "a1")]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = "cache_ttl_ms = 1\nstale_ms = 600000";
    let app = open_app(
        dir.path(),
        &[PLUGIN],
        &format!(
            "{}[retry]\nattempts = 1\n",
            config(&services, &SOURCES, &[("billing", cached)])
        ),
    );
    let first: Vec<Vec<u8>> = ["billing", "domains"]
        .iter()
        .map(|s| ev(s, 5, "u1", "a1", None))
        .collect();
    app.engine
        .process("t", 0, &records(0, first))
        .expect("batch");
    std::thread::sleep(std::time::Duration::from_millis(5));
    services.get("billing").set_down(true);
    services.get("domains").set_down(true);
    let second = vec![
        ev("billing", 6, "u1", "a1", None),
        ev("domains", 6, "u1", "a1", None),
    ];
    let c = app
        .engine
        .process("t", 0, &records(2, second))
        .expect("batch")
        .total();
    // billing: the stale cached entity stands in; domains: no cache, so
    // the event waits for a retry, which fails too: dead letter.
    assert_eq!((c.applied, c.dead_lettered), (1, 0), "{c:?}");
    app.engine.commit().expect("commit");
    assert_eq!(app.engine.store().retry_count(), 1);
    let later = projector_core::now_ms() + 60_000;
    assert_eq!(app.engine.retry_due(later).expect("retry"), 1);
    assert_eq!(app.engine.store().retry_count(), 0);
    let r = row(&app, "u1:a1", 0);
    assert_eq!(r["amount"]["cents"], 500);
    assert_eq!(r["domain"], "a1-v5.example.com");
    let stats: std::collections::HashMap<&str, _> = app.fetcher.stats().into_iter().collect();
    let count =
        |service: &str,
         f: fn(&projector_host::fetch::ServiceStats) -> &std::sync::atomic::AtomicU64| {
            f(&stats[service]).load(std::sync::atomic::Ordering::Relaxed)
        };
    assert_eq!(count("billing", |s| &s.fetches), 2);
    assert_eq!(count("billing", |s| &s.stale_served), 1);
    assert_eq!(count("domains", |s| &s.errors), 2);
    assert_eq!(
        count("domains", |s| &s.requests),
        5,
        "one, then two attempts, twice"
    );
    let dead = dead_letters(&app);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].offset, 3);
    assert!(dead[0].error.contains("unavailable"), "{}", dead[0].error);
    assert!(
        dead[0].error.contains("after 2 attempts"),
        "{}",
        dead[0].error
    );
    assert!(dead[0].error.contains("503"), "{}", dead[0].error);
}

#[test]
fn a_source_slower_than_its_timeout_fails_its_event_while_other_keys_flow() {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        for asset in ["a1", "a2"] {
            services
                .get(source)
                .set(asset, vec![entity(source, 1, asset)]);
        }
    }
    // Twice the timeout: each attempt times out.
    services.get("sites").set_delay_ms(600);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    let batch = vec![
        ev("sites", 1, "u1", "a1", None),
        ev("subscriptions", 1, "u2", "a2", None),
        ev("billing", 1, "u2", "a2", None),
    ];
    let c = app
        .engine
        .process("t", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.dead_lettered), (2, 0), "{c:?}");
    assert_eq!(row(&app, "u2:a2", 0)["plan"], "plan-v1");
    // The slow key's event waits for a retry, for the fetch timing out:
    // waiting on it did not count as guest time ("out of time").
    app.engine.commit().expect("commit");
    let queued = app
        .engine
        .store()
        .due_retries(i64::MAX, 10)
        .expect("retries");
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].key.as_str(), queued[0].attempt), ("u1:a1", 2));
    assert!(queued[0].error.contains("timed out"), "{}", queued[0].error);
    assert!(
        !queued[0].error.contains("out of time"),
        "{}",
        queued[0].error
    );
    assert!(dead_letters(&app).is_empty());
}

#[test]
fn a_service_off_the_allow_list_is_refused_without_a_connection() {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        services
            .get(source)
            .set("a1", vec![entity(source, 1, "a1")]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = ["subscriptions", "billing", "domains"];
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &allowed, &[]));
    let batch = vec![
        ev("sites", 1, "u1", "a1", None),
        ev("billing", 1, "u1", "a1", None),
    ];
    let c = app
        .engine
        .process("t", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.dead_lettered), (1, 1));
    let dead = dead_letters(&app);
    assert!(
        dead[0].error.contains("not allowed: sites"),
        "{}",
        dead[0].error
    );
    assert_eq!(
        services.get("sites").requests(),
        0,
        "no connection was made"
    );
}

#[test]
fn trial_days_left_change_with_the_read_time_alone() {
    let services = Services::start(&SOURCES);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    let trial = json!({"version": 1, "product": "site-plan", "plan": "premium",
                       "trial_end_ms": 14 * DAY, "expires_ms": 365 * DAY});
    app.engine
        .process(
            "t",
            0,
            &records(0, vec![ev("subscriptions", 1, "u1", "a1", Some(trial))]),
        )
        .expect("batch");
    let at = |now| row(&app, "u1:a1", now);
    assert_eq!(at(0)["trial_days_left"], 14);
    assert_eq!(at(0)["status"], "trial");
    assert_eq!(at(10 * DAY)["trial_days_left"], 4);
    assert_eq!(at(20 * DAY)["status"], "active");
    assert_eq!(at(20 * DAY)["trial_days_left"], Value::Null);
    assert_eq!(at(400 * DAY)["status"], "expired");
}

#[test]
fn recollect_rebuilds_rows_from_the_sources() {
    let services = Services::start(&SOURCES);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &[PLUGIN], &config(&services, &SOURCES, &[]));
    let mut batch = Vec::new();
    for (user, asset) in [("u1", "a1"), ("u2", "a2"), ("u3", "a3")] {
        for source in SOURCES {
            batch.push(ev(source, 1, user, asset, Some(entity(source, 1, asset))));
        }
    }
    app.engine
        .process("t", 0, &records(0, batch))
        .expect("batch");
    // The sources moved on without events (a source model change).
    for source in SOURCES {
        for asset in ["a1", "a2", "a3"] {
            services
                .get(source)
                .set(asset, vec![entity(source, 9, asset)]);
        }
    }
    services.get("domains").set("a3", vec![]);
    let mut seen = Vec::new();
    let summary = app
        .engine
        .recollect(PLUGIN, None, |done, total| seen.push((done, total)))
        .expect("recollect");
    assert_eq!((summary.keys, summary.rebuilt), (3, 3), "{summary:?}");
    assert_eq!(seen.last(), Some(&(3, 3)), "progress reaches the end");
    // The plugin names a recollection's four fetches ahead: each source's
    // answers for the three rows were fetched at once.
    for (service, stats) in app.fetcher.stats() {
        let ahead = stats.prefetched.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ahead, 3, "{service}: fetched ahead (a 404 is an answer)");
    }
    let r = row(&app, "u1:a1", 0);
    assert_eq!(r["plan"], "plan-v9");
    assert_eq!(r["domain"], "a1-v9.example.com");
    assert_eq!(
        row(&app, "u3:a3", 0)["domain"],
        Value::Null,
        "a 404 drops the part"
    );

    // Only the keys given; a source down fails the key and leaves its row.
    services.get("billing").set_down(true);
    for source in SOURCES {
        services
            .get(source)
            .set("a2", vec![entity(source, 10, "a2")]);
    }
    let summary = app
        .engine
        .recollect(PLUGIN, Some(vec!["u2:a2".into()]), |_, _| {})
        .expect("recollect");
    assert_eq!((summary.keys, summary.rebuilt), (1, 0));
    assert!(summary.failed[0].1.contains("billing"), "{summary:?}");
    assert_eq!(row(&app, "u2:a2", 0)["plan"], "plan-v9");
}

#[test]
fn a_running_pipeline_retries_by_itself_and_converges() {
    let services = Services::start(&SOURCES);
    services.get("billing").set(
        "a1",
        vec![
            entity("billing", 1, "a1"),
            entity("billing", 1, "a1"),
            entity("billing", 1, "a1"),
            entity("billing", 1, "a1"),
            entity("billing", 2, "a1"),
        ],
    );
    let s = projector_tests::Served::start(
        &[PLUGIN],
        &format!(
            "{}[retry]\ndelay_ms = 20\n",
            config(&services, &SOURCES, &[])
        ),
    );
    let event = String::from_utf8(ev("billing", 2, "u1", "a1", None)).expect("utf-8");
    s.ingest(&[event]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/u1:a1"));
        if status == 200 && body["answer"]["amount"]["cents"] == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(s.metric("projector_retries_total", &format!("plugin=\"{PLUGIN}\"")) >= 1.0);
    assert_eq!(s.metric("projector_retry_queue", ""), 0.0);
}

#[test]
fn the_recollect_command_reports_what_it_rebuilt() {
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        services
            .get(source)
            .set("a1", vec![entity(source, 4, "a1")]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    projector_tests::write_config(
        dir.path(),
        &[PLUGIN],
        &format!(
            "[http]\nlisten = \"off\"\n{}",
            config(&services, &SOURCES, &[])
        ),
    );
    let events: Vec<String> = SOURCES
        .iter()
        .map(|s| String::from_utf8(ev(s, 1, "u1", "a1", Some(entity(s, 1, "a1")))).expect("utf-8"))
        .collect();
    projector_tests::write_ndjson(&dir.path().join("events.ndjson"), &events);
    let projector = |args: &[&str]| {
        std::process::Command::new(projector_tests::projector_bin())
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("run projector")
    };
    let o = projector(&["run", "--ingest", "events.ndjson", "--exit-when-idle"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = projector(&["recollect", PLUGIN]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("keys 1, rebuilt 1, unchanged 0, deleted 0, failed 0"),
        "{out}"
    );
    let o = projector(&["get", PLUGIN, "u1:a1"]);
    let view: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(view["view"]["plan"], "plan-v4");
    // A key whose source fails: reported, and a failing exit status.
    services.get("sites").set_down(true);
    let o = projector(&["recollect", PLUGIN, "u1:a1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("u1:a1: "));
}

/// One service down for 10 s while id-only events flow: its breaker
/// opens (fetches refused at once, no request) and closes once it
/// answers again; its events wait in the retry path meanwhile without
/// using up their attempts (five attempts from 200 ms would be spent in
/// about 6 s), so nothing is dead-lettered, and every row ends as the
/// newest entities say.
#[test]
fn a_service_down_for_ten_seconds_opens_its_breaker_and_dead_letters_nothing() {
    use std::time::{Duration, Instant};
    const ASSETS: u64 = 40;
    let services = Services::start(&SOURCES);
    let set_all = |version: u64| {
        for source in SOURCES {
            for a in 0..ASSETS {
                let asset = format!("a{a}");
                services
                    .get(source)
                    .set(&asset, vec![entity(source, version, &asset)]);
            }
        }
    };
    set_all(1);
    let s = projector_tests::Served::start(
        &[PLUGIN],
        &format!(
            "{}[retry]\ndelay_ms = 200\n",
            config(&services, &SOURCES, &[])
        ),
    );
    let round = |version: u64| {
        set_all(version);
        let events: Vec<String> = (0..ASSETS)
            .flat_map(|a| {
                SOURCES.map(|source| {
                    let (user, asset) = (format!("u{a}"), format!("a{a}"));
                    String::from_utf8(ev(source, version, &user, &asset, None)).expect("utf-8")
                })
            })
            .collect();
        s.ingest(&events);
    };
    let started = Instant::now();
    let mut version = 1;
    let mut down = false;
    let mut opened_seen = false;
    while started.elapsed() < Duration::from_secs(15) {
        let t = started.elapsed();
        // Billing is down from 2 s to 12 s.
        let should = t >= Duration::from_secs(2) && t < Duration::from_secs(12);
        if should != down {
            services.get("billing").set_down(should);
            down = should;
        }
        round(version);
        version += 1;
        opened_seen |= s.metric("projector_fetch_breaker_open", "service=\"billing\"") == 1.0;
        std::thread::sleep(Duration::from_millis(200));
    }
    services.get("billing").set_down(false);
    let last = version - 1;
    assert!(opened_seen, "the breaker was never seen open");
    // The operators' overview names it, with its openings.
    let (_, overview) = s.get("/v1/admin/overview");
    let billing = overview["services"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["service"] == "billing").cloned())
        .expect("billing in the overview");
    assert!(billing["breaker_opened"].as_u64() >= Some(1), "{billing}");
    let refused = s.metric("projector_fetch_refused_total", "service=\"billing\"");
    assert!(refused > 0.0, "no fetch refused while open");
    // Converged: every row as the newest entities say, nothing dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in 0..ASSETS {
        let key = format!("u{a}:a{a}");
        loop {
            let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/{key}"));
            let want = json!({"cents": 100 * last, "currency": "EUR"});
            if status == 200
                && body["answer"]["amount"] == want
                && body["answer"]["plan"] == format!("plan-v{last}")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} never converged: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let dead = s.metric(
        "projector_events_total",
        &format!("plugin=\"{PLUGIN}\",outcome=\"dead_lettered\""),
    );
    assert_eq!(dead, 0.0, "an outage dead-lettered events");
    assert_eq!(
        s.metric("projector_fetch_breaker_open", "service=\"billing\""),
        0.0
    );
    assert!(
        s.metric(
            "projector_fetch_breaker_opened_total",
            "service=\"billing\""
        ) >= 1.0
    );
    println!(
        "billing down 10 s: breaker opened {} times, {refused} fetches refused, {} retries, 0 dead letters",
        s.metric("projector_fetch_breaker_opened_total", "service=\"billing\""),
        s.metric("projector_retries_total", &format!("plugin=\"{PLUGIN}\""))
    );
}

/// A build of the plugin with another content id: the same component
/// with a custom section appended (what a rebuilt, unchanged plugin is).
fn another_build(bytes: &[u8]) -> Vec<u8> {
    let name = b"projector-test";
    let payload = b"another build";
    let size = 1 + name.len() + payload.len();
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(size as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// A shadow rebuilt from the log with `record_fetches`: every fetch is
/// answered from the live path's record (no request reaches a service)
/// and its views equal the live ones, though a service has corrected its
/// answers since; without the record, the rebuild asks the services again
/// and differs from the live views where the answers changed.
#[test]
fn a_shadow_rebuild_takes_the_recorded_answers_and_sees_what_the_live_path_saw() {
    use std::time::{Duration, Instant};
    const ASSETS: u64 = 10;
    let (bytes, _) = projector_tests::component(PLUGIN);
    for recorded in [true, false] {
        let services = services_at_first_versions(ASSETS);
        let record = if recorded {
            "record_fetches = true\n"
        } else {
            ""
        };
        let s = projector_tests::Served::start(
            &[PLUGIN],
            &format!("{}{record}", config(&services, &SOURCES, &[])),
        );
        let events = first_versions(ASSETS);
        let token = s.ingest(&events);
        let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/u0:a0?token={token}"));
        assert_eq!(status, 200, "{body}");
        // Billing corrects its amounts without an event.
        for a in 0..ASSETS {
            let mut corrected = entity("billing", 1, &format!("a{a}"));
            corrected["amount_cents"] = json!(999);
            services
                .get("billing")
                .set(&format!("a{a}"), vec![corrected]);
        }
        let requests = || -> u64 { SOURCES.iter().map(|n| services.get(n).requests()).sum() };
        let before = requests();
        let (status, body) = s.post(
            &format!("/v1/admin/plugins/{PLUGIN}?mode=shadow&method=rebuild"),
            another_build(&bytes),
        );
        assert_eq!(status, 200, "{body}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.get(&format!("/v1/admin/plugins/{PLUGIN}/shadow")).1["phase"] != "following" {
            assert!(Instant::now() < deadline, "the shadow never followed");
            std::thread::sleep(Duration::from_millis(50));
        }
        let asked = requests() - before;
        let (status, c) = s.post(
            &format!("/v1/admin/plugins/{PLUGIN}/compare?sample=100"),
            "",
        );
        assert_eq!(status, 200, "{c}");
        let from_record = s.metric("projector_fetch_from_record_total", "service=\"billing\"");
        println!(
            "record_fetches = {recorded}: the rebuild sent {asked} requests, {from_record} billing fetches answered from the record; {} of {} keys differ from the live views",
            c["mismatched"], c["compared"]
        );
        if recorded {
            assert_eq!(asked, 0, "a rebuild with the record asks no service");
            assert_eq!(c["mismatched"], 0, "{c}");
            assert!(from_record >= ASSETS as f64);
        } else {
            assert!(asked >= ASSETS * 4, "the rebuild asks the services again");
            assert_eq!(c["mismatched"], json!(ASSETS), "{c}");
        }
        assert_eq!(c["compared"], json!(ASSETS), "{c}");
    }
}

/// Many keys' fetches waiting at once (eight workers, services answering
/// after 2 ms): each key's events still apply in order (none is skipped
/// as older than one applied before it), and every row ends as the
/// newest entities say (the seed-002 model's fold).
#[test]
fn each_keys_events_apply_in_order_while_other_keys_fetches_are_in_flight() {
    const ASSETS: u64 = 40;
    const VERSIONS: u64 = 3;
    let services = Services::start(&SOURCES);
    for source in SOURCES {
        services.get(source).set_delay_ms(2);
        for a in 0..ASSETS {
            let asset = format!("a{a}");
            // Each version answered in turn, the newest staying (a replica
            // catching up): the fetch for version v sees v.
            let answers = (1..=VERSIONS).map(|v| entity(source, v, &asset)).collect();
            services.get(source).set(&asset, answers);
        }
    }
    let s = projector_tests::Served::start(
        &[PLUGIN],
        &format!(
            "[engine]\nworkers = 8\n{}",
            config(&services, &SOURCES, &[])
        ),
    );
    // Every key's versions in order, the keys interleaved.
    let events: Vec<String> = (1..=VERSIONS)
        .flat_map(|v| {
            (0..ASSETS).flat_map(move |a| {
                SOURCES.map(|source| {
                    let (user, asset) = (format!("u{a}"), format!("a{a}"));
                    String::from_utf8(ev(source, v, &user, &asset, None)).expect("utf-8")
                })
            })
        })
        .collect();
    let token = s.ingest(&events);
    for a in 0..ASSETS {
        let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/u{a}:a{a}?token={token}"));
        assert_eq!(status, 200, "{body}");
        let r = &body["answer"];
        assert_eq!(r["plan"], format!("plan-v{VERSIONS}"), "{body}");
        assert_eq!(r["amount"]["cents"], json!(100 * VERSIONS), "{body}");
        assert_eq!(
            r["domain"],
            format!("a{a}-v{VERSIONS}.example.com"),
            "{body}"
        );
        assert_eq!(
            r["site"]["name"],
            format!("site a{a} v{VERSIONS}"),
            "{body}"
        );
    }
    let outcome = |o: &str| {
        s.metric(
            "projector_events_total",
            &format!("plugin=\"{PLUGIN}\",outcome=\"{o}\""),
        )
    };
    let n = (ASSETS * VERSIONS * 4) as f64;
    assert_eq!(outcome("applied"), n, "every event applied");
    assert_eq!(
        outcome("skipped"),
        0.0,
        "none applied out of its key's order"
    );
    assert_eq!(outcome("dead_lettered"), 0.0);
}

/// Fetches named ahead go to a service's batch endpoint, `batch_max`
/// paths a request, while the batch is folded: 60 id-only events for 30
/// assets take two requests per service instead of 60 fetches in all; a
/// lagging replica answered through the batch is still asked again
/// (fresh, past the batch) until it is new enough; the rows are the
/// newest entities, as a fold of the events with their entities gives.
#[test]
fn fetches_named_ahead_go_to_the_batch_endpoint_many_to_a_request() {
    let services = Services::start(&SOURCES);
    let assets: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
    for source in ["billing", "domains"] {
        for a in &assets {
            services.get(source).set(a, vec![entity(source, 2, a)]);
        }
    }
    // a0's billing: a replica one version behind answers first.
    services.get("billing").set(
        "a0",
        vec![entity("billing", 1, "a0"), entity("billing", 2, "a0")],
    );
    let batched = "batch_path = \"/batch\"\nbatch_max = 16";
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &[PLUGIN],
        &config(
            &services,
            &SOURCES,
            &[("billing", batched), ("domains", batched)],
        ),
    );
    let mut batch = Vec::new();
    for a in &assets {
        batch.push(ev("billing", 2, "u1", a, None));
        batch.push(ev("domains", 2, "u1", a, None));
    }
    let c = app
        .engine
        .process("t", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.dead_lettered), (60, 0), "{c:?}");
    for a in &assets {
        let r = row(&app, &format!("u1:{a}"), 0);
        assert_eq!(r["amount"]["cents"], 200, "{a}: {r}");
        assert_eq!(r["domain"], format!("{a}-v2.example.com"), "{a}: {r}");
    }
    assert_eq!(
        services.get("domains").requests(),
        2,
        "30 paths, 16 per request"
    );
    assert_eq!(
        services.get("billing").requests(),
        3,
        "two batches, and a0 asked again past its lagging answer"
    );
    let stats: std::collections::HashMap<&str, _> = app.fetcher.stats().into_iter().collect();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats["domains"].batched), 30);
    assert_eq!(load(&stats["domains"].prefetched), 30);
    assert_eq!(load(&stats["billing"].batched), 30);
    assert!(dead_letters(&app).is_empty());
}

/// An answer fetched ahead that made an event fail as transient is not
/// served again: the next event of the same entity in the batch asks the
/// service. Billing's replica answers version 1 first (behind both
/// events), then version 3; with no refetches, event v2 fails on the
/// answer fetched ahead and waits for a retry, and event v3 of the same
/// asset, in the same batch, gets version 3 from the service.
#[test]
fn an_answer_fetched_ahead_that_failed_an_event_is_not_served_again() {
    let services = Services::start(&SOURCES);
    services.get("billing").set(
        "a1",
        vec![entity("billing", 1, "a1"), entity("billing", 3, "a1")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &[PLUGIN],
        &format!(
            "{}settings = {{ refetches = 0 }}\n",
            config(&services, &SOURCES, &[])
        ),
    );
    let batch = vec![
        ev("billing", 2, "u1", "a1", None),
        ev("billing", 3, "u1", "a1", None),
    ];
    let c = app
        .engine
        .process("t", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!((c.applied, c.dead_lettered), (1, 0), "{c:?}");
    assert_eq!(row(&app, "u1:a1", 0)["amount"]["cents"], 300);
    assert_eq!(
        services.get("billing").requests(),
        2,
        "fetched ahead once, asked again once"
    );
    app.engine.commit().expect("commit");
    assert_eq!(app.engine.store().retry_count(), 1, "v2 waits for a retry");
}

/// The first 16 hex digits of the SHA-256 of `entity` as the test
/// services write it: how a view's history names an answer.
fn digest(entity: &Value) -> String {
    use sha2::Digest;
    let body = serde_json::to_vec(entity).expect("json");
    hex::encode(&sha2::Sha256::digest(&body)[..8])
}

/// With `record_fetches` and `history`, each change a view's history
/// keeps names the fetched answers it was built from: its own key's
/// (never another key's of the same batch), with the digest of the body
/// the service answered then, so a change made after a service changed
/// its answer names the new one.
#[test]
fn a_views_history_names_the_recorded_answers_each_change_was_built_from() {
    const ASSETS: u64 = 6;
    let services = services_at_first_versions(ASSETS);
    let s = projector_tests::Served::start(
        &[PLUGIN],
        &format!(
            "{}record_fetches = true\nhistory = {{ versions = 10, ms = 604800000 }}\n",
            config(&services, &SOURCES, &[])
        ),
    );
    let events = first_versions(ASSETS);
    let token = s.ingest(&events);
    let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/u0:a0?token={token}"));
    assert_eq!(status, 200, "{body}");
    // Billing's answer for a0 changes, then an event says so.
    let newer = entity("billing", 2, "a0");
    services.get("billing").set("a0", vec![newer.clone()]);
    let event = String::from_utf8(ev("billing", 2, "u0", "a0", None)).expect("utf-8");
    let token = s.ingest(&[event]);
    let (status, body) = s.get(&format!("/v1/views/{PLUGIN}/u0:a0?token={token}"));
    assert_eq!(status, 200, "{body}");

    for a in 0..ASSETS {
        let asset = format!("a{a}");
        let (status, history) = s.get(&format!("/v1/views/{PLUGIN}/u{a}:{asset}/history"));
        assert_eq!(status, 200, "{history}");
        let changes = history["changes"].as_array().expect("changes").clone();
        let fetched: Vec<Value> = changes
            .iter()
            .flat_map(|c| c["fetched"].as_array().cloned().unwrap_or_default())
            .collect();
        // Every source's answer for this asset, and nothing of another's.
        for source in SOURCES {
            let path = format!("/{source}/{asset}");
            let first = fetched
                .iter()
                .find(|f| f["path"] == json!(path))
                .unwrap_or_else(|| panic!("u{a}: no answer of {path} in {history}"));
            assert_eq!(first["service"], json!(source), "{first}");
            assert_eq!(first["status"], json!(200), "{first}");
            assert_eq!(first["from_record"], json!(false), "{first}");
            assert_eq!(
                first["digest"],
                json!(digest(&entity(source, 1, &asset))),
                "{path}: the answer the service gave first"
            );
        }
        for f in &fetched {
            let path = f["path"].as_str().expect("path");
            assert!(
                path.ends_with(&format!("/{asset}")),
                "u{a}'s history names another key's answer: {f}"
            );
        }
        if a == 0 {
            let last = changes.last().expect("a change");
            let billing: Vec<&Value> = last["fetched"]
                .as_array()
                .map(|l| l.iter().filter(|f| f["service"] == "billing").collect())
                .unwrap_or_default();
            // (Both rounds may have been committed as one change.)
            let used = billing
                .last()
                .expect("the last change used billing's answer");
            assert_eq!(used["digest"], json!(digest(&newer)), "{last}");
            assert_eq!(last["answer"]["amount"]["cents"], json!(200), "{last}");
        }
    }
}
