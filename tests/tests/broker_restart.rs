//! The Kafka source across a restart of the real Apache Kafka broker
//! (`scripts/kafka.sh stop`, then `start`: same address, same data) while
//! a producer writes and projector consumes: every event is applied once,
//! and the retries, dead letters and changelog records the spool holds
//! through the outage reach the broker once.
//!
//! A test binary of its own: stopping the broker would break the tests of
//! `broker.rs` were they running beside it in one binary. `cargo test`
//! runs test binaries one after another, so while this one runs no other
//! test of the suite uses the broker. A broker of one's own (not the one
//! `scripts/kafka.sh` runs) is not stopped: the test says so and passes.

use projector_sources::kafka::header;
use projector_sources::run::KafkaRun;
use projector_tests::broker::{
    broker, changelog_config, changelog_views, create_topic, delete_topics, event, fresh, held,
    scripted, skip, wait, Stopped,
};
use projector_tests::counting::{count_of, counted_events, counting_engine, routed, ATTEMPTS};
use projector_tests::kafka::{ends, wait_caught_up};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
/// Counted events (ids `e0`..), over [`KEYS`] keys.
const EVENTS: u64 = 8_000;
const KEYS: u64 = 40;
/// Produced before projector starts; the rest while it runs.
const FIRST: u64 = 5_000;
/// One event in this many is followed by a flaky and a poison one.
const EVERY: u64 = 1_000;

/// Delivery reports of the test's producer, with the errors of those
/// that failed (by error, counted) and the client's own errors.
#[derive(Default)]
struct Delivered {
    acked: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Delivered {
    fn note(&self, error: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(error)
            .or_default() += 1;
    }

    /// Each error seen, with how often.
    fn errors(&self) -> String {
        format!(
            "{:?}",
            self.errors.lock().unwrap_or_else(|e| e.into_inner())
        )
    }
}

impl ClientContext for Delivered {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.note(format!("client: {error}: {reason}"));
    }
}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                self.note(format!("delivery: {e}"));
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A producer that outlasts an outage: idempotent (a request retried
/// across the restart is written once), its records waiting up to two
/// minutes for the broker.
fn producer(bootstrap: &str) -> BaseProducer<Delivered> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create_with_context(Delivered::default())
        .expect("producer")
}

/// Hand `values` to `producer`, each to the partition of its event key
/// (as `projector_tests::kafka::produce` routes); `handed` counts them.
fn send(producer: &BaseProducer<Delivered>, topic: &str, values: &[String], handed: &AtomicU64) {
    for v in values {
        let e: serde_json::Value = serde_json::from_str(v).expect("event json");
        let key = e["key"].as_str().expect("event key").to_string();
        let p = projector_sources::log::partition_of(&key, PARTITIONS) as i32;
        let mut record = BaseRecord::<String, String>::to(topic)
            .partition(p)
            .key(&key)
            .payload(v);
        while let Err((_, r)) = producer.send(record) {
            record = r;
            producer.poll(Duration::from_millis(10));
        }
        handed.fetch_add(1, Ordering::Relaxed);
        producer.poll(Duration::ZERO);
    }
}

/// The counted events, a flaky and a poison event after every
/// [`EVERY`]th (ids `flaky-N`, `poison-N`, keys `kfN`, `kpN`).
fn events() -> Vec<String> {
    let mut out = Vec::new();
    for (i, chunk) in counted_events("e", 0, EVENTS, KEYS)
        .chunks(EVERY as usize)
        .enumerate()
    {
        out.extend_from_slice(chunk);
        out.push(event(&format!("flaky-{i}"), "flaky", &format!("kf{i}")));
        out.push(event(&format!("poison-{i}"), "poison", &format!("kp{i}")));
    }
    out
}

