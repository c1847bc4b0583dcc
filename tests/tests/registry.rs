//! The plugin registry and `replace` deploys: a version swapped in while
//! events flow applies every offset after the swap point, the old one
//! every offset before it (checked against the audit); a broken module is
//! rejected and the running version goes on; a restart keeps the deployed
//! version without compiling it again; rollback returns to the previous.
//! Shadow generations are in `shadow.rs`.

use projector_common::shutdown::Shutdown;
use projector_core::envelope::Format;
use projector_sources::log::EmbeddedLog;
use projector_sources::run::run_log;
use projector_tests::hostile::{applied, count, event};
use projector_tests::{component, open_app, Api, Served};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_replace_while_events_flow_applies_each_offset_once_by_the_right_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncommit_interval_ms = 20\n",
    );
    let (_, v1) = component("hostile");
    let (v2_bytes, v2) = component("hostile-v2");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 4, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let total = 100_000u64;

    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
                let events: Vec<String> = chunk.iter().map(|i| event(*i)).collect();
                log.append(&events).expect("append");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let pipeline = {
        let (engine, log, stop) = (app.engine.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || run_log(&engine, &log, 256, &stop, false, |_| {}).expect("run"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while applied(&app, 4) < 30_000 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = app
        .deployer
        .deploy("hostile", &v2_bytes, "test", true)
        .expect("deploy v2");
    assert!(done.changed);
    assert_eq!(done.replaced.as_deref(), Some(v1.as_str()));
    writer.join().expect("writer");
    while applied(&app, 4) < total {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.stop();
    pipeline.join().expect("pipeline");

    // The audit covers every offset of every partition once: v1 up to
    // the swap point, v2 from there on.
    let runs = app.engine.store().audit("hostile").expect("audit");
    let ends = log.ends();
    let mut by_partition: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for r in runs {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut v2_applied = 0;
    for (p, runs) in &by_partition {
        let mut next = 0;
        let mut seen_v2 = false;
        for r in runs {
            assert_eq!(
                r.from, next,
                "partition {p}: a gap or an overlap at {}",
                r.from
            );
            next = r.next;
            if r.version == v2 {
                seen_v2 = true;
                v2_applied += r.next - r.from;
            } else {
                assert_eq!(r.version, v1, "partition {p}: unknown version");
                assert!(!seen_v2, "partition {p}: v1 applied after v2 took over");
            }
        }
        assert_eq!(
            next, ends[*p as usize],
            "partition {p}: not covered to its end"
        );
    }
    assert_eq!(by_partition.len(), 4);
    assert!(
        v2_applied > 0 && v2_applied < total,
        "v2 applied {v2_applied}"
    );

    // Every event was applied exactly once, and v2 renders.
    for k in 0..500 {
        assert_eq!(
            count(&app, &format!("k{k}")),
            (200, "2".to_string()),
            "k{k}"
        );
    }
    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.active.as_deref(), Some(v2.as_str()));
    assert_eq!(entry.rollback, vec![v1]);
    assert_eq!(entry.versions.len(), 2);
    // Deploying the active bytes again changes nothing.
    let again = app
        .deployer
        .deploy("hostile", &v2_bytes, "test", true)
        .expect("again");
    assert!(!again.changed);
}

#[test]
fn a_broken_module_is_rejected_and_the_running_version_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[http]\nlisten = \"127.0.0.1:0\"\n",
    );
    let (_, v1) = component("hostile");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 1, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let running = app
        .start(log.clone(), None, stop.clone(), false)
        .expect("start");
    let api = Api::new(format!("http://{}", running.addr().expect("api")));
    log.append(&(0..100).map(event).collect::<Vec<_>>())
        .expect("append");

    let broken: [(&str, Vec<u8>); 3] = [
        ("not wasm", b"definitely not wasm".to_vec()),
        ("a core module", wat::parse_str("(module)").expect("wat")),
        (
            "a component of another world",
            wat::parse_str("(component)").expect("wat"),
        ),
    ];
    for (what, bytes) in &broken {
        let e = app
            .deployer
            .deploy("hostile", bytes, "test", true)
            .expect_err(what);
        assert!(e.to_string().contains("rejected"), "{what}: {e}");
        let (status, body) = api.post("/v1/admin/plugins/hostile?replace=true", bytes.clone());
        assert_eq!(status, 422, "{what}");
        assert_eq!(body["error"], "rejected", "{what}: {body}");
        if *what == "a core module" {
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains("not a component"), "{message}");
            assert!(message.contains("wasm32-wasip2"), "{message}");
        }
    }
    // v1 still runs and keeps applying.
    log.append(&(100..200).map(event).collect::<Vec<_>>())
        .expect("append");
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&app, 1) < 200 {
        assert!(Instant::now() < deadline, "v1 stopped applying");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&app, "k7"), (1, "1".to_string()));
    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.active.as_deref(), Some(v1.as_str()));
    assert_eq!(entry.versions.len(), 1);

    // A good deploy over the API works, and so does rollback.
    let (v2, _) = component("hostile-v2");
    assert_eq!(
        api.post("/v1/admin/plugins/hostile?from=ci&replace=true", v2)
            .0,
        200
    );
    assert_eq!(count(&app, "k7"), (1, "2".to_string()));
    assert_eq!(api.post("/v1/admin/plugins/hostile/rollback", "").0, 200);
    assert_eq!(count(&app, "k7"), (1, "1".to_string()));
    let (_, list) = api.get("/v1/admin/plugins");
    assert_eq!(list["plugins"][0]["active"], v1.as_str(), "{list}");
    assert_eq!(list["plugins"][0]["running"], v1.as_str(), "{list}");
    stop.stop();
    running.wait().expect("stop");
}

