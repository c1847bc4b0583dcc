//! Soak of `projector run` on the embedded log: clients POST events (in
//! batches, several at once) and read views while the process is SIGKILLed
//! at random moments and restarted, again and again. A client whose POST
//! got no answer posts the same batch again after the restart, as any
//! client would. At the end every view equals an independent fold of the
//! events, every acknowledged event is in the log exactly once, and the
//! counters show no event applied twice. The last stop is a SIGTERM while
//! busy: it must exit cleanly.
//!
//! `SOAK_KILLS` sets the number of kills (10 here; `./scripts/soak.sh run`
//! runs 100), `SOAK_SEED` the moments.

use projector_tests::{
    assert_inbox_views, fold_inbox, inbox_deliveries, inbox_events, knob, open_app, projector_bin,
    write_config, Api, InboxShape, Projector,
};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tiny deterministic generator for kill moments and batch sizes.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// One client: the events of its sites, posted in order, a batch retried
/// until it is answered 2xx.
struct Client {
    events: Vec<String>,
    /// Events before it are acknowledged.
    acked: usize,
    /// The batch in flight when the process died: posted again.
    pending: Option<usize>,
    rng: Lcg,
}

#[derive(Default)]
struct Tally {
    acknowledged: AtomicU64,
    posts_unanswered: AtomicU64,
    reposted_duplicates: AtomicU64,
    reads: AtomicU64,
}

