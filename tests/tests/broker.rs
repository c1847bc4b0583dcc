//! The Kafka source against a real Apache Kafka broker: the one
//! `scripts/kafka.sh start` runs, named by `PROJECTOR_KAFKA_BOOTSTRAP`
//! (`scripts/test.sh` starts it and sets the variable; without it these
//! tests say so and pass). The broker creates no topic on first use, so
//! what exists was created on purpose: the test creates its source topic,
//! and projector its retry, dead-letter, changelog and members topics
//! through the admin API, the changelog and members topics compacted.
//! Every test names its topics and group afresh, so one broker serves
//! many runs, and deletes them when it passes. A changelog the broker
//! has compacted restores an empty store exactly (the mock cluster never
//! compacts). The broker's restart mid-stream is `broker_restart.rs`, a
//! test binary of its own.

use projector_core::engine::Engine;
use projector_sources::kafka::{header, source_id};
use projector_sources::run::KafkaRun;
use projector_tests::broker::{
    broker, changelog_config, changelog_views, create_topic, delete_topics, describe, event, fresh,
    held, set_topic_config, topic_config, wait, Described,
};
use projector_tests::counting::{count_of, counted_events, counting_engine, routed, ATTEMPTS};
use projector_tests::kafka::{ends, produce, read_all, wait_caught_up};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn projector_creates_its_topics_and_routes_failures_and_views_through_them() {
    let Some(bootstrap) =
        broker("projector_creates_its_topics_and_routes_failures_and_views_through_them")
    else {
        return;
    };
    let (topic, group) = (fresh("orders"), fresh("views"));
    create_topic(&bootstrap, &topic, 4);
    let config = changelog_config(&bootstrap, &group, &topic);
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
    assert!(stats.produced.load(Ordering::Relaxed) >= 3);

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

/// Partitions of the compaction test's source and changelog.
const PARTITIONS: u32 = 2;
/// Its views (the counting plugin's keys `k0`..).
const KEYS: u64 = 12;
/// Events of one round: every view changes five times.
const ROUND: u64 = KEYS * 5;

/// Produce a round of events from id `c{first}` on, and wait until
/// `engine` has committed it and its spool has sent the changelog
/// records the commit made.
fn round(bootstrap: &str, topic: &str, engine: &Engine, first: u64) {
    produce(
        bootstrap,
        topic,
        PARTITIONS,
        &counted_events("c", first, ROUND, KEYS),
    );
    let end = ends(bootstrap, topic, PARTITIONS);
    let source = source_id(topic);
    let ns = engine
        .projection("counting")
        .expect("counting")
        .ns()
        .to_string();
    wait("the round committed", Duration::from_secs(30), || {
        (0..PARTITIONS)
            .all(|p| engine.store().offset(&ns, &source, p).ok().flatten() == Some(end[p as usize]))
    });
    wait(
        "the round's changelog sent",
        Duration::from_secs(30),
        || engine.store().outbox_count() == 0,
    );
}

/// Per partition of `topic`: the records it holds, and its end offset
/// (every record ever written to it).
fn held_and_written(bootstrap: &str, topic: &str) -> Vec<(u64, u64)> {
    let mut kept = vec![0; PARTITIONS as usize];
    for r in held(bootstrap, topic, PARTITIONS as i32) {
        kept[r.partition as usize] += 1;
    }
    kept.into_iter()
        .zip(ends(bootstrap, topic, PARTITIONS))
        .collect()
}

fn sums(counts: &[(u64, u64)]) -> (u64, u64) {
    counts
        .iter()
        .fold((0, 0), |(k, w), (kept, written)| (k + kept, w + written))
}

#[test]
fn an_empty_store_restored_from_a_compacted_changelog_holds_the_writers_views_and_offsets() {
    let Some(bootstrap) = broker(
        "an_empty_store_restored_from_a_compacted_changelog_holds_the_writers_views_and_offsets",
    ) else {
        return;
    };
    let (topic, group) = (fresh("compacted"), fresh("views"));
    create_topic(&bootstrap, &topic, PARTITIONS as i32);
    let config = changelog_config(&bootstrap, &group, &topic);
    let changelog = config.changelog_topic("counting");
    let source = source_id(&topic);

    // The writer: fifteen rounds, each view changed in every one, each
    // round committed (and its view changes sent) before the next.
    let writer_dir = tempfile::tempdir().expect("tempdir");
    let writer = counting_engine(
        writer_dir.path(),
        json!({"instance": format!("{group}-writer")}),
        "",
    );
    let run = KafkaRun::start(writer.clone(), config.clone(), 100).expect("start");
    let mut first = 0;
    for _ in 0..15 {
        round(&bootstrap, &topic, &writer, first);
        first += ROUND;
    }
    let (kept, written) = sums(&held_and_written(&bootstrap, &changelog));
    assert_eq!(
        kept, written,
        "{changelog} compacted before it was asked to"
    );
    assert!(written >= 15 * KEYS, "{written} changelog records");

    // Compaction made quick: a segment rolls at the first append 100 ms
    // after it began, the cleaner takes a log 1% dirty, tombstones go
    // after 100 ms. AlterConfigs replaces the topic's configs: the
    // policy is named again.
    set_topic_config(
        &bootstrap,
        &changelog,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
    let set = topic_config(&bootstrap, &changelog);
    assert_eq!(set["cleanup.policy"], "compact", "{set:?}");
    assert_eq!(set["segment.ms"], "100", "{set:?}");
    // More rounds roll the segments, until the cleaner has compacted
    // every partition: it holds fewer records than were written to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        round(&bootstrap, &topic, &writer, first);
        first += ROUND;
        let counts = held_and_written(&bootstrap, &changelog);
        if counts.iter().all(|(kept, written)| kept < written) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{changelog} not compacted within 30 s: (held, written) per partition {counts:?}"
        );
    }
    let rounds = first / ROUND;
    let end = ends(&bootstrap, &topic, PARTITIONS);
    run.join().expect("writer");
    assert_eq!(
        writer.store().outbox_count(),
        0,
        "the writer's stop sent what it committed"
    );
    for k in 0..KEYS {
        assert_eq!(count_of(&writer, &format!("k{k}")), 5 * rounds, "k{k}");
    }
    let (kept, written) = sums(&held_and_written(&bootstrap, &changelog));
    println!(
        "{changelog}: {written} records written over {rounds} rounds, {kept} left after compaction"
    );
    assert!(kept < written);

    // The restorer: an empty store in the same group, assigned both
    // partitions, restores them from what compaction left.
    let restorer_dir = tempfile::tempdir().expect("tempdir");
    let instance = format!("{group}-restorer");
    let restorer = counting_engine(restorer_dir.path(), json!({ "instance": instance }), "");
    let run = KafkaRun::start(restorer.clone(), config.clone(), 100).expect("start");
    wait("both partitions restored", Duration::from_secs(60), || {
        run.stats.restores.load(Ordering::Relaxed) >= u64::from(PARTITIONS)
    });
    let read = run.stats.restore_records.load(Ordering::Relaxed);
    println!(
        "restored {} views from {read} changelog records",
        run.stats.restore_views.load(Ordering::Relaxed)
    );
    assert!(
        read <= kept,
        "the restore read {read} records of {kept} held"
    );
    // Every view exactly as the writer holds it: state, versions, time.
    let want = changelog_views(&writer, "counting");
    assert_eq!(want.len() as u64, KEYS);
    assert_eq!(changelog_views(&restorer, "counting"), want);
    // And the offsets: where the writer stopped, the end of the source.
    let ns = restorer
        .projection("counting")
        .expect("counting")
        .ns()
        .to_string();
    for p in 0..PARTITIONS {
        let (at, was) = (
            restorer.store().offset(&ns, &source, p).expect("offset"),
            writer.store().offset(&ns, &source, p).expect("offset"),
        );
        assert_eq!(
            (at, was),
            (Some(end[p as usize]), Some(end[p as usize])),
            "partition {p}"
        );
    }

    // It goes on from there: one more round reaches its plugin once per
    // event, and nothing of the rounds before does.
    round(&bootstrap, &topic, &restorer, first);
    wait_caught_up(
        &restorer,
        &topic,
        &ends(&bootstrap, &topic, PARTITIONS),
        Duration::from_secs(30),
    );
    let stats = run.stats.clone();
    run.join().expect("restorer");
    let reached = routed(&instance);
    let want: BTreeSet<String> = (first..first + ROUND).map(|i| format!("c{i}")).collect();
    assert_eq!(reached.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(reached.values().all(|n| *n == 1), "{reached:?}");
    assert_eq!(stats.consumed.load(Ordering::Relaxed), ROUND);
    let counters = restorer
        .projection("counting")
        .expect("counting")
        .counters();
    assert_eq!(
        (counters.applied, counters.skipped),
        (ROUND, 0),
        "{counters:?}"
    );
    for k in 0..KEYS {
        assert_eq!(
            count_of(&restorer, &format!("k{k}")),
            5 * (rounds + 1),
            "k{k}"
        );
    }
    delete_topics(
        &bootstrap,
        &[
            &topic,
            &format!("{topic}.{group}.retry"),
            &format!("{topic}.{group}.dlq"),
            &changelog,
            &config.members_topic(),
        ],
    );
}
