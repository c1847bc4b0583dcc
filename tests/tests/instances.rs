//! Several instances on Kafka, as separate processes on loopback:
//! `projector run` instances in one group with `changelog = true`.
//! Views are read through every instance (routed to the owner), an
//! instance is SIGKILLed and its partitions restored from the changelog
//! by the survivors, and a new instance with an empty store restores its
//! share from the changelog alone. That scenario runs on `projector
//! kafka-dev` (librdkafka's mock cluster) and on the Apache Kafka broker
//! named by `PROJECTOR_KAFKA_BOOTSTRAP` (skipped when it is unset), where
//! the test creates the source topic and projector the others.

use projector_tests::instances::{
    kafka_dev, on_apache_kafka, partition_of, read, table, Instance, Kafka, PARTITIONS,
};
use projector_tests::{fold_inbox, inbox_events, knob, rendered, shown, Api, InboxShape, Unread};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Wait until every key of `sample` reads through `api` as `model` says.
fn wait_views(api: &Api, sample: &[(&String, &Unread)], within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    let (mut forwarded, mut unavailable) = (0, 0);
    for (key, unread) in sample {
        loop {
            let (status, rows, by) = read(api, key);
            if status == 503 {
                unavailable += 1;
            }
            if rows.as_ref() == Some(&shown(unread)) {
                forwarded += u64::from(by.is_some());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: view {key} never became {:?} (last: {status} {rows:?})",
                api.base,
                shown(unread)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (forwarded, unavailable)
}

/// Every `step`-th key of `model`.
fn sample(model: &BTreeMap<String, Unread>, step: usize) -> Vec<(&String, &Unread)> {
    model.iter().step_by(step.max(1)).collect()
}

#[test]
fn instances_share_partitions_route_reads_and_restore_from_the_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, kafka) = kafka_dev(dir.path());
    three_instances_one_killed_a_fourth_joins(dir.path(), &kafka, "mock cluster");
    drop(broker);
}

/// The same on Apache Kafka: the test creates the source topic, projector
/// its retry, dead-letter, changelog and members topics; all are deleted
/// when it passes.
#[test]
fn instances_share_partitions_route_reads_and_restore_from_the_changelog_on_apache_kafka() {
    on_apache_kafka(
        "instances_share_partitions_route_reads_and_restore_from_the_changelog_on_apache_kafka",
        |dir, kafka| three_instances_one_killed_a_fourth_joins(dir, kafka, "Apache Kafka"),
    );
}

/// Three instances share the partitions and answer every view, routed to
/// its owner; one is SIGKILLed while the second half of the events flows,
/// and its views are refused (503), never wrong, until the survivors have
/// restored its partitions; afterwards every view through every survivor
/// equals an independent fold, and a fourth instance with an empty store
/// restores its share without replaying the source. `on` names the
/// broker in what it prints.
fn three_instances_one_killed_a_fourth_joins(dir: &Path, kafka: &Kafka, on: &str) {
    let began = Instant::now();
    let total = knob("INSTANCES_EVENTS", 100_000) as usize;
    let events = inbox_events(InboxShape {
        sites: 300,
        users: 3000,
        events: total,
        seed: 22,
    });
    let (first, second) = events.split_at(total / 2);
    kafka.produce(first);

    // Three instances share the partitions; every one answers every view.
    let mut a = Instance::start(dir, kafka, 1);
    let mut b = Instance::start(dir, kafka, 2);
    let mut c = Instance::start(dir, kafka, 3);
    let model = fold_inbox(first);
    let keys = sample(&model, model.len() / 150);
    let started = Instant::now();
    let mut forwarded = 0;
    for i in [&a, &b, &c] {
        forwarded += wait_views(i, &keys, Duration::from_secs(240)).0;
    }
    println!(
        "{on}: 3 instances: {} sampled views right through each, {forwarded} answers forwarded, in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(forwarded > 0, "no read was forwarded to another owner");
    let routes = table(&a);
    assert_eq!(
        routes["routes"].as_object().map(|r| r.len()),
        Some(PARTITIONS as usize),
        "every partition has an owner: {routes}"
    );
    // A read of a view B owns, through A: B answers, with B's staleness.
    let b_id = table(&b)["instance"].as_str().expect("B's id").to_string();
    let b_key = model
        .keys()
        .find(|k| routes["routes"][partition_of(k).to_string()] == b_id.as_str())
        .expect("a view B owns")
        .clone();
    let answer = a
        .try_get(&format!("/v1/views/inbox-unread/{b_key}"))
        .expect("a read");
    let body = &answer.body;
    assert_eq!(answer.status, 200, "{body}");
    assert_eq!(
        answer
            .headers
            .get("x-projector-instance")
            .and_then(|v| v.to_str().ok()),
        Some(b_id.as_str())
    );
    let stale_parts: Vec<u64> = body["staleness"]["partitions"]
        .as_array()
        .expect("staleness")
        .iter()
        .filter_map(|p| p["partition"].as_u64())
        .collect();
    assert!(
        stale_parts.contains(&u64::from(partition_of(&b_key))),
        "the staleness is the owner's: {body}"
    );

    // The second half flows while B is SIGKILLed. What the survivors
    // restore and consume is counted from here: on a broker that assigns
    // the first instance every partition before the others join, it polls
    // records it drops unapplied at the next rebalance.
    let survivors = |name: &str| a.metric(name) + c.metric(name);
    let (restores_before, consumed_before, views_before) = (
        survivors("projector_kafka_restores"),
        survivors("projector_kafka_consumed"),
        survivors("projector_kafka_restore_views"),
    );
    let killed = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            for part in second.chunks(2000) {
                kafka.produce(part);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        b.kill();
        let killed = Instant::now();
        // Until the group moves B's partitions, a read of B's view through
        // A is a 503 with Retry-After, never a wrong answer or a 404. The
        // reads go on for 3 s, and past them until B's view answers again.
        let (mut answered, mut refused) = (0, 0);
        let mut again = None;
        while killed.elapsed() < Duration::from_secs(3) || (refused > 0 && again.is_none()) {
            assert!(
                killed.elapsed() < Duration::from_secs(240),
                "B's view never answered through A after the kill ({refused} answers 503)"
            );
            let answer = a
                .try_get(&format!("/v1/views/inbox-unread/{b_key}"))
                .expect("a read");
            let body = &answer.body;
            match answer.status {
                503 => {
                    assert!(answer.headers.contains_key("retry-after"), "{body}");
                    refused += 1;
                }
                200 => {
                    answered += 1;
                    if refused > 0 && again.is_none() {
                        again = Some(killed.elapsed());
                    }
                }
                other => panic!("a read during the rebalance answered {other}: {body}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "{on}: during the kill: reads of B's view through A answered {answered} × 200, {refused} × 503; answered again {:.1} s after the kill",
            again.unwrap_or_default().as_secs_f64()
        );
        assert!(
            refused > 0,
            "no read was refused while B's partitions had no owner"
        );
        producer.join().expect("producer");
        killed
    });
    let model = fold_inbox(&events);
    let keys = sample(&model, model.len() / 150);
    let mut unavailable = 0;
    for i in [&a, &c] {
        unavailable += wait_views(i, &keys, Duration::from_secs(240)).1;
    }
    println!(
        "{on}: after the kill: sampled views right through both survivors {:.1} s after it ({unavailable} answers 503 on the way)",
        killed.elapsed().as_secs_f64()
    );
    let survivors = |name: &str| a.metric(name) + c.metric(name);
    let restores = survivors("projector_kafka_restores") - restores_before;
    let consumed = survivors("projector_kafka_consumed") - consumed_before;
    let restored_views = survivors("projector_kafka_restore_views") - views_before;
    println!(
        "{on}: survivors since the kill: {restores} restores, {restored_views} views restored, {consumed} source records consumed; {consumed_before} before it, of {total}"
    );
    assert!(restores >= 1.0, "the survivors restored nothing");
    // Reading B's partitions from offset 0 again would add their share of
    // the first half (a third of it) to the second half.
    let replay = second.len() + first.len() / 6;
    assert!(
        consumed < replay as f64,
        "the survivors consumed {consumed} records after the kill, {} produced after it: a replay from offset 0, not a restore",
        second.len()
    );
    // A token naming every partition's last record works through any
    // instance: the owner waits for the view's partition only.
    let token = {
        let ends = projector_tests::kafka::ends(&kafka.bootstrap, &kafka.topic, PARTITIONS);
        let list: Vec<String> = ends
            .iter()
            .enumerate()
            .filter(|(_, e)| **e > 0)
            .map(|(p, e)| format!("{p}:{}", e - 1))
            .collect();
        format!("kafka:{}@{}", kafka.topic, list.join(","))
    };
    let (k, unread) = keys[0];
    let (status, body) = c.get(&format!("/v1/views/inbox-unread/{k}?token={token}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(rendered(&body["answer"]), shown(unread));
    // Every view, through one survivor; nothing skipped or invalidated
    // (an event applied twice would be).
    wait_views(&a, &sample(&model, 1), Duration::from_secs(120));
    for i in [&a, &c] {
        let (_, plugins) = i.get("/v1/plugins");
        assert!(plugins.is_object(), "plugins: {plugins}");
        let e = &plugins["plugins"][0]["events"];
        assert_eq!(e["invalidated"].as_u64(), Some(0), "{}: {e}", i.base);
        assert_eq!(e["dead_lettered"].as_u64(), Some(0), "{}: {e}", i.base);
    }

    // A fourth instance with an empty store restores its share.
    let d = Instance::start(dir, kafka, 4);
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.metric("projector_kafka_restores") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the new instance restored nothing; it said:\n{}",
            d.run.stderr_tail(100)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_views(&d, &keys, Duration::from_secs(120));
    let d_consumed = d.metric("projector_kafka_consumed");
    println!(
        "{on}: new instance: {} restores, {} views restored, {d_consumed} source records consumed",
        d.metric("projector_kafka_restores"),
        d.metric("projector_kafka_restore_views")
    );
    assert_eq!(d_consumed, 0.0, "the new instance replayed the source");
    drop(d);
    a.kill();
    c.kill();
    println!(
        "{on}: the scenario took {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

/// With `standby_replicas = 2`, each of three instances follows every
/// partition the others own from their changelogs: a read that accepts a
/// stale answer is served from a standby's views, marked, and when one
/// instance dies, whichever survivor the group gives each of its
/// partitions was standing by for it: the survivors serve them at once,
/// reading only the changelogs' last records instead of restoring them
/// whole. `INSTANCES_STANDBYS=1` runs it with one standby each (a
/// takeover by the survivor that was not the standby restores), to
/// compare.
#[test]
fn a_standby_takes_over_without_a_restore() {
    let total = knob("INSTANCES_STANDBY_EVENTS", 30_000) as usize;
    let replicas = knob("INSTANCES_STANDBYS", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, kafka) = kafka_dev(dir.path());
    let events = inbox_events(InboxShape {
        sites: 200,
        users: 2000,
        events: total,
        seed: 23,
    });
    kafka.produce(&events);
    let standby = format!("standby_replicas = {replicas}");
    let a = Instance::start_with(dir.path(), &kafka, 1, &standby);
    let mut b = Instance::start_with(dir.path(), &kafka, 2, &standby);
    let c = Instance::start_with(dir.path(), &kafka, 3, &standby);
    let model = fold_inbox(&events);
    let keys = sample(&model, model.len() / 100);
    for i in [&a, &b, &c] {
        wait_views(i, &keys, Duration::from_secs(240));
    }
    // Every partition owned, each with its standbys caught up.
    let b_id = table(&b)["instance"].as_str().expect("B's id").to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let b_owned: Vec<u64> = loop {
        let t = table(&a);
        let parts = t["by_partition"].as_array().cloned().unwrap_or_default();
        let standing = |p: &serde_json::Value| {
            let s = p["standbys"].as_array().cloned().unwrap_or_default();
            s.len() == replicas as usize && s.iter().all(|s| s["caught_up"] == true)
        };
        if parts.len() == PARTITIONS as usize
            && parts.iter().all(|p| p["state"] == "owned" && standing(p))
        {
            break parts
                .iter()
                .filter(|p| p["owner"] == b_id.as_str())
                .filter_map(|p| p["partition"].as_u64())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the standbys never caught up: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!b_owned.is_empty(), "B owns nothing");
    // A stale-accepting read of B's view through A, when A stands by for
    // it: A's standby answers.
    let a_standby: Vec<u64> = table(&a)["by_partition"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p["standbys"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["instance"] == table(&a)["instance"]))
        })
        .filter_map(|p| p["partition"].as_u64())
        .collect();
    let b_key = model
        .keys()
        .find(|k| {
            let p = u64::from(partition_of(k));
            b_owned.contains(&p) && a_standby.contains(&p)
        })
        .cloned();
    if let Some(b_key) = &b_key {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = a
                .try_get(&format!("/v1/views/inbox-unread/{b_key}?stale=ok"))
                .expect("a read");
            let (status, headers, body) = (answer.status, &answer.headers, &answer.body);
            // Absent until the standby has read the view's changes.
            assert!(status == 200 || status == 404, "{status} {body}");
            assert!(
                headers.get("x-projector-instance").is_none(),
                "forwarded: {body}"
            );
            if status == 200 {
                assert_eq!(
                    headers
                        .get("x-projector-standby")
                        .and_then(|v| v.to_str().ok()),
                    Some("true")
                );
                if rendered(&body["answer"]) == shown(&model[b_key]) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the standby never caught up: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let survivors = [&a, &c];
    let restored = || -> f64 {
        survivors
            .iter()
            .map(|i| i.metric("projector_kafka_restore_records"))
            .sum()
    };
    let records_before = restored();
    b.kill();
    let killed = Instant::now();
    // A and C take B's partitions over: every view right through both.
    for i in survivors {
        wait_views(i, &sample(&model, 1), Duration::from_secs(120));
    }
    let read = restored() - records_before;
    let consumed: f64 = survivors
        .iter()
        .map(|i| i.metric("projector_kafka_consumed"))
        .sum();
    println!(
        "standby ({replicas} each): A and C served B's {} partitions {:.1} s after the kill, reading {read} changelog records to take them over; {consumed} source records consumed of {total}",
        b_owned.len(),
        killed.elapsed().as_secs_f64()
    );
    let t = table(&a);
    let (a_id, c_id) = (table(&a)["instance"].clone(), table(&c)["instance"].clone());
    let parts = t["by_partition"].as_array().cloned().unwrap_or_default();
    assert!(
        parts.len() == PARTITIONS as usize
            && parts
                .iter()
                .all(|p| p["owner"] == a_id || p["owner"] == c_id),
        "A and C did not take B's partitions over: {t}"
    );
    if replicas >= 2 {
        assert!(
            read < 100.0,
            "A and C read {read} changelog records to take over: a restore, not a standby's takeover"
        );
    }
    assert!(
        consumed < 1.25 * total as f64,
        "A and C consumed {consumed} of {total}: a replay from offset 0"
    );
    drop((a, c));
    drop(broker);
}

/// A view's history travels with its changelog: instance A keeps the
/// inbox's history through two rounds of events, then B (an empty
/// store) joins and A is killed; B, which restored every partition from
/// the changelog, answers `as_of` each round's time with exactly the
/// independent fold of the events up to it.
#[test]
fn as_of_reads_survive_a_restore_from_the_changelog_on_another_instance() {
    let total = knob("INSTANCES_HISTORY_EVENTS", 6_000) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, kafka) = kafka_dev(dir.path());
    let events = inbox_events(InboxShape {
        sites: 60,
        users: 600,
        events: total,
        seed: 36,
    });
    let history = "history = { versions = 20, ms = 604800000 }";
    let mut a = Instance::start_full(dir.path(), &kafka, 1, "", history);
    let (first, second) = events.split_at(total / 2);
    let mut marks = Vec::new();
    for upto in [first.len(), total] {
        let part = if upto == first.len() { first } else { second };
        kafka.produce(part);
        let model = fold_inbox(&events[..upto]);
        wait_views(
            &a,
            &sample(&model, model.len() / 50),
            Duration::from_secs(120),
        );
        // Committed (every 200 ms) before the mark.
        std::thread::sleep(Duration::from_millis(800));
        marks.push((projector_core::now_ms(), model));
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = Instance::start_full(dir.path(), &kafka, 2, "", history);
    // Once both own partitions, a view's history asked of the instance
    // that does not own it is answered by its owner.
    let deadline = Instant::now() + Duration::from_secs(60);
    let a_id = table(&a)["instance"].clone();
    let a_owned: Vec<u64> = loop {
        let t = table(&b);
        let parts = t["by_partition"].as_array().cloned().unwrap_or_default();
        let of = |who: &serde_json::Value| -> Vec<u64> {
            parts
                .iter()
                .filter(|p| &p["owner"] == who && p["state"] == "owned")
                .filter_map(|p| p["partition"].as_u64())
                .collect()
        };
        let (mine, theirs) = (of(&t["instance"]), of(&a_id));
        if !mine.is_empty() && !theirs.is_empty() {
            break theirs;
        }
        assert!(
            Instant::now() < deadline,
            "the two never shared the partitions: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, model) = &marks[1];
    let key = model
        .iter()
        .find(|(k, u)| a_owned.contains(&u64::from(partition_of(k))) && !shown(u).is_empty())
        .map(|(k, _)| k.clone())
        .expect("a view of A's");
    let answer = b
        .try_get(&format!("/v1/views/inbox-unread/{key}/history"))
        .expect("a read");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.headers.get("x-projector-instance").is_some(),
        "answered by the owner: {:?}",
        answer.headers
    );
    let changes = answer.body["changes"].as_array().map(Vec::len).unwrap_or(0);
    assert!(changes >= 1, "{}", answer.body);
    a.kill();
    // B owns every partition, restored from the changelog.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = table(&b);
        let parts = t["by_partition"].as_array().cloned().unwrap_or_default();
        let mine = t["instance"].clone();
        if parts.len() == PARTITIONS as usize
            && parts
                .iter()
                .all(|p| p["owner"] == mine && p["state"] == "owned")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never took every partition: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut checked = 0;
    for (at, model) in &marks {
        for (key, unread) in sample(model, model.len() / 80) {
            let want = shown(unread);
            if want.is_empty() {
                continue;
            }
            let answer = b
                .try_get(&format!("/v1/views/inbox-unread/{key}?as_of={at}"))
                .expect("a read");
            assert_eq!(answer.status, 200, "{key} as of {at}: {}", answer.body);
            assert_eq!(
                rendered(&answer.body["answer"]),
                want,
                "{key} as of {at}: {}",
                answer.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} views checked");
    println!(
        "history: B answered {checked} as_of reads of A's history, restored from the changelog"
    );
    drop(b);
    drop(broker);
}
