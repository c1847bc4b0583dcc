//! Plugins added and removed while the runtime runs: a new plugin's views
//! are built from the log while events flow, then it joins the live path
//! with every event applied once; a removed plugin comes back from its
//! offsets (views kept) or rebuilds (views dropped); the plugins directory
//! adds a new file as a plugin, refuses another plugin's component put
//! over a running one, and a restart keeps what was removed.

use projector_tests::hostile::{applied, count, event};
use projector_tests::{plugin_wasm, Api, Launch, Projector, Served};
use std::collections::BTreeMap;
use std::time::Duration;

const KEYS: u64 = 500;

/// Wait (60 s at most) until `done` holds.
fn eventually(what: &str, done: impl FnMut() -> bool) {
    projector_tests::eventually(what, Duration::from_secs(60), done);
}

fn deploy(s: &Served, name: &str) -> serde_json::Value {
    let (status, body) = s.post(
        &format!("/v1/admin/plugins/{name}?from=test"),
        std::fs::read(plugin_wasm("hostile")).expect("hostile.wasm"),
    );
    assert!(status == 200 && body.is_object(), "{status} {body}");
    body
}

/// Post events `range` in batches of 250, a little apart.
fn stream(s: &Served, range: std::ops::Range<u64>) {
    let all: Vec<u64> = range.collect();
    for chunk in all.chunks(250) {
        let events: Vec<String> = chunk.iter().map(|i| event(*i)).collect();
        s.ingest(&events);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every key counts each of the `n` events once.
fn assert_counts(s: &Served, n: u64) {
    for k in 0..KEYS {
        let expected = n / KEYS + u64::from(k < n % KEYS);
        assert_eq!(count(&s.app, &format!("k{k}")).0, expected, "k{k}");
    }
}

/// The audit of `ns` covers every offset of every partition exactly once.
fn assert_audit_covers(s: &Served, ns: &str) {
    s.app.engine.commit().expect("commit");
    let ends: BTreeMap<u32, u64> = (0..4)
        .map(|p| (p, s.app.engine.live_offset("log", p).expect("live")))
        .collect();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for run in s.app.engine.store().audit(ns).expect("audit") {
        let at = next.entry(run.partition).or_default();
        assert_eq!(
            run.from, *at,
            "partition {}: a gap or an overlap",
            run.partition
        );
        *at = run.next;
    }
    for (p, end) in ends {
        assert_eq!(next.get(&p).copied().unwrap_or(0), end, "partition {p}");
    }
}

fn plugin_names(api: &Api) -> Vec<String> {
    projector_tests::plugin_names_of(&api.get("/v1/plugins").1)
}

#[test]
fn a_plugin_added_under_a_steady_stream_applies_every_event_once_and_serves_once_live() {
    let s = Served::start(&["inbox-unread"], "");
    let total = 30_000;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| stream(&s, 0..total));
        eventually("a third of the stream", || {
            s.app.engine.live_offset("log", 0).unwrap_or(0) > total / 12
        });
        // The other plugin's lag (records appended, not yet applied),
        // sampled before the add and while the new plugin is built.
        let inbox_lag = || -> u64 {
            s.get_text("/metrics")
                .lines()
                .filter(|l| l.starts_with("projector_lag_records{plugin=\"inbox-unread\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let mut before = 0;
        for _ in 0..20 {
            before = before.max(inbox_lag());
            std::thread::sleep(Duration::from_millis(10));
        }
        let deployed = deploy(&s, "hostile");
        assert!(deployed["replaced"].is_null(), "{deployed}");
        assert_eq!(deployed["changed"], true);
        // Not served until it is live; then served.
        let (status, body) = s.get("/v1/views/hostile/k1");
        assert!(status == 503 || status == 200, "{status} {body}");
        if status == 503 {
            assert_eq!(body["error"], "plugin_building", "{body}");
        }
        let mut last = serde_json::Value::Null;
        let mut during = 0;
        eventually("the new plugin live", || {
            during = during.max(inbox_lag());
            last = s.get("/v1/admin/plugins/hostile/build").1;
            assert!(
                !last["phase"].as_str().unwrap_or("").starts_with("failed"),
                "{last}"
            );
            last["phase"] == "live"
        });
        assert!(
            last["done"].as_u64().unwrap_or(0) > 0,
            "built from the log: {last}"
        );
        // Printed, not asserted: a shared machine's timing is noise.
        eprintln!(
            "hotload: inbox-unread lag at most {before} records before the add, {during} while hostile was built ({} records at {:.0}/s)",
            last["done"],
            last["events_per_s"].as_f64().unwrap_or(0.0)
        );
        let (status, body) = s.get("/v1/views/hostile/k1");
        assert_eq!(status, 200, "{body}");
        writer.join().expect("writer");
    });
    eventually("every event applied", || applied(&s.app, 4) == total);
    assert_counts(&s, total);
    assert_audit_covers(&s, "hostile");
    // The plugin that was there all along saw the whole stream too.
    let inbox = s.app.engine.projection("inbox-unread").expect("inbox");
    let inbox_next: u64 = (0..4)
        .map(|p| {
            s.app
                .engine
                .applied("inbox-unread", "log", p)
                .expect("applied")
        })
        .sum();
    assert_eq!(inbox_next, total, "{:?}", inbox.counters());
    assert_eq!(plugin_names(&s), ["hostile", "inbox-unread"]);
}

#[test]
fn a_removed_plugin_comes_back_from_its_offsets_or_rebuilds_without_its_views() {
    let s = Served::start(&["inbox-unread", "hostile"], "");
    stream(&s, 0..5_000);
    eventually("the first events", || applied(&s.app, 4) == 5_000);

    // Removed with its views kept: not served, events go on without it.
    let (status, removed) = s.send(reqwest::Method::DELETE, "/v1/admin/plugins/hostile", "");
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["views_dropped"], false);
    let (status, body) = s.get("/v1/views/hostile/k1");
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_plugin"))
    );
    assert_eq!(plugin_names(&s), ["inbox-unread"]);
    stream(&s, 5_000..8_000);
    // Back: it applies only what it missed.
    deploy(&s, "hostile");
    let mut last = serde_json::Value::Null;
    eventually("hostile live again", || {
        last = s.get("/v1/admin/plugins/hostile/build").1;
        last["phase"] == "live"
    });
    eventually("caught up", || applied(&s.app, 4) == 8_000);
    let rebuilt = last["done"].as_u64().expect("done");
    assert!(
        rebuilt <= 3_000,
        "resumed from its offsets, rebuilt {rebuilt}: {last}"
    );
    assert_counts(&s, 8_000);
    assert_audit_covers(&s, "hostile");

    // Removed with its views dropped: back, it rebuilds everything.
    let (status, removed) = s.send(
        reqwest::Method::DELETE,
        "/v1/admin/plugins/hostile?drop_views=true",
        "",
    );
    assert_eq!(status, 200, "{removed}");
    assert_eq!(s.app.engine.store().views("hostile").count(), 0);
    deploy(&s, "hostile");
    eventually("hostile live once more", || {
        last = s.get("/v1/admin/plugins/hostile/build").1;
        last["phase"] == "live"
    });
    assert_eq!(last["done"].as_u64(), Some(8_000), "{last}");
    assert_counts(&s, 8_000);
    // The registry kept its history throughout.
    let entry = projector_tests::hostile::entry(&s.app);
    assert!(!entry.removed);
    assert_eq!(entry.versions.len(), 1);
}

