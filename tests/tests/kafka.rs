//! The Kafka source against librdkafka's mock cluster, started by each
//! test: views equal an independent fold, a group shares and hands over
//! partitions without losing or repeating a record, transient failures
//! go through the retry topic and poison ones to the dead-letter topic
//! through the spool (once, across a kill), and a slow plugin pauses its
//! partitions. The counting plugin they run is `projector_tests::counting`.

use projector_common::shutdown::Shutdown;
use projector_core::engine::Engine;
use projector_sources::kafka::header;
use projector_sources::run::KafkaRun;
use projector_tests::counting::{
    config, count_of, counted_events, counting_engine, routed, ATTEMPTS,
};
use projector_tests::kafka::{cluster, ends, produce, read_all, wait_caught_up};
use projector_tests::{assert_inbox_store, fold_inbox, inbox_events, open_app, InboxShape};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let run =
        KafkaRun::start(app.engine.clone(), config(&bootstrap, "inbox"), 2048).expect("start");
    let end = ends(&bootstrap, "inbox", 8);
    assert_eq!(end.iter().sum::<u64>(), events.len() as u64);
    wait_caught_up(&app.engine, "inbox", &end, Duration::from_secs(120));
    let totals = run.join().expect("run");
    assert_eq!(totals.records, events.len() as u64);

    assert_inbox_store(&app.engine, &fold_inbox(&events));
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
    let run_b = KafkaRun::start(b.clone(), config(&bootstrap, "pairs"), 500).expect("start b");
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed("pair-b").len() < 10_000 {
        assert!(Instant::now() < deadline, "b makes no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A joins: B gives up half its partitions mid-stream.
    let run_a = KafkaRun::start(a.clone(), config(&bootstrap, "pairs"), 500).expect("start a");
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
    let run = KafkaRun::start(engine.clone(), config(&bootstrap, "orders"), 100).expect("start");
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
    let p = projector_sources::log::partition_of("kp", 4);
    assert_eq!(d.headers[header::PARTITION], p.to_string());
    assert_eq!(d.partition, p as i32);
    assert_eq!(d.headers[header::STAGE], "apply");
    assert!(d.payload.contains("poison-1"));
    assert!(stats.produced.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(engine.store().outbox_count(), 0);
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("rss pages");
    pages * 4096
}

#[test]
fn a_slow_plugin_under_a_fast_producer_pauses_partitions_and_memory_stays_flat() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("fast", 4);
    let bootstrap = c.bootstrap_servers();
    // 4 KiB payloads: 16 000 records, 64 MiB over 4 partitions (the mock
    // keeps 5 MiB per partition, so about 5 000 records are readable).
    let pad = "x".repeat(4096);
    let events: Vec<String> = (0..16_000u64)
        .map(|i| {
            json!({"id": format!("f{i}"), "type": "counted", "source": "test",
                   "key": format!("k{}", i % 64), "version": i + 1, "time": 1_000 + i,
                   "payload": {"pad": pad}})
            .to_string()
        })
        .collect();
    produce(&bootstrap, "fast", 4, &events);
    let engine = counting_engine(dir.path(), json!({"instance": "slow", "slow_us": 2000}), "");
    let mut config = config(&bootstrap, "fast");
    config.max_buffered_records = 200;
    let before = rss();
    let run = KafkaRun::start(engine.clone(), config, 50).expect("start");
    let mut peak = before;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        peak = peak.max(rss());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = run.stats.clone();
    let applied_while_slow = routed("slow").len();
    run.join().expect("run");

    assert!(stats.pauses.load(Relaxed) >= 4, "no partition was paused");
    let max = stats.max_buffered.load(Relaxed);
    assert!(
        max <= 200,
        "a queue held {max} records, over its bound of 200"
    );
    assert!(applied_while_slow > 0, "nothing was applied");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "memory grew by {} MiB under backpressure",
        grown >> 20
    );
}