#[test]
fn a_broker_restart_mid_stream_loses_and_repeats_nothing() {
    let name = "a_broker_restart_mid_stream_loses_and_repeats_nothing";
    let Some(bootstrap) = broker(name) else {
        return;
    };
    if !scripted(&bootstrap) {
        skip(
            name,
            &format!(
                "the broker at {bootstrap} is not the one scripts/kafka.sh runs, so it is not restarted"
            ),
        );
        return;
    }
    let started = Instant::now();
    let (topic, group) = (fresh("restart"), fresh("views"));
    create_topic(&bootstrap, &topic, PARTITIONS as i32);
    let config = changelog_config(&bootstrap, &group, &topic);
    let (retry, dlq, changelog, members) = (
        format!("{topic}.{group}.retry"),
        format!("{topic}.{group}.dlq"),
        config.changelog_topic("counting"),
        config.members_topic(),
    );
    let events = events();
    let first = (FIRST + FIRST / EVERY * 2) as usize;
    let (before, during) = events.split_at(first);

    // A plugin slower than the producer (1 ms an event), so that it still
    // works through what it fetched while the broker is down, and its
    // commits spool changelog records and dead letters it cannot send.
    // A flaky event fails six times: three tries a delivery, two through
    // the retry topic.
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = counting_engine(
        dir.path(),
        json!({"instance": group, "fail_first": 6, "slow_us": 1000}),
        "[retry]\nblocking = 2\nblocking_delay_ms = 10\nattempts = 3\ndelay_ms = 200\n",
    );
    let producer = Arc::new(producer(&bootstrap));
    let handed = Arc::new(AtomicU64::new(0));
    send(&producer, &topic, before, &handed);
    producer.flush(Duration::from_secs(30)).expect("flush");
    let run = KafkaRun::start(engine.clone(), config, 100).expect("start");
    // The rest flows, 50 records every 100 ms (six seconds), through the
    // outage.
    let writing = {
        let (producer, handed, topic, during) = (
            producer.clone(),
            handed.clone(),
            topic.clone(),
            during.to_vec(),
        );
        std::thread::spawn(move || {
            for chunk in during.chunks(50) {
                send(&producer, &topic, chunk, &handed);
                std::thread::sleep(Duration::from_millis(100));
            }
            producer.flush(Duration::from_secs(120))
        })
    };
    wait("the plugin at work", Duration::from_secs(30), || {
        routed(&group).len() >= 500
    });

    let stopped = Stopped::stop(&bootstrap);
    let down = Instant::now();
    // Down, and felt: the producer holds records handed to it since,
    // which the broker cannot take, and projector's spool what its
    // commits made since.
    let handed_at_stop = handed.load(Ordering::Relaxed);
    wait(
        "records held through the outage",
        Duration::from_secs(30),
        || {
            handed.load(Ordering::Relaxed) >= handed_at_stop + 300
                && engine.store().outbox_count() > 0
        },
    );
    let (waiting, spooled) = (
        handed.load(Ordering::Relaxed) - producer.context().acked.load(Ordering::Relaxed),
        engine.store().outbox_count(),
    );
    stopped.start();
    let outage = down.elapsed();
    println!(
        "broker down {:.1} s: {waiting} records waited in the producer, {spooled} in projector's spool",
        outage.as_secs_f64()
    );

    if let Err(e) = writing.join().expect("producer thread") {
        panic!(
            "not every record delivered: {e}; the test's producer saw {}",
            producer.context().errors()
        );
    }
    let delivered = producer.context();
    println!("the test's producer saw: {}", delivered.errors());
    let total = events.len() as u64;
    assert_eq!(
        (
            delivered.acked.load(Ordering::Relaxed),
            delivered.failed.load(Ordering::Relaxed)
        ),
        (total, 0),
        "the test's producer: {}",
        delivered.errors()
    );
    // Written once: the idempotent producer's retries doubled nothing.
    let end = ends(&bootstrap, &topic, PARTITIONS);
    assert_eq!(end.iter().sum::<u64>(), total);
    wait_caught_up(&engine, &topic, &end, Duration::from_secs(60));
    let flaky = EVENTS / EVERY;
    wait("every flaky event applied", Duration::from_secs(60), || {
        (0..flaky).all(|i| count_of(&engine, &format!("kf{i}")) == 1)
    });
    wait("the spool drained", Duration::from_secs(60), || {
        engine.store().outbox_count() == 0
    });
    let stats = run.stats.clone();
    run.join().expect("run");
    assert_eq!(engine.store().outbox_count(), 0);

    // Every counted event applied once: the views' counts, the plugin's
    // deliveries, the engine's counters.
    for k in 0..KEYS {
        assert_eq!(count_of(&engine, &format!("k{k}")), EVENTS / KEYS, "k{k}");
    }
    let reached = routed(&group);
    let twice: Vec<_> = reached
        .iter()
        .filter(|(id, n)| id.starts_with('e') && **n != 1)
        .collect();
    assert!(twice.is_empty(), "delivered other than once: {twice:?}");
    assert_eq!(
        reached.keys().filter(|id| id.starts_with('e')).count() as u64,
        EVENTS
    );
    let counters = engine.projection("counting").expect("counting").counters();
    assert_eq!(
        (
            counters.applied,
            counters.skipped,
            counters.invalidated,
            counters.dead_lettered
        ),
        (EVENTS + flaky, 0, 0, flaky),
        "{counters:?}"
    );
    // Each flaky event tried seven times, through two retry records.
    let attempts = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for i in 0..flaky {
        assert_eq!(
            attempts.get(&(group.clone(), format!("flaky-{i}"))),
            Some(&7),
            "flaky-{i}"
        );
    }
    let mut retried: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in held(&bootstrap, &retry, PARTITIONS as i32) {
        let e: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("retry event");
        retried
            .entry(e["id"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(r.headers[header::ATTEMPT].clone());
    }
    let want: BTreeMap<String, Vec<String>> = (0..flaky)
        .map(|i| (format!("flaky-{i}"), vec!["2".into(), "3".into()]))
        .collect();
    assert_eq!(retried, want);
    // Each poison event dead-lettered once.
    let mut dead: BTreeMap<String, u32> = BTreeMap::new();
    for r in held(&bootstrap, &dlq, PARTITIONS as i32) {
        let e: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("dead letter");
        *dead
            .entry(e["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let want: BTreeMap<String, u32> = (0..flaky).map(|i| (format!("poison-{i}"), 1)).collect();
    assert_eq!(dead, want);
    // The changelog ends at every view as the store holds it.
    let mut logged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in held(&bootstrap, &changelog, PARTITIONS as i32) {
        if r.headers.get(header::KIND).map(String::as_str) == Some("view") {
            let key = String::from_utf8(r.key.unwrap_or_default()).expect("a view key");
            logged.insert(key, r.value.unwrap_or_default());
        }
    }
    assert_eq!(logged, changelog_views(&engine, "counting"));
    println!(
        "{total} records, {} rebalances, {} consumer errors, {} spooled records produced, in {:.1} s",
        stats.rebalances.load(Ordering::Relaxed),
        stats.consumer_errors.load(Ordering::Relaxed),
        stats.produced.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    delete_topics(&bootstrap, &[&topic, &retry, &dlq, &changelog, &members]);
}
