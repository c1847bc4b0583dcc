//! The Kafka source against librdkafka's mock cluster, started by each
//! test: views equal an independent fold, a group shares and hands over
//! partitions without losing or repeating a record, transient failures
//! go through the retry topic and poison ones to the dead-letter topic
//! through the spool, and a slow plugin pauses its partitions.

use projector::engine::Engine;
use projector::plugin::native::NativePlugin;
use projector::plugin::{Limits, SharedCode};
use projector::source::kafka::{header, KafkaConfig, KafkaRun};
use projector::store::Store;
use projector_guest::{Change, Error, Event, Info, Json, Population, Projection, StalePolicy};
use projector_tests::kafka::{cluster, ends, produce, read_all, wait_caught_up};
use projector_tests::{fold_inbox, inbox_events, open_app, rendered, shown, InboxShape};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Times each (instance, event id) reached a plugin: every delivery of a
/// record to a projection routes it once.
static ROUTED: Mutex<BTreeMap<(String, String), u32>> = Mutex::new(BTreeMap::new());
/// Attempts to apply each (instance, event id).
static ATTEMPTS: Mutex<BTreeMap<(String, String), u32>> = Mutex::new(BTreeMap::new());

/// Counts events per key. Type `flaky` fails transiently until its
/// `fail_first` attempts are used up; `poison` fails for good; with
/// `slow_us` every apply takes that long.
struct Counting {
    instance: String,
    fail_first: u32,
    slow_us: u64,
}

impl Projection for Counting {
    type State = u64;

    fn configure(settings: &Json) -> Result<Self, Error> {
        Ok(Counting {
            instance: settings["instance"].as_str().unwrap_or("one").into(),
            fail_first: settings["fail_first"].as_u64().unwrap_or(0) as u32,
            slow_us: settings["slow_us"].as_u64().unwrap_or(0),
        })
    }

    fn info(&self) -> Info {
        Info {
            name: "counting".into(),
            version: "1".into(),
            population: Population::Eager,
            stale_policy: StalePolicy::Ignore,
            render_uses_time: false,
        }
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, Error> {
        *ROUTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((self.instance.clone(), event.id.clone()))
            .or_default() += 1;
        Ok(vec![event.key.clone()])
    }

    fn apply(&self, _key: &str, state: &mut u64, event: &Event) -> Result<Change, Error> {
        if self.slow_us > 0 {
            std::thread::sleep(Duration::from_micros(self.slow_us));
        }
        let attempt = {
            let mut a = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
            let n = a
                .entry((self.instance.clone(), event.id.clone()))
                .or_default();
            *n += 1;
            *n
        };
        match event.event_type.as_str() {
            "flaky" if attempt <= self.fail_first => {
                return Err(Error::transient(format!("not yet (attempt {attempt})")))
            }
            "poison" => return Err(Error::bad_input("poison")),
            _ => {}
        }
        *state += 1;
        Ok(Change::Updated)
    }

    fn render(&self, _key: &str, state: &u64, _now_ms: i64) -> Result<Json, Error> {
        Ok(json!({ "count": state }))
    }

    fn snapshot(&self, _key: &str, answer: &Json) -> Result<(u64, Vec<(String, u64)>), Error> {
        Ok((answer["count"].as_u64().unwrap_or(0), Vec::new()))
    }
}

/// An engine on a fresh store in `dir` with the counting plugin.
fn counting_engine(dir: &Path, settings: Json, retry: &str) -> Arc<Engine> {
    let store = Store::open(&dir.join("data")).expect("store");
    let mut engine = Engine::new(
        store,
        projector::envelope::Format::Auto,
        2,
        Duration::from_millis(200),
    );
    let config = projector::config::Config::parse(retry, "test.toml", dir).expect("config");
    engine.set_retry(config.retry);
    let code: SharedCode = Arc::new(
        NativePlugin::<Counting>::new("counting", &settings, Limits::default()).expect("plugin"),
    );
    engine.add(code, None).expect("add");
    Arc::new(engine)
}

/// `n` events over `keys` keys, ids `{prefix}{i}`, versions increasing.
fn counted_events(prefix: &str, first: u64, n: u64, keys: u64) -> Vec<String> {
    (first..first + n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "type": "counted", "source": "test",
                   "key": format!("k{}", i % keys), "version": i + 1, "time": 1_000 + i,
                   "payload": {}})
            .to_string()
        })
        .collect()
}

