//! Shadow generations: rebuilt from the log or migrated from the live
//! views beside the active one, compared, promoted, rolled back, retired,
//! and taken up again after a restart.

use projector_common::shutdown::Shutdown;
use projector_core::envelope::Format;
use projector_deploy::ShadowMethod;
use projector_sources::log::EmbeddedLog;
use projector_sources::run::run_log;
use projector_tests::hostile::{applied, count, event};
use projector_tests::{component, open_app, Api};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_shadow_generation_is_rebuilt_compared_promoted_rolled_back_and_retired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncommit_interval_ms = 50\n",
    );
    let (v2_bytes, v2) = component("hostile-v2");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 4, Format::Auto).expect("log"));
    app.deployer.set_replay(log.clone());
    let stop = Shutdown::new();
    let pipeline = {
        let (engine, log, stop) = (app.engine.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || run_log(&engine, &log, 512, &stop, false, |_| {}).expect("run"))
    };
    let total = 60_000u64;
    for chunk in (0..40_000).collect::<Vec<u64>>().chunks(5_000) {
        log.append(&chunk.iter().map(|i| event(*i)).collect::<Vec<_>>())
            .expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while applied(&app, 4) < 40_000 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Events keep flowing during the build.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for chunk in (40_000..total).collect::<Vec<u64>>().chunks(500) {
                log.append(&chunk.iter().map(|i| event(*i)).collect::<Vec<_>>())
                    .expect("append");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = app
        .deployer
        .deploy_shadow("hostile", &v2_bytes, "test", ShadowMethod::Auto, false)
        .expect("shadow");
    assert_eq!(started.id, v2);
    // Reads are still served by v1 while v2 builds.
    assert_eq!(count(&app, "k1").1, "1");
    let status = loop {
        let s = app.deployer.shadow("hostile").expect("status");
        assert!(!s.phase.starts_with("failed"), "{s:?}");
        if s.phase == "following" {
            break s;
        }
        assert!(Instant::now() < deadline, "the build never finished: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.percent, 100.0, "{status:?}");
    assert!(status.done >= 40_000, "{status:?}");
    writer.join().expect("writer");
    while applied(&app, 4) < total {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The comparison finds the shape change (the render names its build)
    // on every sampled key, and nothing else.
    let c = app.deployer.compare("hostile", 100).expect("compare");
    assert_eq!(c.compared, 100, "{c:?}");
    assert_eq!(c.mismatched, 100, "{c:?}");
    assert_eq!(c.missing, 0, "{c:?}");
    // The sides are named by version, and every reason has an example.
    assert_eq!((c.serving.len(), c.other.len()), (12, 12), "{c:?}");
    assert_ne!(c.serving, c.other);
    let shown: std::collections::BTreeSet<&str> = c
        .examples
        .iter()
        .flat_map(|e| e["differences"].as_array().into_iter().flatten())
        .filter_map(|d| d["reason"].as_str())
        .collect();
    assert!(
        c.reasons.keys().all(|r| shown.contains(r.as_str())),
        "{c:?}"
    );
    assert!(!format!("{c:?}").contains("only-in-source"), "{c:?}");
    let paths: Vec<String> = c
        .examples
        .iter()
        .flat_map(|e| e["differences"].as_array().cloned().unwrap_or_default())
        .map(|d| d["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p.contains("version")),
        "{paths:?}"
    );

    let (_, v1) = component("hostile");
    let shadow_of = |app: &projector::app::App| projector_tests::hostile::entry(app).shadow;
    assert_eq!(shadow_of(&app).as_deref(), Some(v2.as_str()));
    // Promote, roll back, promote: each generation holds every event once.
    let per_key = total / 500;
    app.deployer.promote("hostile", false).expect("promote");
    assert_eq!(
        shadow_of(&app).as_deref(),
        Some(v1.as_str()),
        "the old one is kept beside"
    );
    assert_eq!(count(&app, "k1"), (per_key, "2".to_string()));
    app.deployer.rollback("hostile").expect("rollback");
    assert_eq!(count(&app, "k1"), (per_key, "1".to_string()));
    app.deployer
        .promote("hostile", false)
        .expect("promote again");
    // More events reach both generations.
    log.append(&(total..total + 500).map(event).collect::<Vec<_>>())
        .expect("append");
    while applied(&app, 4) < total + 500 {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&app, "k1"), (per_key + 1, "2".to_string()));
    let retired = app.deployer.retire("hostile").expect("retire");
    assert_eq!(retired, "hostile");
    assert_eq!(shadow_of(&app), None);
    assert_eq!(
        app.engine.store().views("hostile").count(),
        0,
        "the old generation is deleted"
    );
    stop.stop();
    pipeline.join().expect("pipeline");
    app.engine.commit().expect("commit");
    drop((app, log));

    // After a restart the promoted generation serves.
    let app = open_app(dir.path(), &["hostile"], "");
    assert_eq!(count(&app, "k1"), (per_key + 1, "2".to_string()));
    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.active.as_deref(), Some(v2.as_str()));
}

/// A source of truth that answers `{"count": 42}` to every request.
fn fixed_source() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = r#"{"count": 42}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_shadow_by_migration_over_a_trimmed_log_migrates_views_and_repopulates_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = fixed_source();
    let app = open_app(
        dir.path(),
        &["hostile"],
        &format!(
            "[engine]\ncommit_interval_ms = 20\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.hostile.truth]\nurl = \"http://{source}/count?key={{key}}\"\n"
        ),
    );
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 1, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let running = app
        .start(log.clone(), None, stop.clone(), false)
        .expect("start");
    let api = Api::new(format!("http://{}", running.addr().expect("api")));
    // 100 keys three times over, then two keys the new version cannot migrate.
    for round in 0..3u64 {
        log.append(
            &(round * 500..round * 500 + 100)
                .map(event)
                .collect::<Vec<_>>(),
        )
        .expect("append");
    }
    let stuck: Vec<String> = ["stuck1", "stuck2"]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            json!({"id": format!("s{i}"), "type": "count", "source": "test", "key": k,
                   "version": 1, "time": 1, "payload": {}})
            .to_string()
        })
        .collect();
    log.append(&stuck).expect("append");
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&app, 1) < 302 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Retention deletes the beginning of the log: a rebuild is refused,
    // and the default method migrates.
    log.truncate_before(0, 150).expect("truncate");
    assert!(log.starts()[0] > 0);
    let (v2_bytes, _) = component("hostile-v2");
    let refused = app
        .deployer
        .deploy_shadow("hostile", &v2_bytes, "test", ShadowMethod::Rebuild, false)
        .expect_err("a rebuild needs the whole log");
    assert!(refused.to_string().contains("migrate"), "{refused}");
    app.deployer
        .deploy_shadow("hostile", &v2_bytes, "test", ShadowMethod::Auto, false)
        .expect("shadow");
    let status = loop {
        let s = app.deployer.shadow("hostile").expect("status");
        assert!(!s.phase.starts_with("failed"), "{s:?}");
        if s.phase == "following" {
            break s;
        }
        assert!(Instant::now() < deadline, "never migrated: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.method, ShadowMethod::Migrate);
    assert_eq!(
        (status.migrated, status.not_migrated),
        (Some(100), Some(2)),
        "{status:?}"
    );
    assert_eq!(status.percent, 100.0);

    app.deployer.promote("hostile", false).expect("promote");
    let v = api.get("/v1/views/hostile/k5?mode=projection").1;
    assert_eq!(
        (
            v["answer"]["count"].as_u64(),
            v["answer"]["version"].as_str()
        ),
        (Some(3), Some("2")),
        "{v}"
    );
    // A key left absent populates from the source on its next read.
    let v = api.get("/v1/views/hostile/stuck1?mode=projection").1;
    assert_eq!(v["served_by"], "source", "{v}");
    assert_eq!(v["answer"]["count"], 42, "{v}");
    let v = api.get("/v1/views/hostile/stuck1?mode=projection").1;
    assert_eq!(v["served_by"], "projection", "{v}");
    assert_eq!(
        (
            v["answer"]["count"].as_u64(),
            v["answer"]["version"].as_str()
        ),
        (Some(42), Some("2")),
        "{v}"
    );
    // The migrated generation follows live events.
    log.append(&[event(1505)]).expect("append");
    while applied(&app, 1) < 303 {
        assert!(Instant::now() < deadline, "not applied");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&app, "k5"), (4, "2".to_string()));
    stop.stop();
    running.wait().expect("stop");
}