/// Post the client's next batch (or the unanswered one again) until
/// `stop`, the events run out, or the process stops answering.
fn drive(client: &Mutex<Client>, api: &Api, stop: &AtomicBool, tally: &Tally) {
    let mut c = client.lock().expect("client");
    while !stop.load(Ordering::Relaxed) && c.acked < c.events.len() {
        let again = c.pending.is_some();
        let end = match c.pending {
            Some(end) => end,
            None => (c.acked + 20 + c.rng.below(300) as usize).min(c.events.len()),
        };
        c.pending = Some(end);
        let body = c.events[c.acked..end].join("\n");
        let answer = api
            .client
            .post(api.url("/v1/events"))
            .body(body)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text());
        match answer {
            Ok(text) => {
                let a: serde_json::Value = serde_json::from_str(&text).expect("a JSON answer");
                let duplicates = a["duplicates"].as_u64().expect("duplicates");
                assert!(again || duplicates == 0, "a first post had duplicates: {a}");
                tally
                    .reposted_duplicates
                    .fetch_add(duplicates, Ordering::Relaxed);
                tally
                    .acknowledged
                    .fetch_add((end - c.acked) as u64, Ordering::Relaxed);
                c.acked = end;
                c.pending = None;
                // A client's pace: the ingest spreads over the kills.
                let pause = 100 + c.rng.below(100);
                std::thread::sleep(Duration::from_millis(pause));
            }
            Err(e) => {
                assert!(
                    e.status().is_none_or(|s| s.as_u16() == 503),
                    "a POST answered {e}"
                );
                tally.posts_unanswered.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Read views of `keys` until `stop`: a view or not found, never a 5xx.
fn read(keys: &[String], api: &Api, stop: &AtomicBool, tally: &Tally) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[i % keys.len()];
        i += 1;
        match api.try_get(&format!("/v1/views/inbox-unread/{key}")) {
            Ok(r) => {
                let status = r.status;
                assert!(
                    matches!(status, 200 | 404 | 503),
                    "a read of {key} answered {status}"
                );
                tally.reads.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Run the clients and a reader against a fresh process until every
/// client is done or `kill_after` passes (then SIGKILL and reap it); the
/// process when it was not killed.
fn round(
    config: &Path,
    clients: &[Arc<Mutex<Client>>],
    keys: &Arc<Vec<String>>,
    kill_after: Option<Duration>,
    tally: &Arc<Tally>,
) -> Option<Projector> {
    let mut run = Projector::run(config);
    // Each request given up after 20 s: a killed process answers nothing.
    let api = Api::with_timeout(run.base.clone(), Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in clients {
        let (c, api, stop, tally) = (c.clone(), api.clone(), stop.clone(), tally.clone());
        threads.push(std::thread::spawn(move || drive(&c, &api, &stop, &tally)));
    }
    let reader = {
        let (keys, api, stop, tally) = (keys.clone(), api.clone(), stop.clone(), tally.clone());
        std::thread::spawn(move || read(&keys, &api, &stop, &tally))
    };
    let running = match kill_after {
        Some(after) => {
            std::thread::sleep(after);
            run.sigkill();
            None
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(300);
            while threads.iter().any(|t| !t.is_finished()) {
                assert!(Instant::now() < deadline, "clients did not finish");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(run)
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    reader.join().expect("reader");
    running
}

#[test]
fn run_killed_again_and_again_under_ingest_loses_nothing_and_doubles_nothing() {
    let kills = knob("SOAK_KILLS", 10);
    let seed = knob("SOAK_SEED", 20261202);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &["inbox-unread"],
        "[engine]\ncommit_interval_ms = 50\ncompile_cache_dir = \"compiled\"\n\
         [plugins.inbox-unread]\npopulation = \"eager\"\nsettings = { max_unread = 1000000 }\n",
    );

    // Three clients, each with the events of its own sites, so each view
    // sees its events in order whatever the clients' interleaving.
    let events = inbox_events(InboxShape {
        sites: 60,
        users: 600,
        events: (kills as usize + 1) * 2500,
        seed,
    });
    let mut rng = Lcg(seed);
    let mut per_client: HashMap<usize, Vec<String>> = HashMap::new();
    for e in &events {
        let v: serde_json::Value = serde_json::from_str(e).expect("json");
        let site = v["payload"]["site_id"].as_str().expect("site").to_string();
        let n: usize = site
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
        per_client.entry(n % 3).or_default().push(e.clone());
    }
    let clients: Vec<Arc<Mutex<Client>>> = per_client
        .into_values()
        .map(|events| {
            Arc::new(Mutex::new(Client {
                events,
                acked: 0,
                pending: None,
                rng: Lcg(rng.below(u64::MAX)),
            }))
        })
        .collect();
    let model = fold_inbox(&events);
    let keys: Arc<Vec<String>> = Arc::new(model.keys().take(50).cloned().collect());
    let tally = Arc::new(Tally::default());

    for _ in 0..kills {
        let after = Duration::from_millis(300 + rng.below(1200));
        round(&config, &clients, &keys, Some(after), &tally);
    }
    // The last round: every client done, then SIGTERM while the runtime
    // may still be applying; it drains and exits 0.
    let run = round(&config, &clients, &keys, None, &tally).expect("not killed");
    run.stop();
    // Apply what is left, then look.
    let out = Command::new(projector_bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--exit-when-idle", "--listen", "off"])
        .output()
        .expect("run --exit-when-idle");
    assert!(out.status.success(), "{out:?}");

    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\nsettings = { max_unread = 1000000 }\n",
    );
    let log = app.open_log().expect("log");
    let mut ids = BTreeSet::new();
    let mut records = 0u64;
    for p in 0..log.partitions() {
        for r in log.read(p, 0, usize::MAX).expect("read") {
            let e = r.decode(app.config.format).expect("event");
            ids.insert(e.id);
            records += 1;
        }
    }
    let acknowledged = tally.acknowledged.load(Ordering::Relaxed);
    let all: BTreeSet<String> = events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).expect("json");
            v["id"].as_str().expect("id").to_string()
        })
        .collect();
    let lost = all.difference(&ids).count();
    let doubled = records - ids.len() as u64;
    println!(
        "soak run: {kills} kills (seed {seed}), {acknowledged} events acknowledged, \
         {} posts unanswered and posted again ({} of their events already in), \
         {} reads, lost {lost}, doubled {doubled}",
        tally.posts_unanswered.load(Ordering::Relaxed),
        tally.reposted_duplicates.load(Ordering::Relaxed),
        tally.reads.load(Ordering::Relaxed),
    );
    assert_eq!(
        acknowledged,
        events.len() as u64,
        "every event acknowledged"
    );
    assert_eq!((lost, doubled), (0, 0), "lost, doubled");

    let c = app
        .engine
        .projection("inbox-unread")
        .expect("loaded")
        .counters();
    let expected = inbox_deliveries(&events);
    assert_eq!(c.received, expected, "each delivery counted once: {c:?}");
    assert_eq!(c.applied, expected, "each delivery applied once: {c:?}");
    assert_eq!((c.invalidated, c.dead_lettered), (0, 0), "{c:?}");
    assert_inbox_views(&app.engine, &model);
}

/// `projector kafka-dev` in its own process (`topic` as `name:partitions`,
/// group `views`), and the config of a `run` of `plugin` on it in a
/// temporary directory: `plugin_toml` goes in its `[plugins.*]` table,
/// `more` at the end.
struct KafkaSoak {
    dir: tempfile::TempDir,
    broker: Projector,
    bootstrap: String,
    config: std::path::PathBuf,
}

impl KafkaSoak {
    fn start(plugin: &str, topic: &str, plugin_toml: &str, more: &str) -> KafkaSoak {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Projector::kafka_dev(dir.path(), &["--topics", topic, "--group", "views"]);
        let bootstrap = broker.announced().to_string();
        let name = topic.split(':').next().expect("a topic name");
        let config = write_config(
            dir.path(),
            &[plugin],
            &format!(
                "[engine]\ncommit_interval_ms = 100\ncompile_cache_dir = \"compiled\"\n\
                 [plugins.{plugin}]\n{plugin_toml}\
                 [source.kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"views\"\n\
                 topics = [\"{name}\"]\nproperties = {{ \"session.timeout.ms\" = \"6000\" }}\n{more}"
            ),
        );
        KafkaSoak {
            dir,
            broker,
            bootstrap,
            config,
        }
    }
}

/// Start `run` on `config` and SIGKILL it 2–5 s later, `kills` times
/// (each restart joins the consumer group again, about 3 s).
fn kill_runs(config: &Path, kills: u64, rng: &mut Lcg) {
    for _ in 0..kills {
        let mut run = Projector::run(config);
        std::thread::sleep(Duration::from_millis(2000 + rng.below(3000)));
        run.sigkill();
    }
}

/// A poison event: a read of a conversation on a site with an empty id,
/// which the inbox refuses (dead letter, stage `keys`).
fn poison(n: u64) -> String {
    serde_json::json!({"id": format!("poison-{n}"), "type": "ConversationRead", "source": "inbox",
        "key": format!("p{n}"), "version": 1, "time": 0,
        "payload": {"site_id": "", "conversation_id": "c", "user_id": "u"}})
    .to_string()
}

/// `run` on Kafka (`projector kafka-dev` in its own process) SIGKILLed
/// again and again while a producer writes: at the end the views equal the
/// fold, each delivery was applied once, every poison event is in the
/// dead-letter topic exactly once, and the spool is empty.
/// `SOAK_KAFKA_KILLS` sets the kills (3 here: each restart joins the
/// consumer group again, about 3 s).
#[test]
fn run_on_kafka_killed_again_and_again_loses_nothing_and_doubles_nothing() {
    let kills = knob("SOAK_KAFKA_KILLS", 3);
    let seed = knob("SOAK_SEED", 20261202);
    let mut rng = Lcg(seed);
    let KafkaSoak {
        dir,
        broker,
        bootstrap,
        config,
    } = KafkaSoak::start(
        "inbox-unread",
        "inbox:8",
        "population = \"eager\"\nsettings = { max_unread = 1000000 }\n",
        "",
    );

    let events = inbox_events(InboxShape {
        sites: 40,
        users: 400,
        // The mock cluster keeps about 5 MiB per partition.
        events: (kills as usize + 1) * 1500,
        seed,
    });
    let poisons: Vec<String> = (0..kills + 1).map(poison).collect();
    // The producer: the events in chunks spread over the kills (about
    // 3.5 s each), a poison event after each share.
    let producer = {
        let (bootstrap, events, poisons) = (bootstrap.clone(), events.clone(), poisons.clone());
        std::thread::spawn(move || {
            let share = events.len().div_ceil(poisons.len());
            let chunks = events.len().div_ceil(250) as u64;
            let pause = Duration::from_millis((kills * 3500 / chunks.max(1)).clamp(20, 2000));
            for (part, p) in events.chunks(share).zip(&poisons) {
                for slice in part.chunks(250) {
                    projector_tests::kafka::produce(&bootstrap, "inbox", 8, slice);
                    std::thread::sleep(pause);
                }
                projector_tests::kafka::produce(&bootstrap, "inbox", 8, std::slice::from_ref(p));
            }
        })
    };
    kill_runs(&config, kills, &mut rng);
    producer.join().expect("producer");

    // The last run: until every delivery is in, then SIGTERM.
    let run = Projector::run(&config);
    let expected = inbox_deliveries(&events);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let plugins = run
            .try_get("/v1/plugins")
            .map(|a| a.body)
            .unwrap_or_default();
        let e = &plugins["plugins"][0]["events"];
        if e["received"].as_u64() >= Some(expected + poisons.len() as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {plugins}");
        std::thread::sleep(Duration::from_millis(200));
    }
    run.stop();

    let dlq = projector_tests::kafka::read_all(&bootstrap, "inbox.views.dlq", 8);
    let mut in_dlq: Vec<String> = dlq
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            v["event"]["id"]
                .as_str()
                .or(v["id"].as_str())
                .map(str::to_string)
        })
        .collect();
    in_dlq.sort();
    broker.stop();

    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\nsettings = { max_unread = 1000000 }\n",
    );
    let c = app
        .engine
        .projection("inbox-unread")
        .expect("loaded")
        .counters();
    println!(
        "soak kafka: {kills} kills (seed {seed}), {} events and {} poison events produced, \
         {} dead-letter records, {} left in the spool, counters {c:?}",
        events.len(),
        poisons.len(),
        dlq.len(),
        app.engine.store().outbox_count()
    );
    assert_eq!(c.applied, expected, "each delivery applied once: {c:?}");
    assert_eq!(c.received, expected + poisons.len() as u64, "{c:?}");
    assert_eq!(c.dead_lettered, poisons.len() as u64, "{c:?}");
    let mut want: Vec<String> = (0..poisons.len() as u64)
        .map(|n| format!("poison-{n}"))
        .collect();
    want.sort();
    assert_eq!(
        in_dlq, want,
        "each poison event in the dead-letter topic once: {dlq:?}"
    );
    assert_eq!(app.engine.store().outbox_count(), 0, "the spool is empty");
    assert_inbox_views(&app.engine, &fold_inbox(&events));
}

/// `run` on Kafka SIGKILLed again and again while its enrichment service
/// answers some fetches with an entity older than the event (a lagging
/// replica): those events fail transiently and go through the retry
/// topic, across the kills. At the end every row holds its asset's last
/// event and the service's entity, nothing is dead-lettered, and the spool
/// is empty. The tally says how many records the retry topic carried and
/// how many of them were sent twice (the spool sends at least once; a
/// retry sent twice is applied once).
#[test]
fn run_on_kafka_killed_while_retries_flow_through_the_retry_topic_loses_nothing() {
    use projector_tests::services::Services;
    const ASSETS: u64 = 40;
    let kills = knob("SOAK_KAFKA_KILLS", 3);
    let seed = knob("SOAK_SEED", 20261202);
    let mut rng = Lcg(seed);
    let services = Services::start(&["subscriptions", "billing", "domains", "sites"]);
    let current = |n: u64| {
        serde_json::json!({"version": 1_000_000, "payment_status": "paid", "next_charge_ms": 0,
                           "amount_cents": 4200 + n, "currency": "EUR"})
    };
    for n in 0..ASSETS {
        services
            .get("billing")
            .set(&format!("a{n}"), vec![current(n)]);
    }
    let KafkaSoak {
        dir,
        broker,
        bootstrap,
        config,
    } = KafkaSoak::start(
        "subscriptions",
        "billing:4",
        "services = [\"billing\"]\nsettings = { refetches = 0 }\n\
         retry = { attempts = 20, delay_ms = 100, max_delay_ms = 500 }\n",
        &services.config(&[]),
    );

    // The producer: a round of events (one per asset, versions rising)
    // every 150 ms, over the kills; before every other round, about a
    // quarter of the assets answer their next fetch from a lagging replica.
    let rounds = (kills + 1) * 20;
    let billing = services.get("billing");
    let lagging = |n: u64| {
        vec![
            serde_json::json!({"version": 0, "payment_status": "late", "next_charge_ms": 0,
                               "amount_cents": n, "currency": "EUR"}),
            current(n),
        ]
    };
    let mut lags = Lcg(seed ^ 0x5eed);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for version in 1..=rounds {
                if version % 2 == 0 {
                    for n in 0..ASSETS {
                        if lags.below(4) == 0 {
                            billing.set(&format!("a{n}"), lagging(n));
                        }
                    }
                }
                let batch: Vec<String> = (0..ASSETS)
                    .map(|n| {
                        serde_json::json!({"id": format!("billing-a{n}-{version}"),
                            "type": "BillingChanged", "source": "billing", "key": format!("a{n}"),
                            "version": version, "time": 0,
                            "payload": {"user_id": "u1", "asset_id": format!("a{n}")}})
                        .to_string()
                    })
                    .collect();
                projector_tests::kafka::produce(&bootstrap, "billing", 4, &batch);
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        kill_runs(&config, kills, &mut rng);
    });

    // The last run: until nothing is left to consume, retry or send, then SIGTERM.
    let run = Projector::run(&config);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet = 0;
    while quiet < 3 {
        let text = run.try_get_text("/metrics").unwrap_or_default();
        let sum = |name: &str| -> Option<f64> {
            let values: Vec<f64> = text
                .lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        // Every partition's end known (else its lag is not reported) and
        // nothing behind it.
        let idle = sum("projector_retry_queue") == Some(0.0)
            && sum("projector_kafka_spooled_records") == Some(0.0)
            && sum("projector_kafka_lag_unknown_partitions") == Some(0.0)
            && sum("projector_kafka_lag_records") == Some(0.0);
        quiet = if idle { quiet + 1 } else { 0 };
        assert!(Instant::now() < deadline, "never settled: {text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    run.stop();

    let retried = projector_tests::kafka::read_all(&bootstrap, "billing.views.retry", 4);
    let dlq = projector_tests::kafka::read_all(&bootstrap, "billing.views.dlq", 4);
    let distinct: BTreeSet<(Option<String>, String)> = retried
        .iter()
        .map(|r| (r.key.clone(), r.payload.clone()))
        .collect();
    broker.stop();

    let app = open_app(
        dir.path(),
        &["subscriptions"],
        &format!(
            "[plugins.subscriptions]\nservices = [\"billing\"]\n{}",
            services.config(&[])
        ),
    );
    let c = app
        .engine
        .projection("subscriptions")
        .expect("loaded")
        .counters();
    println!(
        "soak kafka retries: {kills} kills (seed {seed}), {} events produced, {} retry records \
         ({} sent twice), {} dead-letter records, {} left in the spool, fetches {}, counters {c:?}",
        rounds * ASSETS,
        retried.len(),
        retried.len() - distinct.len(),
        dlq.len(),
        app.engine.store().outbox_count(),
        services.get("billing").requests(),
    );
    assert!(!retried.is_empty(), "the retry topic was exercised");
    // Every event and every retry record counted once, across the kills.
    assert_eq!(c.received, rounds * ASSETS + retried.len() as u64, "{c:?}");
    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:?}");
    assert_eq!((c.dead_lettered, c.invalidated), (0, 0), "{c:?}");
    assert_eq!(app.engine.store().outbox_count(), 0, "the spool is empty");
    for n in 0..ASSETS {
        let key = format!("u1:a{n}");
        let v = app
            .engine
            .read("subscriptions", &key, 0)
            .expect("read")
            .unwrap_or_else(|| panic!("no view of {key}"));
        assert_eq!(
            v.versions.get("billing"),
            Some(rounds),
            "{key}: its last event"
        );
        let row = v.json().expect("a valid view renders");
        assert_eq!(row["amount"]["cents"], 4200 + n, "{key}: {row}");
    }
}