#[test]
fn a_restart_keeps_the_deployed_version_and_does_not_recompile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[engine]\ncompile_cache_dir = \"cache\"\n";
    let (v2_bytes, v2) = component("hostile-v2");
    {
        let app = open_app(dir.path(), &["hostile"], extra);
        app.deployer
            .deploy("hostile", &v2_bytes, "test", true)
            .expect("deploy");
    }
    let app = open_app(dir.path(), &["hostile"], extra);
    let p = app.engine.projection("hostile").expect("loaded");
    assert_eq!(
        p.code().id(),
        v2,
        "the deployed version is active after a restart"
    );
    assert_eq!(
        app.deployer.host().compile_cache_hits(),
        1,
        "the deployed version came from the compile cache"
    );
    // Rolled back, the plugins directory's version is active after the
    // next restart.
    app.deployer.rollback("hostile").expect("rollback");
    drop(app);
    let app = open_app(dir.path(), &["hostile"], extra);
    let (_, v1) = component("hostile");
    assert_eq!(
        app.engine
            .projection("hostile")
            .expect("loaded")
            .code()
            .id(),
        v1
    );
}

#[test]
fn a_version_that_fails_its_probation_is_rolled_back_by_the_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncommit_interval_ms = 20\n[deploy]\nprobation_events = 200\nmax_failure_ratio = 0.1\n[limits]\ntimeout_retries = 0\n",
    );
    let (_, v1) = component("hostile");
    let (broken_bytes, broken) = component("hostile-broken");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 1, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let pipeline = {
        let (engine, log, stop) = (app.engine.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || run_log(&engine, &log, 10, &stop, false, |_| {}).expect("run"))
    };
    log.append(&(0..100).map(event).collect::<Vec<_>>())
        .expect("append");
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&app, 1) < 100 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    app.deployer
        .deploy("hostile", &broken_bytes, "test", true)
        .expect("deploy");
    // Events keep coming; the broken version fails them until the
    // runtime gives up on it.
    let mut next = 100;
    loop {
        log.append(&(next..next + 10).map(event).collect::<Vec<_>>())
            .expect("append");
        next += 10;
        std::thread::sleep(Duration::from_millis(5));
        let p = app.engine.projection("hostile").expect("loaded");
        if p.code().id() == v1 {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled back");
        assert!(next < 5_000, "never rolled back");
    }
    log.append(&(next..next + 500).map(event).collect::<Vec<_>>())
        .expect("append");
    next += 500;
    while applied(&app, 1) < next {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.stop();
    pipeline.join().expect("pipeline");

    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.active.as_deref(), Some(v1.as_str()));
    assert!(entry.rollback.is_empty(), "{entry:?}");
    let bad = entry
        .versions
        .iter()
        .find(|v| v.id == broken)
        .expect("recorded");
    let reason = bad.rolled_back.as_deref().expect("marked rolled back");
    assert!(reason.contains("failed"), "{reason}");
    let failed = app
        .engine
        .projection("hostile")
        .expect("p")
        .counters()
        .dead_lettered;
    assert!((21..=200).contains(&failed), "{failed} dead letters");
    // v1 applies the events after the rollback.
    assert_eq!(count(&app, &format!("k{}", (next - 1) % 500)).1, "1");
}