/// A shadow generation outlives a restart: taken up again from its own
/// offsets, it catches up with what was appended meanwhile and follows
/// live events; so does the old generation after a promotion, and a
/// rollback then still works.
#[test]
fn a_shadow_generation_and_a_promotion_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[engine]\ncommit_interval_ms = 50\n";
    let (v2_bytes, v2) = component("hostile-v2");
    // Run `app` on the log until `total` events are applied by the active
    // generation and its shadow follows; then stop and restart.
    let run = |app: &projector::app::App, log: &Arc<EmbeddedLog>, total: u64| {
        let stop = Shutdown::new();
        let pipeline = {
            let (engine, log, stop) = (app.engine.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                run_log(&engine, &log, 512, &stop, false, |_| {}).expect("run")
            })
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = app.deployer.shadow("hostile").expect("a shadow");
            assert!(!s.phase.starts_with("failed"), "{s:?}");
            let built = app
                .engine
                .shadows("hostile")
                .iter()
                .all(|g| !g.is_building());
            if applied(app, 2) >= total && built {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.stop();
        pipeline.join().expect("pipeline");
        app.engine.commit().expect("commit");
    };
    let open = || {
        let app = open_app(dir.path(), &["hostile"], extra);
        let log = Arc::new(EmbeddedLog::open(app.engine.store(), 2, Format::Auto).expect("log"));
        (app, log)
    };

    let (app, log) = open();
    app.deployer.set_replay(log.clone());
    log.append(&(0..2_000).map(event).collect::<Vec<_>>())
        .expect("append");
    app.deployer
        .deploy_shadow("hostile", &v2_bytes, "test", ShadowMethod::Rebuild, false)
        .expect("shadow");
    run(&app, &log, 2_000);
    drop((app, log));

    // Restarted with more events appended: the shadow catches up.
    let (app, log) = open();
    log.append(&(2_000..3_000).map(event).collect::<Vec<_>>())
        .expect("append");
    app.deployer.set_replay(log.clone());
    run(&app, &log, 3_000);
    let s = app.deployer.shadow("hostile").expect("the shadow is back");
    assert_eq!(
        (s.id.as_str(), s.phase.as_str()),
        (v2.as_str(), "following"),
        "{s:?}"
    );
    let c = app.deployer.compare("hostile", 50).expect("compare");
    assert_eq!((c.compared, c.missing), (50, 0), "{c:?}");
    app.deployer.promote("hostile", false).expect("promote");
    assert_eq!(count(&app, "k1"), (6, "2".to_string()));
    drop((app, log));

    // Restarted after the promotion: v2 serves, v1 is kept current
    // beside it, and a rollback returns to it with every event.
    let (app, log) = open();
    log.append(&(3_000..3_500).map(event).collect::<Vec<_>>())
        .expect("append");
    app.deployer.set_replay(log.clone());
    run(&app, &log, 3_500);
    assert_eq!(count(&app, "k1"), (7, "2".to_string()));
    app.deployer.rollback("hostile").expect("rollback");
    assert_eq!(count(&app, "k1"), (7, "1".to_string()));
}