fn count_of(engine: &Engine, key: &str) -> u64 {
    engine
        .read("counting", key, 0)
        .expect("read")
        .and_then(|v| v.json())
        .map_or(0, |j| j["count"].as_u64().unwrap_or(0))
}

fn config(bootstrap: &str, topic: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(bootstrap, "views", &[topic]);
    c.properties
        .insert("session.timeout.ms".into(), "6000".into());
    c.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c
}

#[test]
fn a_hundred_thousand_events_over_eight_partitions_match_the_fold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("inbox", 8);
    let bootstrap = c.bootstrap_servers();
    let events = inbox_events(InboxShape {
        sites: 2_000,
        users: 20_000,
        events: 100_000,
        seed: 11,
    });
    produce(&bootstrap, "inbox", 8, &events);
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\npopulation = \"eager\"\nsettings = { max_unread = 1000000 }\n",
    );
    let run = KafkaRun::start(
        app.engine.clone(),
        config(&bootstrap, "inbox"),
        2048,
        Duration::from_millis(500),
    )
    .expect("start");
    let end = ends(&bootstrap, "inbox", 8);
    assert_eq!(end.iter().sum::<u64>(), events.len() as u64);
    wait_caught_up(&app.engine, "inbox", &end, Duration::from_secs(120));
    let totals = run.join().expect("run");
    assert_eq!(totals.records, events.len() as u64);

    let model = fold_inbox(&events);
    assert_eq!(
        app.engine.store().views("inbox-unread").count(),
        model.len()
    );
    for (key, unread) in &model {
        let v = app
            .engine
            .read("inbox-unread", key, 0)
            .expect("read")
            .expect("view");
        assert_eq!(rendered(&v.json().expect("valid")), shown(unread), "{key}");
    }
    // The group's committed offsets followed the store's (lag tools see
    // the progress).
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "views")
        .create()
        .expect("probe");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range("inbox", 0, 7);
    let committed = probe
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(end[e.partition() as usize] as i64),
            "partition {}",
            e.partition()
        );
    }
}

/// Routed count per event id of `instance`.
fn routed(instance: &str) -> BTreeMap<String, u32> {
    ROUTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|((i, _), _)| i == instance)
        .map(|((_, id), n)| (id.clone(), *n))
        .collect()
}