/// The running version deployed again with settings that break it is a
/// reconfigure, on probation as a replace is: the runtime gives it back
/// the settings it ran with, and the registry says so.
#[test]
fn a_reconfigure_that_fails_its_probation_gets_its_settings_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(
        dir.path(),
        &["hostile"],
        "[engine]\ncommit_interval_ms = 20\n[deploy]\nprobation_events = 200\nmax_failure_ratio = 0.1\n",
    );
    let (v1_bytes, v1) = component("hostile");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 1, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let pipeline = {
        let (engine, log, stop) = (app.engine.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || run_log(&engine, &log, 10, &stop, false, |_| {}).expect("run"))
    };
    log.append(&(0..100).map(event).collect::<Vec<_>>())
        .expect("append");
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&app, 1) < 100 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let breaking = serde_json::json!({"fail_all": true});
    let breaking = breaking.as_object().expect("an object");
    // The same settings as it runs with change nothing; others take `replace`.
    let same = app
        .deployer
        .deploy_with("hostile", &v1_bytes, "test", false, None);
    assert!(!same.expect("unchanged").changed);
    let refused = app
        .deployer
        .deploy_with("hostile", &v1_bytes, "test", false, Some(breaking))
        .expect_err("refused without replace");
    assert!(
        refused
            .to_string()
            .contains(r#"from {} to {"fail_all":true}"#),
        "{refused}"
    );
    let done = app
        .deployer
        .deploy_with("hostile", &v1_bytes, "test", true, Some(breaking))
        .expect("reconfigured");
    assert!(done.changed);
    assert_eq!(done.replaced.as_deref(), Some(v1.as_str()));
    let reconfigured = app
        .engine
        .projection("hostile")
        .expect("loaded")
        .code()
        .clone();
    // Events keep coming; each fails until the runtime gives up on the
    // new settings.
    let mut next = 100;
    loop {
        log.append(&(next..next + 10).map(event).collect::<Vec<_>>())
            .expect("append");
        next += 10;
        std::thread::sleep(Duration::from_millis(5));
        let p = app.engine.projection("hostile").expect("loaded");
        if !Arc::ptr_eq(p.code(), &reconfigured) {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled back");
        assert!(next < 5_000, "never rolled back");
    }
    let dead_letters = || {
        let p = app.engine.projection("hostile").expect("loaded");
        p.counters().dead_lettered
    };
    let failed = dead_letters();
    assert!((21..=200).contains(&failed), "{failed} dead letters");
    log.append(&(next..next + 500).map(event).collect::<Vec<_>>())
        .expect("append");
    next += 500;
    while applied(&app, 1) < next {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.stop();
    pipeline.join().expect("pipeline");
    assert_eq!(dead_letters(), failed, "none failed after the rollback");

    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.active.as_deref(), Some(v1.as_str()));
    assert_eq!(entry.settings_of(&v1), None, "the settings it ran with");
    assert!(entry.rollback.is_empty(), "{entry:?}");
    assert!(entry.versions.iter().all(|v| v.rolled_back.is_none()));
    let last: Vec<_> = entry.history.iter().rev().take(2).collect();
    assert_eq!(last[1].action, projector_deploy::Action::Reconfigure);
    assert_eq!(last[0].action, projector_deploy::Action::RuntimeRollback);
    let reason = last[0].reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with("its settings restored: "), "{reason}");
}

fn wait_running(app: &projector::app::App, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if app.engine.projection("hostile").expect("p").code().id() == id {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn the_watched_directory_deploys_completed_files_and_never_a_partial_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["hostile"], "[http]\nlisten = \"off\"\n");
    let (v1_bytes, v1) = component("hostile");
    let (v2_bytes, v2) = component("hostile-v2");
    let log = Arc::new(EmbeddedLog::open(app.engine.store(), 1, Format::Auto).expect("log"));
    let stop = Shutdown::new();
    let running = app.start(log, None, stop.clone(), false).expect("start");
    let target = dir.path().join("plugins/hostile.wasm");

    // A copy in progress: half the file, then nothing for a while.
    std::fs::write(&target, &v2_bytes[..v2_bytes.len() / 2]).expect("half");
    assert!(!wait_running(&app, &v2, Duration::from_millis(1500)));
    assert_eq!(app.engine.projection("hostile").expect("p").code().id(), v1);
    let entry = projector_tests::hostile::entry(&app);
    assert_eq!(entry.versions.len(), 1, "a partial file is never a version");

    // The copy completes.
    std::fs::write(&target, &v2_bytes).expect("whole");
    assert!(
        wait_running(&app, &v2, Duration::from_secs(10)),
        "v2 not deployed"
    );

    // Written aside, then renamed into place.
    let aside = dir.path().join("plugins/.hostile.wasm.part");
    std::fs::write(&aside, &v1_bytes).expect("aside");
    assert!(
        !wait_running(&app, &v1, Duration::from_millis(800)),
        "a hidden file was deployed"
    );
    std::fs::rename(&aside, &target).expect("rename");
    assert!(
        wait_running(&app, &v1, Duration::from_secs(10)),
        "the renamed file was not deployed"
    );
    stop.stop();
    running.wait().expect("stop");
}