/// Three partitions of one source, handed to a rebuild as the test says:
/// which of them this instance owns now, and a gate that holds reads of
/// partition 0 (the build's first) until the test opens it.
struct Moving {
    records: Vec<Vec<projector_core::Record>>,
    owned: std::sync::Mutex<Vec<u32>>,
    gate: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl projector_core::source::Replay for Moving {
    fn partitions(&self) -> Vec<(String, u32)> {
        let owned = self.owned.lock().expect("owned");
        owned.iter().map(|p| ("moving".to_string(), *p)).collect()
    }

    fn complete(&self) -> bool {
        true
    }

    fn read(
        &self,
        _source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<projector_core::Record>> {
        if partition == 0 {
            let (open, changed) = &self.gate;
            let mut open = open.lock().expect("gate");
            while !*open {
                open = changed.wait(open).expect("gate");
            }
        }
        Ok(self.records[partition as usize]
            .iter()
            .filter(|r| r.offset >= from)
            .take(max)
            .cloned()
            .collect())
    }
}

/// A shadow build follows the partitions as they move. Partition 1 moves
/// back here while the build is on partition 0, resumed past everything
/// the shadow has of it: the build takes it in. Partition 2's move lands
/// just after the build joined the live path (its resume point taken
/// while it was building): the shadow finds itself lacking records, leaves
/// the live path, and is caught up again. Promoted, every view counts
/// every event of its partition once.
#[test]
fn a_shadow_build_takes_in_partitions_that_move_here_during_and_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncommit_interval_ms = 50\n",
    );
    // 200 events per partition, over ten keys of its own.
    let records: Vec<Vec<projector_core::Record>> = (0..3u32)
        .map(|p| {
            let values = (0..200u64)
                .map(|i| {
                    json!({"id": format!("p{p}-{i}"), "type": "count", "source": "test",
                           "key": format!("p{p}k{}", i % 10), "version": i + 1,
                           "time": 1_000 + i, "payload": {}})
                    .to_string()
                    .into_bytes()
                })
                .collect();
            projector_tests::records(0, values)
        })
        .collect();
    let live = |p: u32, from: usize, to: usize| {
        app.engine
            .process("moving", p, &records[p as usize][from..to])
            .expect("process");
    };
    // This instance applied the first half of every partition; another
    // then took partitions 1 and 2.
    for p in 0..3 {
        live(p, 0, 100);
    }
    let moving = Arc::new(Moving {
        records: records.clone(),
        owned: std::sync::Mutex::new(vec![0]),
        gate: Default::default(),
    });
    app.deployer.set_replay(moving.clone());
    live(0, 100, 150);