#[test]
fn a_broker_down_for_ten_seconds_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("outage", 4);
    let bootstrap = c.bootstrap_servers();
    let engine = counting_engine(dir.path(), json!({"instance": "outage"}), "");
    produce(
        &bootstrap,
        "outage",
        4,
        &counted_events("o", 0, 10_000, 100),
    );
    let run = KafkaRun::start(engine.clone(), config(&bootstrap, "outage"), 500).expect("start");
    wait_caught_up(
        &engine,
        "outage",
        &ends(&bootstrap, "outage", 4),
        Duration::from_secs(60),
    );
    c.broker_down(1).expect("down");
    std::thread::sleep(Duration::from_secs(10));
    c.broker_up(1).expect("up");
    produce(
        &bootstrap,
        "outage",
        4,
        &counted_events("o", 10_000, 10_000, 100),
    );
    wait_caught_up(
        &engine,
        "outage",
        &ends(&bootstrap, "outage", 4),
        Duration::from_secs(90),
    );
    run.join().expect("run");
    for k in 0..100 {
        assert_eq!(count_of(&engine, &format!("k{k}")), 200, "k{k}");
    }
    let routed = routed("outage");
    assert_eq!(routed.len(), 20_000);
    assert!(routed.values().all(|n| *n == 1));
}

#[test]
fn errors_on_fetch_produce_and_offset_commit_lose_or_double_nothing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("flaky", 4);
    let bootstrap = c.bootstrap_servers();
    let engine = counting_engine(dir.path(), json!({"instance": "inject"}), "");
    let mut events = counted_events("i", 0, 5_000, 50);
    let poison: Vec<String> = (0..20)
        .map(|i| {
            json!({"id": format!("poison-{i}"), "type": "poison", "source": "test",
                   "key": format!("pk{i}"), "version": 1, "time": 1, "payload": {}})
            .to_string()
        })
        .collect();
    events.extend(poison.iter().cloned());
    events.extend(counted_events("i", 5_000, 5_000, 50));
    let run = KafkaRun::start(engine.clone(), config(&bootstrap, "flaky"), 200).expect("start");
    let errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    ];
    c.request_errors(RDKafkaApiKey::Fetch, &errors);
    c.request_errors(RDKafkaApiKey::Produce, &errors);
    c.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    produce(&bootstrap, "flaky", 4, &events);
    let end = ends(&bootstrap, "flaky", 4);
    wait_caught_up(&engine, "flaky", &end, Duration::from_secs(90));
    // The dead letters are committed with their offsets, then sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while run
        .stats
        .produced
        .load(std::sync::atomic::Ordering::Relaxed)
        < 20
    {
        assert!(Instant::now() < deadline, "the dead letters were not sent");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.join().expect("run");
    assert_eq!(engine.store().outbox_count(), 0);
    for k in 0..50 {
        assert_eq!(count_of(&engine, &format!("k{k}")), 200, "k{k}");
    }
    let routed = routed("inject");
    assert_eq!(routed.len(), 10_020);
    assert!(routed.values().all(|n| *n == 1));
    let dlq = read_all(&bootstrap, "flaky.views.dlq", 4);
    let mut ids: Vec<String> = dlq
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.payload).expect("event")["id"].to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(dlq.len(), 20, "dead letters doubled or lost");
    assert_eq!(ids.len(), 20);
}

/// Ten poison events of `topic` (ids `{topic}-0`..), dead-lettered by a
/// run in `dir` while the broker refuses every produce request: the
/// records wait in the spool, which the run leaves holding all ten.
fn spool_ten_dead_letters(c: &projector_tests::kafka::Cluster, dir: &Path, topic: &str) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let bootstrap = c.bootstrap_servers();
    let poison: Vec<String> = (0..10)
        .map(|i| {
            json!({"id": format!("{topic}-{i}"), "type": "poison", "source": "test",
                   "key": format!("{topic}{i}"), "version": 1, "time": 1, "payload": {}})
            .to_string()
        })
        .collect();
    produce(&bootstrap, topic, 2, &poison);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000],
    );
    let engine = counting_engine(dir, json!({"instance": format!("{topic}-spooled")}), "");
    let run = KafkaRun::start(engine.clone(), config(&bootstrap, topic), 100).expect("start");
    wait_caught_up(
        &engine,
        topic,
        &ends(&bootstrap, topic, 2),
        Duration::from_secs(60),
    );
    run.join().expect("run");
    assert_eq!(
        engine.store().outbox_count(),
        10,
        "the spool holds the dead letters"
    );
    c.clear_request_errors(RDKafkaApiKey::Produce);
}