/// Events of keys `legacy0..legacy{n}`, one each.
fn legacy_events(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("l{i}"), "type": "count", "source": "test",
                "key": format!("legacy{i}"), "version": 1, "time": 1_000, "payload": {}})
            .to_string()
        })
        .collect()
}

#[test]
fn adding_and_replacing_are_different_acts() {
    let s = Served::start(&["hostile"], "");
    let (v1_bytes, v1) = component("hostile");
    let (v2_bytes, v2) = component("hostile-v2");
    let running = || {
        s.app
            .engine
            .projection("hostile")
            .expect("p")
            .code()
            .id()
            .to_string()
    };

    // A new version onto the running plugin: refused without replace,
    // naming both, and nothing changes.
    let (status, body) = s.post("/v1/admin/plugins/hostile", v2_bytes.clone());
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "replace_required", "{body}");
    assert_eq!(body["running"]["version"], "1", "{body}");
    assert_eq!(body["incoming"]["version"], "2", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(r#""hostile" version "1""#), "{message}");
    assert!(message.contains(r#""hostile" version "2""#), "{message}");
    assert_eq!(running(), v1);

    // A component under a name it does not call itself: refused too.
    let (status, body) = s.post("/v1/admin/plugins/other", v1_bytes.clone());
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["target"], "other", "{body}");
    assert_eq!(body["incoming"]["name"], "hostile", "{body}");
    assert!(s.app.engine.projection("other").is_err());

    // Said explicitly, the replace goes ahead.
    let (status, body) = s.post("/v1/admin/plugins/hostile?replace=true", v2_bytes);
    assert_eq!(status, 200, "{body}");
    assert_eq!(running(), v2);

    // A shadow of another version of the same plugin needs no flag.
    let (status, body) = s.post("/v1/admin/plugins/hostile?mode=shadow", v1_bytes);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_replace_that_cannot_render_the_views_it_inherits_is_rolled_back() {
    let s = Served::start(&["hostile"], "");
    let (_, v1) = component("hostile");
    let (v2_bytes, v2) = component("hostile-v2");
    s.ingest(&legacy_events(20));
    projector_tests::eventually("v1 applies the events", Duration::from_secs(30), || {
        s.app
            .engine
            .read("hostile", "legacy19", 0)
            .is_ok_and(|v| v.is_some())
    });
    s.app.engine.commit().expect("commit");

    let (status, body) = s.post("/v1/admin/plugins/hostile?replace=true", v2_bytes);
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("rolled back"), "{message}");
    assert!(message.contains("failed to render"), "{message}");
    assert_eq!(
        s.app.engine.projection("hostile").expect("p").code().id(),
        v1
    );
    assert_eq!(count(&s.app, "legacy3"), (1, "1".to_string()));
    let entry = projector_tests::hostile::entry(&s.app);
    assert_eq!(entry.active.as_deref(), Some(v1.as_str()));
    let bad = entry
        .versions
        .iter()
        .find(|v| v.id == v2)
        .expect("recorded");
    let reason = bad.rolled_back.as_deref().expect("marked rolled back");
    assert!(
        reason.contains("inherited views failed to render"),
        "{reason}"
    );
}

/// `projector:plugin@0.2.1` added the optional `prefetch` export: a
/// component built for 0.2.0 (the fixture built with the SDK's
/// `wit-0-2-0` feature: its imports and exports are all `@0.2.0`) still
/// deploys over a 0.2.1 one and folds, renders and compares as before.
#[test]
fn a_plugin_built_for_wit_0_2_0_still_loads_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["hostile"], "");
    let (old_bytes, old) = component("hostile-0.2.0");
    let text = String::from_utf8_lossy(&old_bytes);
    assert!(
        text.contains("projector:plugin/projection@0.2.0") && !text.contains("@0.2.1"),
        "the fixture is a 0.2.0 component"
    );
    let records = |from: u64| {
        let events = (from..from + 1000).map(|i| event(i).into_bytes()).collect();
        projector_tests::records(from, events)
    };
    app.engine.process("test", 0, &records(0)).expect("batch");
    app.deployer
        .deploy("hostile", &old_bytes, "test", true)
        .expect("a 0.2.0 component deploys");
    let p = app.engine.projection("hostile").expect("loaded");
    assert_eq!(p.code().id(), old);
    let c = app
        .engine
        .process("test", 0, &records(1000))
        .expect("batch");
    assert_eq!(
        c.total().applied,
        1000,
        "every event applied by the 0.2.0 build"
    );
    assert_eq!(count(&app, "k7"), (4, "1".to_string()));
}