    let (v2, _) = component("hostile-v2");
    app.deployer
        .deploy_shadow("hostile", &v2, "test", ShadowMethod::Rebuild, false)
        .expect("shadow");
    let phase = || app.deployer.shadow("hostile").expect("status").phase;
    assert_eq!(phase(), "building");
    // Partition 1 comes back mid-build, resumed at this instance's offset
    // (the building shadow has no say in it), and flows.
    assert_eq!(app.engine.resume_offset("moving", 1).expect("resume"), 100);
    moving.owned.lock().expect("owned").push(1);
    live(1, 100, 200);
    // Partition 2's resume point is taken now, while the shadow builds;
    // its move shows only after the build joined.
    assert_eq!(app.engine.resume_offset("moving", 2).expect("resume"), 100);
    {
        let (open, changed) = &moving.gate;
        *open.lock().expect("gate") = true;
        changed.notify_all();
    }
    let wait_following = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while phase() != "following" {
            assert!(!phase().starts_with("failed"), "{}", phase());
            assert!(Instant::now() < deadline, "never built: {}", phase());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_following();
    moving.owned.lock().expect("owned").push(2);
    live(2, 100, 200);
    assert_eq!(phase(), "building", "the shadow lacks partition 2's start");
    wait_following();

    app.deployer.promote("hostile", false).expect("promote");
    for (p, events) in [(0, 150), (1, 200), (2, 200)] {
        for k in 0..10 {
            assert_eq!(
                count(&app, &format!("p{p}k{k}")),
                (events / 10, "2".to_string()),
                "p{p}k{k}"
            );
        }
    }
}

/// `GET /v1/admin/plugins` lists what was done to a plugin, in order,
/// with its versions: a promotion rolled back leaves its trace.
#[test]
fn the_registry_history_lists_the_deploy_shadow_promotion_and_rollback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = projector_tests::hostile::run_printing(dir.path());
    let (_, v1) = component("hostile");
    let (v2_bytes, v2) = component("hostile-v2");

    let (status, body) = run.post(
        "/v1/admin/plugins/hostile?mode=shadow&replace=true",
        v2_bytes,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = run.get("/v1/admin/plugins/hostile/shadow");
        if s["phase"] == "following" {
            break;
        }
        assert!(Instant::now() < deadline, "not built: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = run.post("/v1/admin/plugins/hostile/promote", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = run.post("/v1/admin/plugins/hostile/rollback", "");
    assert_eq!(status, 200, "{body}");

    let (status, list) = run.get("/v1/admin/plugins");
    assert_eq!(status, 200, "{list}");
    let entry = &list["plugins"][0];
    assert_eq!(entry["plugin"], "hostile", "{list}");
    assert_eq!(entry["active"], v1.as_str(), "{list}");
    let acts: Vec<(&str, &str, Option<&str>)> = entry["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("an action"),
                e["id"].as_str().expect("an id"),
                e["previous"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("deploy", v1.as_str(), None),
            ("shadow", v2.as_str(), Some(v1.as_str())),
            ("promote", v2.as_str(), Some(v1.as_str())),
            ("rollback", v1.as_str(), Some(v2.as_str())),
        ],
        "{list}"
    );
    let times: Vec<i64> = entry["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|e| e["at_ms"].as_i64().expect("when"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{list}");
    run.stop();
}
