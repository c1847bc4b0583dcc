//! Hostile guests: each misbehaviour fails its own event, which is
//! dead-lettered with a reason, while the other events keep flowing.

use projector_tests::{dead_letters, envelope, open_app, records};
use serde_json::json;
use std::time::Instant;

fn ev(id: &str, ty: &str, key: &str, version: u64) -> Vec<u8> {
    envelope(id, ty, key, version, 0, json!({}))
}

/// Process `batch` in one go; its counts and how long it took.
fn timed_batch(
    app: &projector::app::App,
    batch: Vec<Vec<u8>>,
) -> (projector_core::store::Counters, std::time::Duration) {
    let started = Instant::now();
    let c = app
        .engine
        .process("test", 0, &records(0, batch))
        .expect("the batch itself succeeds")
        .total();
    (c, started.elapsed())
}

fn count(app: &projector::app::App, key: &str) -> Option<u64> {
    let v = app.engine.read("hostile", key, 0).expect("read")?;
    v.json().and_then(|b| b["count"].as_u64())
}

/// The hostile plugin under tight limits: 50 ms per event, 16 MiB.
fn bounded_hostile(dir: &std::path::Path) -> projector::app::App {
    open_app(
        dir,
        &["hostile"],
        "[plugins.hostile]\nlimits = { epoch_deadline_ms = 50, max_memory_bytes = 16777216 }\n",
    )
}

#[test]
fn each_misbehaviour_fails_only_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = bounded_hostile(dir.path());
    // Good events around each bad one, on the same key and on others.
    let batch = vec![
        ev("1", "ok", "a", 1),
        ev("2", "loop", "a", 2),
        ev("3", "ok", "a", 3),
        ev("4", "grow", "b", 1),
        ev("5", "ok", "b", 2),
        ev("6", "trap", "c", 1),
        ev("7", "ok", "c", 2),
        ev("8", "fail", "d", 1),
        ev("9", "ok", "d", 2),
        ev("10", "bad-key", "e", 1),
        ev("11", "many-keys", "e", 2),
        ev("12", "ok", "e", 3),
    ];
    let (c, elapsed) = timed_batch(&app, batch);
    assert_eq!(c.applied, 6, "every good event is applied");
    assert_eq!(c.dead_lettered, 6);
    for key in ["a", "b", "c", "d", "e"] {
        let expected = if key == "a" { 2 } else { 1 };
        assert_eq!(count(&app, key), Some(expected), "key {key}");
    }

    let letters = dead_letters(&app);
    let by_offset = |o: u64| {
        letters
            .iter()
            .find(|l| l.offset == o)
            .unwrap_or_else(|| panic!("no dead letter at offset {o}"))
    };
    assert_eq!(by_offset(1).reason, "out-of-time");
    assert_eq!(by_offset(3).reason, "memory-limit");
    assert!(
        by_offset(3).error.contains("max 16777216"),
        "{}",
        by_offset(3).error
    );
    assert_eq!(by_offset(5).reason, "trap");
    assert_eq!(by_offset(7).reason, "plugin-error");
    assert!(by_offset(7).error.contains("asked to fail"));
    assert_eq!(
        (by_offset(9).reason.as_str(), by_offset(9).stage.as_str()),
        ("bad-output", "keys")
    );
    assert_eq!(
        (by_offset(10).reason.as_str(), by_offset(10).stage.as_str()),
        ("bad-output", "keys")
    );
    for l in &letters {
        assert_eq!(l.plugin.as_deref(), Some("hostile"));
        assert!(l.event.is_some(), "the event is kept for a replay");
    }
    // The loop was stopped by its deadline, not left running.
    assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
}

#[test]
fn guest_output_reaches_the_plugin_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["hostile"], "");
    app.engine
        .process("test", 0, &records(0, vec![ev("1", "print", "a", 1)]))
        .expect("batch");
    let p = app.engine.projection("hostile").expect("loaded");
    let logs = p.code().logs().recent();
    assert!(
        logs.iter().any(|l| l.contains("hello from the log import")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("stdout: hello from stdout")),
        "{logs:?}"
    );
}

#[test]
fn modules_that_are_not_plugins_are_rejected_with_a_reason() {
    let host = projector_host::wasm::WasmHost::new().expect("host");
    let limits = projector_host::Limits::default();
    let settings = json!({});
    let reject = |bytes: &[u8]| match host.load("bad", bytes, limits.clone(), &settings) {
        Ok(_) => panic!("loaded a module that is not a plugin"),
        Err(e) => e.to_string(),
    };
    let garbage = reject(b"not wasm at all");
    assert!(
        garbage.contains("plugin bad: cannot load: compile"),
        "{garbage}"
    );
    // A core module, not a component.
    let core = wat_module("(module (func (export \"apply\")))");
    let e = reject(&core);
    assert!(e.contains("cannot load"), "{e}");
    // A component that implements nothing of the world.
    let empty = wat_module("(component)");
    let e = reject(&empty);
    assert!(e.contains("exports"), "{e}");
    assert!(e.contains("rebuild it"), "{e}");
}

fn wat_module(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

#[test]
fn a_render_that_reads_the_time_is_rendered_at_each_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["hostile"], "");
    app.engine
        .process("t", 0, &records(0, vec![ev("1", "ok", "a", 1)]))
        .expect("batch");
    let at = |now: i64| {
        app.engine
            .read("hostile", "a", now)
            .expect("read")
            .and_then(|v| v.json())
            .map(|b| b["read_at"].clone())
    };
    assert_eq!(at(1), Some(json!(1)));
    assert_eq!(at(2), Some(json!(2)));
}

