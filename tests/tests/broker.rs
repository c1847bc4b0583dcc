//! The Kafka source against a real Apache Kafka broker: the one
//! `scripts/kafka.sh start` runs, named by `PROJECTOR_KAFKA_BOOTSTRAP`
//! (`scripts/test.sh` starts it and sets the variable; without it these
//! tests say so and pass). The broker creates no topic on first use, so
//! what exists was created on purpose: the test creates its source topic,
//! and projector its retry, dead-letter, changelog and members topics
//! through the admin API, the changelog and members topics compacted.
//! Every test names its topics and group afresh, so one broker serves
//! many runs, and deletes them when it passes.

use projector_sources::kafka::{header, KafkaConfig, Partitioner};
use projector_sources::run::KafkaRun;
use projector_tests::counting::{count_of, counted_events, counting_engine, ATTEMPTS};
use projector_tests::kafka::{ends, produce, read_all, wait_caught_up};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The broker's address, or `None` (said on stderr, past the test
/// harness's capture) when the variable is unset.
fn broker(test: &str) -> Option<String> {
    match std::env::var("PROJECTOR_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: PROJECTOR_KAFKA_BOOTSTRAP is unset \
                 (`scripts/kafka.sh start` runs a broker and prints its address)"
            );
            None
        }
    }
}

/// `name` made unique to this run.
fn fresh(name: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}-{}-{ms}", std::process::id())
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)))
}

/// Create `topic` with `partitions` partitions.
fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in block_on(admin(bootstrap).create_topics(&[new], &options())).expect("create topics") {
        r.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
    }
}

/// Delete `topics` (a passing test leaves the broker as it found it).
fn delete_topics(bootstrap: &str, topics: &[&str]) {
    for r in block_on(admin(bootstrap).delete_topics(topics, &options())).expect("delete topics") {
        r.unwrap_or_else(|(name, code)| panic!("deleting {name}: {code}"));
    }
}

/// What the broker says of a topic: partitions, and `cleanup.policy`.
#[derive(Debug, PartialEq, Eq)]
struct Described {
    partitions: usize,
    cleanup_policy: String,
}

fn describe(bootstrap: &str, topic: &str) -> Described {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    let configs =
        block_on(admin(bootstrap).describe_configs(&[ResourceSpecifier::Topic(topic)], &options()))
            .expect("describe configs");
    let cleanup_policy = configs
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|c| c.get("cleanup.policy").and_then(|e| e.value.clone()))
        .unwrap_or_else(|| panic!("{topic}: no cleanup.policy (does the topic exist?)"));
    Described {
        partitions,
        cleanup_policy,
    }
}

/// An event of `event_type` for `key`.
fn event(id: &str, event_type: &str, key: &str) -> String {
    json!({"id": id, "type": event_type, "source": "test", "key": key,
           "version": 1, "time": 1_000, "payload": {}})
    .to_string()
}