/// `projector run` in its own process, logging at `info`.
fn start(config: &std::path::Path) -> Projector {
    Launch::run(config).env("PROJECTOR_LOG", "info").start()
}

/// Post the events of `range`.
fn post(run: &Projector, range: std::ops::Range<u64>) {
    run.ingest(&range.map(event).collect::<Vec<_>>());
}

#[test]
fn the_plugins_directory_adds_a_new_file_once_refuses_another_plugin_over_it_and_a_restart_keeps_a_removal(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = projector_tests::write_config(
        dir.path(),
        &["inbox-unread"],
        "[engine]\ncommit_interval_ms = 50\ncompile_cache_dir = \"compiled\"\n",
    );
    let plugins = dir.path().join("plugins");
    let run = start(&config);
    post(&run, 0..2_000);
    // Written beside, renamed into place: one new plugin, one log line.
    let hidden = plugins.join(".hostile.wasm.part");
    std::fs::copy(plugin_wasm("hostile"), &hidden).expect("copy");
    std::fs::rename(&hidden, plugins.join("hostile.wasm")).expect("rename");
    eventually("hostile added", || {
        plugin_names(&run).contains(&"hostile".to_string())
    });
    post(&run, 2_000..4_000);
    eventually("every event counted", || {
        let (status, body) = run.get("/v1/views/hostile/k0");
        status == 200 && body["answer"]["count"] == 8
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        run.said("hostile.wasm: a new plugin"),
        1,
        "{}",
        run.stderr_tail(200)
    );

    // Another plugin's component put over a running one is refused, and
    // the running one goes on.
    std::fs::copy(plugin_wasm("inbox-unread"), &hidden).expect("copy");
    std::fs::rename(&hidden, plugins.join("hostile.wasm")).expect("rename");
    eventually("the refusal", || {
        run.said("hostile.wasm: not deployed") == 1
    });
    assert!(
        run.said("--name hostile --replace") == 1,
        "{}",
        run.stderr_tail(20)
    );
    post(&run, 4_000..4_500);
    eventually("hostile still counting", || {
        let (status, body) = run.get("/v1/views/hostile/k0");
        status == 200 && body["answer"]["count"] == 9
    });

    // A file that leaves does not take its plugin out; it says so.
    std::fs::remove_file(plugins.join("hostile.wasm")).expect("rm");
    eventually("the log line", || {
        run.said("left the plugins directory") == 1
    });
    assert!(plugin_names(&run).contains(&"hostile".to_string()));
    std::fs::copy(plugin_wasm("hostile"), plugins.join("hostile.wasm")).expect("copy back");

    // Removed through the API: a restart does not load it from its file.
    let (status, body) = run.send(reqwest::Method::DELETE, "/v1/admin/plugins/hostile", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(plugin_names(&run), ["inbox-unread"]);
    run.stop();
    let run = start(&config);
    assert_eq!(plugin_names(&run), ["inbox-unread"]);
    assert_eq!(run.said("removed at runtime and is not loaded"), 1);
    run.stop();
}

/// Events that each run the hostile plugin to its deadline.
fn slow_events(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("slow{i}"), "type": "loop", "source": "test",
                "key": format!("k{}", i % 500), "version": i + 1, "time": 1_000 + i, "payload": {}})
            .to_string()
        })
        .collect()
}