/// A batch's events live in the plugin between its calls: once the batch
/// is done they must be freed, or every batch would add to the guest's
/// heap until the store is retired and a new instance started.
#[test]
fn batches_leave_nothing_behind_in_the_plugin() {
    use projector_core::engine::Engine;
    use projector_core::envelope::Format;
    use projector_host::wasm::WasmHost;
    use projector_host::{Limits, SharedCode};
    use projector_tests::{inbox_events, plugin_wasm, InboxShape};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = projector_core::store::Store::open(dir.path()).expect("store");
    let host = WasmHost::new().expect("host");
    let bytes = std::fs::read(plugin_wasm("inbox-unread")).expect("plugin");
    // Retired at half of 16 MiB: a batch of 2000 events left behind is
    // about 0.5 MiB, so 50 batches would start several instances.
    let limits = Limits {
        max_memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let plugin = Arc::new(
        host.load("inbox-unread", &bytes, limits, &json!({}))
            .expect("loads"),
    );
    let engine = Engine::new(store, Format::Auto, 1, std::time::Duration::from_secs(3600));
    engine
        .add(
            plugin.clone() as SharedCode,
            Some(projector_guest::Population::Eager),
        )
        .expect("add");
    let lines = inbox_events(InboxShape {
        events: 100_000,
        ..InboxShape::default()
    });
    let values: Vec<Vec<u8>> = lines.into_iter().map(String::into_bytes).collect();
    let all = records(0, values);
    let mut applied = 0;
    for batch in all.chunks(2000) {
        applied += engine
            .process("test", 0, batch)
            .expect("batch")
            .total()
            .applied;
    }
    assert!(applied > 100_000, "the events were applied: {applied}");
    assert_eq!(
        plugin.instances_started(),
        1,
        "one instance served every batch"
    );
}

/// What a guest gets when it reaches out of its sandbox: no file, no
/// environment or arguments, no socket, no name lookup, and clocks frozen
/// at zero (the read time comes as an argument). Each probe's event fails
/// alone with the host's refusal, and the plugin goes on counting.
#[test]
fn a_guest_reaching_out_of_the_sandbox_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = open_app(dir.path(), &["hostile"], "");
    let probes = [
        "read-file",
        "write-file",
        "read-env",
        "open-socket",
        "resolve-name",
        "read-clock",
    ];
    let mut batch: Vec<Vec<u8>> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| ev(&format!("p{i}"), p, "a", i as u64 + 1))
        .collect();
    batch.push(ev("ok", "ok", "a", 100));
    let c = app
        .engine
        .process("test", 0, &records(0, batch))
        .expect("batch")
        .total();
    assert_eq!(
        (c.applied, c.dead_lettered),
        (1, probes.len() as u64),
        "{c:?}"
    );
    assert_eq!(count(&app, "a"), Some(1));
    let letters = dead_letters(&app);
    for (i, probe) in probes.iter().enumerate() {
        let l = letters
            .iter()
            .find(|l| l.offset == i as u64)
            .unwrap_or_else(|| panic!("no dead letter for {probe}"));
        assert_eq!(l.reason, "plugin-error", "{probe}: {}", l.error);
        assert!(
            l.error.contains(&format!("probe {probe}: refused")),
            "{probe}: {}",
            l.error
        );
        eprintln!("{probe}: {}", l.error);
    }
    assert!(!std::path::Path::new("/tmp/projector-escape").exists());
}

/// Limits on what a guest may take: unbounded recursion and a 4 GiB grow
/// fail their own events with a typed reason, a loop in `keys` is cut at
/// its deadline, and a render answering 32 MiB is refused at the read;
/// the plugin keeps serving the other keys.
#[test]
fn recursion_a_4_gib_grow_a_loop_in_keys_and_a_huge_render_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = bounded_hostile(dir.path());
    let batch = vec![
        ev("1", "recurse", "a", 1),
        ev("2", "grow-4g", "b", 1),
        ev("3", "loop-keys", "c", 1),
        ev("4", "huge-render", "d", 1),
        ev("5", "ok", "e", 1),
    ];
    let (c, elapsed) = timed_batch(&app, batch);
    assert_eq!((c.applied, c.dead_lettered), (2, 3), "{c:?}");
    let letters = dead_letters(&app);
    let reason = |o: u64| {
        let l = letters
            .iter()
            .find(|l| l.offset == o)
            .unwrap_or_else(|| panic!("no dead letter at {o}"));
        eprintln!("offset {o}: {} ({}): {}", l.reason, l.stage, l.error);
        (l.reason.clone(), l.stage.clone(), l.error.clone())
    };
    let (r, _, e) = reason(0);
    assert_eq!(r, "trap", "{e}");
    let (r, _, e) = reason(1);
    assert!(
        r == "memory-limit" || e.contains("probe grow-4g: refused"),
        "{r}: {e}"
    );
    let (r, stage, e) = reason(2);
    assert_eq!((r.as_str(), stage.as_str()), ("out-of-time", "keys"), "{e}");
    assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
    // The huge render is refused at the read, typed; other keys still read.
    let err = app
        .engine
        .read("hostile", "d", 0)
        .err()
        .map(|e| e.to_string());
    let rendered = app
        .engine
        .read("hostile", "d", 0)
        .ok()
        .flatten()
        .and_then(|v| v.json());
    assert!(rendered.is_none(), "a 32 MiB render was served: {err:?}");
    eprintln!("huge render: {err:?}");
    assert_eq!(count(&app, "e"), Some(1));
}