/// Wait until `done`, or fail naming `what`.
fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn projector_creates_its_topics_and_routes_failures_and_views_through_them() {
    let Some(bootstrap) =
        broker("projector_creates_its_topics_and_routes_failures_and_views_through_them")
    else {
        return;
    };
    let (topic, group) = (fresh("orders"), fresh("views"));
    create_topic(&bootstrap, &topic, 4);
    let mut config = KafkaConfig::new(&bootstrap, &group, &[&topic]);
    config.changelog = true;
    // Views placed by the rule `produce` routes events by.
    config.partitioner = Partitioner::Fnv1a;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config.properties.insert(k.into(), v.into());
    }
    let (retry, dlq) = (
        format!("{topic}.{group}.retry"),
        format!("{topic}.{group}.dlq"),
    );
    let (changelog, members) = (config.changelog_topic("counting"), config.members_topic());

    // Twenty keys of twenty events; one event that fails six times (each
    // delivery tries three times, so two go through the retry topic and
    // the third applies); one that fails for good.
    let mut events = counted_events("b", 0, 400, 20);
    events.push(event("flaky-1", "flaky", "kf"));
    events.push(event("poison-1", "poison", "kp"));
    produce(&bootstrap, &topic, 4, &events);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = counting_engine(
        dir.path(),
        json!({"instance": group, "fail_first": 6}),
        "[retry]\nblocking = 2\nblocking_delay_ms = 10\nattempts = 3\ndelay_ms = 200\n",
    );
    let run = KafkaRun::start(engine.clone(), config, 100).expect("start");

    // Created at start, through the admin API: the broker makes none on
    // first use.
    assert_eq!(
        describe(&bootstrap, &retry),
        Described {
            partitions: 4,
            cleanup_policy: "delete".into()
        },
        "{retry}"
    );
    assert_eq!(
        describe(&bootstrap, &dlq),
        Described {
            partitions: 4,
            cleanup_policy: "delete".into()
        },
        "{dlq}"
    );
    assert_eq!(
        describe(&bootstrap, &changelog),
        Described {
            partitions: 4,
            cleanup_policy: "compact".into()
        },
        "{changelog}"
    );
    assert_eq!(
        describe(&bootstrap, &members),
        Described {
            partitions: 1,
            cleanup_policy: "compact".into()
        },
        "{members}"
    );

    let end = ends(&bootstrap, &topic, 4);
    assert_eq!(end.iter().sum::<u64>(), events.len() as u64);
    wait_caught_up(&engine, &topic, &end, Duration::from_secs(60));
    wait("the flaky event applied", Duration::from_secs(60), || {
        count_of(&engine, "kf") == 1
    });
    wait("the spool drained", Duration::from_secs(60), || {
        engine.store().outbox_count() == 0
    });
    wait("the dead letter read back", Duration::from_secs(30), || {
        !read_all(&bootstrap, &dlq, 4).is_empty()
    });
    let stats = run.stats.clone();
    run.join().expect("run");

    for k in 0..20 {
        assert_eq!(count_of(&engine, &format!("k{k}")), 20, "k{k}");
    }
    let attempts =
        ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner())[&(group.clone(), "flaky-1".to_string())];
    assert_eq!(attempts, 7);
    let retries = read_all(&bootstrap, &retry, 4);
    let tried: Vec<&str> = retries
        .iter()
        .map(|r| r.headers[header::ATTEMPT].as_str())
        .collect();
    assert_eq!(tried, ["2", "3"], "{retries:?}");
    let dead = read_all(&bootstrap, &dlq, 4);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].headers[header::STAGE], "apply");
    assert_eq!(dead[0].headers[header::TOPIC], topic);
    assert!(dead[0].payload.contains("poison-1"));
    assert!(stats.produced.load(std::sync::atomic::Ordering::Relaxed) >= 3);

    // Every view that changed is in the changelog, on its key's partition.
    let logged = read_all(&bootstrap, &changelog, 4);
    let mut keys = BTreeSet::new();
    for r in logged.iter().filter(|r| r.headers[header::KIND] == "view") {
        let key = r.key.clone().expect("a view record's key");
        let p = projector_sources::log::partition_of(&key, 4);
        assert_eq!(r.partition, p as i32, "{key} logged on the wrong partition");
        keys.insert(key);
    }
    let mut want: BTreeSet<String> = (0..20).map(|k| format!("k{k}")).collect();
    want.insert("kf".into());
    assert_eq!(keys, want);
    assert!(
        logged.iter().any(|r| r.headers[header::KIND] == "offsets"),
        "no offsets record in {changelog}"
    );
    // The instance published itself, and its leaving.
    assert!(
        !read_all(&bootstrap, &members, 1).is_empty(),
        "{members} is empty"
    );
    delete_topics(&bootstrap, &[&topic, &retry, &dlq, &changelog, &members]);
}