/// Run `engine` on `topic` again until its spool is empty, then stop.
fn restart_until_the_spool_is_empty(engine: &Arc<Engine>, bootstrap: &str, topic: &str) {
    let run = KafkaRun::start(engine.clone(), config(bootstrap, topic), 100).expect("restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.store().outbox_count() > 0 {
        assert!(Instant::now() < deadline, "the spool was not drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.join().expect("run");
}

#[test]
fn records_left_in_the_spool_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("spooled", 2);
    let bootstrap = c.bootstrap_servers();
    spool_ten_dead_letters(&c, dir.path(), "spooled");
    assert!(read_all(&bootstrap, "spooled.views.dlq", 2).is_empty());

    let engine = counting_engine(dir.path(), json!({"instance": "spool-2"}), "");
    restart_until_the_spool_is_empty(&engine, &bootstrap, "spooled");
    assert_eq!(read_all(&bootstrap, "spooled.views.dlq", 2).len(), 10);
    // Nothing was consumed twice after the restart.
    assert!(routed("spool-2").is_empty());
}

#[test]
fn a_shadow_generation_is_rebuilt_from_the_earliest_kafka_offsets() {
    use projector_deploy::ShadowMethod;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("shadowed", 2);
    let bootstrap = c.bootstrap_servers();
    produce(
        &bootstrap,
        "shadowed",
        2,
        &counted_events("h", 0, 4_000, 50),
    );
    let app = open_app(
        dir.path(),
        &["hostile"],
        &format!(
            "[engine]\ncommit_interval_ms = 100\n[source.kafka]\nbootstrap_servers = \"{bootstrap}\"\n\
             group_id = \"views\"\ntopics = [\"shadowed\"]\n"
        ),
    );
    let stop = Shutdown::new();
    let running = app.start_kafka(Some("off"), stop.clone()).expect("start");
    wait_caught_up(
        &app.engine,
        "shadowed",
        &ends(&bootstrap, "shadowed", 2),
        Duration::from_secs(60),
    );
    produce(
        &bootstrap,
        "shadowed",
        2,
        &counted_events("h", 4_000, 1_000, 50),
    );

    let v2 = std::fs::read(projector_tests::plugin_wasm("hostile-v2")).expect("v2");
    app.deployer
        .deploy_shadow("hostile", &v2, "test", ShadowMethod::Auto, false)
        .expect("shadow");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = app.deployer.shadow("hostile").expect("status");
        assert!(!s.phase.starts_with("failed"), "{s:?}");
        if s.phase == "following" {
            break s;
        }
        assert!(Instant::now() < deadline, "never built: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.method, ShadowMethod::Rebuild, "{status:?}");
    assert!(status.done >= 4_000, "{status:?}");
    wait_caught_up(
        &app.engine,
        "shadowed",
        &ends(&bootstrap, "shadowed", 2),
        Duration::from_secs(60),
    );
    let c = app.deployer.compare("hostile", 50).expect("compare");
    assert_eq!((c.compared, c.mismatched), (50, 50), "{c:?}");
    app.deployer.promote("hostile", false).expect("promote");
    let v = app
        .engine
        .read("hostile", "k1", 0)
        .expect("read")
        .and_then(|v| v.json())
        .expect("view");
    assert_eq!(
        (v["count"].as_u64(), v["version"].as_str()),
        (Some(100), Some("2")),
        "{v}"
    );
    stop.stop();
    running.wait().expect("stop");
}

/// A kill after the broker acknowledged spooled records, before their
/// removal from the spool was durable, leaves them spooled: the restart
/// finds them in their topic (each record names its spool and sequence
/// number) and does not send them again.
#[test]
fn records_the_broker_already_holds_are_not_sent_again_after_a_restart() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster("held", 2);
    let bootstrap = c.bootstrap_servers();
    spool_ten_dead_letters(&c, dir.path(), "held");

    // As if the last run had sent four of them before it was killed: they
    // are in their topic, with the spool's header, and still spooled.
    let engine = counting_engine(dir.path(), json!({"instance": "held-2"}), "");
    let id = engine
        .store()
        .setting("kafka/spool-id")
        .expect("setting")
        .expect("the spool named itself");
    let id = String::from_utf8(id).expect("utf8");
    let spooled = engine
        .store()
        .outbox(None, &Default::default(), 100)
        .expect("outbox");
    assert_eq!(spooled.len(), 10);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for r in &spooled[..4] {
        let mut headers = OwnedHeaders::new();
        let spool = format!("{id}/{}", r.seq);
        for (k, v) in r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([(header::SPOOL, spool.as_str())])
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(&r.topic).headers(headers);
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(k) = &r.key {
            record = record.key(k);
        }
        if let Some(v) = &r.payload {
            record = record.payload(v);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    restart_until_the_spool_is_empty(&engine, &bootstrap, "held");
    let dlq = read_all(&bootstrap, "held.views.dlq", 2);
    let mut ids: Vec<String> = dlq
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).expect("json");
            v["id"]
                .as_str()
                .or(v["event"]["id"].as_str())
                .expect("id")
                .to_string()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("held-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each dead letter once in its topic");
}

/// Answers recorded for replay travel with the changelog: instance A
/// (`record_fetches`, changelogs on) applies id-only billing events of 20
/// assets, fetching each entity once; its changelog then holds a `fetch`
/// record per entity; B, an empty store in the same group once A
/// stopped, restores both partitions and holds the same answers in its
/// record, without a request to the service.
#[test]
fn recorded_answers_travel_with_the_changelog_to_the_instance_that_restores() {
    use projector_host::fetch_record::FetchRecord;
    use projector_tests::services::Services;
    const TOPIC: &str = "billed";
    let services = Services::start(&["billing"]);
    let entity = |n: u64| {
        json!({"version": 1, "payment_status": "paid", "next_charge_ms": 0,
               "amount_cents": 100 + n, "currency": "EUR"})
    };
    for n in 0..20 {
        services
            .get("billing")
            .set(&format!("a{n}"), vec![entity(n)]);
    }
    let c = cluster(TOPIC, 2);
    let bootstrap = c.bootstrap_servers();
    let kafka = projector_tests::broker::changelog_config(&bootstrap, "views", TOPIC);
    let changelog = kafka.changelog_topic("subscriptions");
    c.create_topic(&changelog, 2, 1).expect("changelog topic");
    c.create_topic(&kafka.members_topic(), 1, 1)
        .expect("members topic");
    let events: Vec<String> = (0..20)
        .map(|n| {
            json!({"id": format!("b{n}"), "type": "BillingChanged", "source": "billing",
                   "key": format!("a{n}"), "version": 1, "time": 0,
                   "payload": {"user_id": "u1", "asset_id": format!("a{n}")}})
            .to_string()
        })
        .collect();
    produce(&bootstrap, TOPIC, 2, &events);
    let config = format!(
        "[engine]\ncommit_interval_ms = 100\n\
         [plugins.subscriptions]\nservices = [\"billing\"]\nrecord_fetches = true\n\
         partition_by = {{ separator = \":\", field = 1 }}\n{}\
         [source.kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"views\"\n\
         topics = [\"{TOPIC}\"]\nchangelog = true\npartitioner = \"fnv1a\"\n",
        services.config(&[])
    );
    let run = |dir: &Path| {
        let app = open_app(dir, &["subscriptions"], &config);
        let stop = Shutdown::new();
        let running = app.start_kafka(Some("off"), stop.clone()).expect("start");
        wait_caught_up(
            &app.engine,
            TOPIC,
            &ends(&bootstrap, TOPIC, 2),
            Duration::from_secs(60),
        );
        (app, stop, running)
    };
    let answer_of = |app: &projector::app::App, n: u64| {
        let record = app.engine.fetch_record("subscriptions").expect("record");
        record
            .expect("records fetches")
            .recorded("billing", &format!("/billing/a{n}"))
    };

    let a_dir = tempfile::tempdir().expect("tempdir");
    let (a, stop, running) = run(a_dir.path());
    let asked = services.get("billing").requests();
    assert_eq!(asked, 20, "one fetch per entity");
    let kept = answer_of(&a, 7).expect("A recorded a7");
    stop.stop();
    running.wait().expect("A stops");
    drop(a);
    let fetched: std::collections::BTreeSet<String> = read_all(&bootstrap, &changelog, 2)
        .into_iter()
        .filter(|r| r.headers.get(header::KIND).map(String::as_str) == Some("fetch"))
        .filter_map(|r| r.key)
        .collect();
    assert_eq!(fetched.len(), 20, "a fetch record per entity: {fetched:?}");

    let b_dir = tempfile::tempdir().expect("tempdir");
    let (b, stop, running) = run(b_dir.path());
    for n in 0..20 {
        assert!(answer_of(&b, n).is_some(), "B's record lacks a{n}");
    }
    assert_eq!(answer_of(&b, 7), Some(kept), "the answer A recorded");
    assert_eq!(
        services.get("billing").requests(),
        asked,
        "B asked the service nothing"
    );
    stop.stop();
    running.wait().expect("B stops");
}