#[test]
fn a_slow_hot_add_shows_true_progress_and_never_holds_up_another_plugins_token_reads() {
    let s = Served::start(
        &["inbox-unread"],
        "[plugins.inbox-unread]\npopulation = \"eager\"\n\
         [plugins.hostile]\nlimits = { epoch_deadline_ms = 50 }\n",
    );
    // About 50 records a partition, 50 ms each: seconds of build, and
    // batches of a partition that used to hold the engine for 2.5 s.
    s.ingest(&slow_events(200));
    let end = || -> u64 {
        (0..4)
            .map(|p| s.app.engine.live_offset("log", p).unwrap_or(0))
            .sum()
    };
    eventually("the slow events appended", || end() == 200);
    deploy(&s, "hostile");
    let building = |status: &serde_json::Value| {
        let (done, total) = (status["done"].as_u64(), status["total"].as_u64());
        let percent = status["percent"].as_f64().unwrap_or(100.0);
        assert!(
            done < total && percent < 100.0,
            "while building, never done: {status}"
        );
    };
    let mut last = serde_json::Value::Null;
    eventually("a part of the build done", || {
        last = s.get("/v1/admin/plugins/hostile/build").1;
        assert_eq!(last["phase"], "building", "{last}");
        building(&last);
        last["done"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(last["total"], 200, "the total is the log's end: {last}");
    assert!(last["eta_s"].as_f64().is_some_and(|e| e > 0.0), "{last}");

    // A read-your-writes read of the other plugin answers meanwhile, within
    // its wait. (Before live batches went first, a build held the engine
    // for a whole partition's group: 50 events to their deadline and its
    // retries, over 7 s; the wait leaves room for a loaded machine.)
    let event = r#"{"id":"m1","type":"MessageSent","source":"inbox","key":"s1","version":1,"time":1767225600000,"payload":{"site_id":"s1","conversation_id":"c1","sender_id":"u1","participants":["u1","u2"]}}"#;
    let token = s.ingest(&[event.to_string()]);
    let (status, body) = s.get(&format!(
        "/v1/views/inbox-unread/u2:s1?token={token}&wait_ms=5000"
    ));
    assert_eq!(status, 200, "{body}");
    let during = s.get("/v1/admin/plugins/hostile/build").1;
    assert_eq!(
        during["phase"], "building",
        "the read came during the build: {during}"
    );

    eventually("the new plugin live", || {
        last = s.get("/v1/admin/plugins/hostile/build").1;
        if last["phase"] == "building" {
            building(&last);
        }
        last["phase"] == "live"
    });
    assert_eq!(last["done"], last["total"], "{last}");
    assert_eq!(last["percent"], 100.0, "{last}");
    assert!(last["done"].as_u64() >= Some(200), "{last}");
}