#[test]
fn two_instances_hand_partitions_over_without_loss_or_repeat() {
    let c = cluster("pairs", 8);
    let bootstrap = c.bootstrap_servers();
    let (dir_b, dir_a) = (
        tempfile::tempdir().expect("b"),
        tempfile::tempdir().expect("a"),
    );
    let b = counting_engine(dir_b.path(), json!({"instance": "pair-b"}), "");
    let a = counting_engine(dir_a.path(), json!({"instance": "pair-a"}), "");
    let first = counted_events("p", 0, 30_000, 500);
    produce(&bootstrap, "pairs", 8, &first);

    // B alone takes every partition.
    let run_b = KafkaRun::start(
        b.clone(),
        config(&bootstrap, "pairs"),
        500,
        Duration::from_millis(100),
    )
    .expect("start b");
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed("pair-b").len() < 10_000 {
        assert!(Instant::now() < deadline, "b makes no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A joins: B gives up half its partitions mid-stream.
    let run_a = KafkaRun::start(
        a.clone(),
        config(&bootstrap, "pairs"),
        500,
        Duration::from_millis(100),
    )
    .expect("start a");
    produce(
        &bootstrap,
        "pairs",
        8,
        &counted_events("p", 30_000, 30_000, 500),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed("pair-a").len() < 5_000 {
        assert!(Instant::now() < deadline, "a gets no partitions");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stops mid-stream: B takes its partitions back, from its own offsets.
    produce(
        &bootstrap,
        "pairs",
        8,
        &counted_events("p", 60_000, 20_000, 500),
    );
    run_a.join().expect("a");
    produce(
        &bootstrap,
        "pairs",
        8,
        &counted_events("p", 80_000, 20_000, 500),
    );
    let end = ends(&bootstrap, "pairs", 8);
    wait_caught_up(&b, "pairs", &end, Duration::from_secs(120));
    let stats = run_b.stats.clone();
    run_b.join().expect("b");
    assert!(stats.rebalances.load(std::sync::atomic::Ordering::Relaxed) >= 3);

    // B's views hold every event exactly once.
    for k in 0..500 {
        assert_eq!(count_of(&b, &format!("k{k}")), 200, "k{k}");
    }
    // No record reached a plugin twice in either instance.
    let (rb, ra) = (routed("pair-b"), routed("pair-a"));
    assert_eq!(rb.len(), 100_000);
    assert!(ra.len() >= 5_000);
    for (id, n) in rb.iter().chain(ra.iter()) {
        assert_eq!(*n, 1, "{id} was delivered {n} times");
    }
}

fn flaky_and_poison() -> Vec<String> {
    let mut events = counted_events("r", 0, 200, 20);
    let special = |id: &str, ty: &str, key: &str| {
        json!({"id": id, "type": ty, "source": "test", "key": key, "version": 10_000,
               "time": 5_000, "payload": {}})
        .to_string()
    };
    events.push(special("flaky-1", "flaky", "kf"));
    events.push(special("poison-1", "poison", "kp"));
    events.extend(counted_events("r", 200, 200, 20));
    events
}

#[test]
fn a_failing_event_goes_through_the_retry_topic_and_a_poison_one_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("orders", 4);
    let bootstrap = c.bootstrap_servers();
    // Fails 6 times: each delivery tries 3 times (2 blocking retries), so
    // the first two deliveries fail and go through the retry topic, and
    // the third applies.
    let engine = counting_engine(
        dir.path(),
        json!({"instance": "retry", "fail_first": 6}),
        "[retry]\nblocking = 2\nblocking_delay_ms = 10\nattempts = 3\ndelay_ms = 200\n",
    );
    produce(&bootstrap, "orders", 4, &flaky_and_poison());
    let run = KafkaRun::start(
        engine.clone(),
        config(&bootstrap, "orders"),
        100,
        Duration::from_millis(100),
    )
    .expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_of(&engine, "kf") == 0 {
        assert!(Instant::now() < deadline, "the flaky event never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dlq = loop {
        let dlq = read_all(&bootstrap, "orders.views.dlq", 4);
        if !dlq.is_empty() || Instant::now() > deadline {
            break dlq;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stats = run.stats.clone();
    run.join().expect("run");

    let attempts = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner())
        [&("retry".to_string(), "flaky-1".to_string())];
    assert_eq!(attempts, 7);
    for k in 0..20 {
        assert_eq!(count_of(&engine, &format!("k{k}")), 20);
    }
    let retries = read_all(&bootstrap, "orders.views.retry", 4);
    assert_eq!(retries.len(), 2, "{retries:?}");
    let r = &retries[0];
    assert_eq!(r.headers[header::PLUGIN], "counting");
    assert_eq!(r.headers[header::ATTEMPT], "2");
    assert_eq!(r.headers[header::TOPIC], "orders");
    assert_eq!(r.headers[header::KEY], "kf");
    assert!(r.headers[header::ERROR].contains("not yet"));
    assert!(r.headers[header::NOT_BEFORE].parse::<i64>().is_ok());
    assert_eq!(retries[1].headers[header::ATTEMPT], "3");

    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let d = &dlq[0];
    for h in [
        header::PLUGIN,
        header::ATTEMPT,
        header::ERROR,
        header::REASON,
        header::TOPIC,
        header::PARTITION,
        header::OFFSET,
    ] {
        assert!(d.headers.contains_key(h), "{h} missing in {:?}", d.headers);
    }
    let p = projector::source::log::partition_of("kp", 4);
    assert_eq!(d.headers[header::PARTITION], p.to_string());
    assert_eq!(d.partition, p as i32);
    assert_eq!(d.headers[header::STAGE], "apply");
    assert!(d.payload.contains("poison-1"));
    assert!(stats.produced.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(engine.store().outbox_count(), 0);
}
