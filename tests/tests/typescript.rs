//! The TypeScript port of inbox-unread (`plugins/inbox-unread-ts`, built
//! with the JavaScript SDK) against the Rust plugin: the same stream, with
//! events out of order, duplicates and malformed payloads, gives the same
//! views, statuses and dead letters under the same host and limits, and
//! so does the same plugin compiled ahead of time (`--aot`, weval).

use projector_tests::{inbox_events, open_app, projector_bin, records, stderr, InboxShape};
use std::collections::BTreeMap;
use std::process::Command;

const RUST: &str = "inbox-unread";
const TS: &str = "inbox-unread-ts";
const TS_AOT: &str = "inbox-unread-ts-aot";

/// The inbox stream, disturbed: some neighbours swapped (a newer event
/// first: the older one then invalidates its views), some events sent
/// twice (dismissed by version), and some payloads broken (dead letters).
fn disturbed(events: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(events.len() + events.len() / 20);
    let mut i = 0;
    while i < events.len() {
        if i % 97 == 13 && i + 1 < events.len() {
            out.push(events[i + 1].clone());
            out.push(events[i].clone());
            i += 2;
            continue;
        }
        out.push(events[i].clone());
        if i % 31 == 7 {
            out.push(events[i].clone());
        }
        if i % 211 == 5 {
            let mut bad: serde_json::Value = serde_json::from_str(&events[i]).expect("event");
            bad["id"] = format!("bad-{i}").into();
            bad["payload"]["participants"] = "not a list".into();
            bad["payload"]["user_id"] = 7.into();
            out.push(bad.to_string());
        }
        i += 1;
    }
    out
}

#[test]
fn the_typescript_inbox_plugin_gives_the_rust_plugins_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = "population = \"eager\"\nsettings = { max_unread = 25 }\n";
    let limits = "limits = { max_memory_bytes = 134217728 }\n";
    let app = open_app(
        dir.path(),
        &[RUST, TS, TS_AOT],
        &format!(
            "[plugins.{RUST}]\n{settings}[plugins.{TS}]\n{settings}{limits}\
             [plugins.{TS_AOT}]\n{settings}{limits}"
        ),
    );
    let events = disturbed(inbox_events(InboxShape {
        sites: 30,
        users: 300,
        events: 4_000,
        seed: 11,
    }));
    let mut offset = 0u64;
    for chunk in events.chunks(256) {
        let values = chunk.iter().map(|e| e.as_bytes().to_vec()).collect();
        app.engine
            .process("log", 0, &records(offset, values))
            .expect("batch");
        offset += chunk.len() as u64;
    }
    app.engine.commit().expect("commit");

    let views = |plugin: &str| -> BTreeMap<String, (String, Option<serde_json::Value>)> {
        let p = app.engine.projection(plugin).expect("plugin");
        let keys: Vec<String> = app
            .engine
            .store()
            .views(p.ns())
            .map(|v| v.expect("view").0)
            .collect();
        keys.into_iter()
            .map(|k| {
                let v = app.engine.read(plugin, &k, 0).expect("read").expect("view");
                (k, (format!("{:?}", v.status), v.json()))
            })
            .collect()
    };
    let rust = views(RUST);
    assert!(rust.len() > 300, "a real stream: {} views", rust.len());
    let invalid = rust.values().filter(|(s, _)| s == "Invalid").count();
    assert!(invalid > 0, "the swaps invalidate some views");
    for plugin in [TS, TS_AOT] {
        let ts = views(plugin);
        for (key, want) in &rust {
            assert_eq!(ts.get(key), Some(want), "{plugin}: view {key}");
        }
        assert_eq!(rust.len(), ts.len(), "{plugin}: the same keys");
    }

    let counters = |plugin: &str| {
        let c = app.engine.projection(plugin).expect("plugin").counters();
        (
            c.received,
            c.applied,
            c.skipped,
            c.invalidated,
            c.dead_lettered,
        )
    };
    let r = counters(RUST);
    assert!(r.4 > 0, "the broken payloads are dead letters: {r:?}");
    for plugin in [TS, TS_AOT] {
        assert_eq!(
            r,
            counters(plugin),
            "{plugin}: received, applied, skipped, invalidated, dead-lettered"
        );
    }
}

/// A plugin in plain JavaScript (no type-check) whose `apply` answers a
/// misspelled change: each of its events is a dead letter that names the
/// value, rather than a change the SDK takes as "unchanged".
#[test]
fn an_unknown_answer_from_apply_is_a_dead_letter_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = projector_tests::root();
    std::os::unix::fs::symlink(root.join("node_modules"), dir.path().join("node_modules"))
        .expect("node_modules");
    let entry = dir.path().join("plugin.js");
    std::fs::write(
        &entry,
        "import { definePlugin } from '@projector/guest';\n\
         export const { projection, comparison } = definePlugin(() => ({\n\
           info: () => ({ name: 'misspelled', version: '1', population: 'eager',\n\
                          stalePolicy: 'ignore', renderUsesTime: false }),\n\
           empty: () => ({ count: 0 }),\n\
           keys: (event) => [event.key],\n\
           apply(_key, state) { state.count += 1; return 'updatd'; },\n\
           render: (_key, state) => state,\n\
         }));\n",
    )
    .expect("plugin.js");
    let wasm = dir.path().join("misspelled.wasm");
    let built = Command::new("node")
        .arg(root.join("guest-sdk/js/build.mjs"))
        .arg(&entry)
        .arg(&wasm)
        .output()
        .expect("node");
    assert!(built.status.success(), "{}", stderr(&built));
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        r#"{"id":"e1","type":"Counted","source":"example","key":"a","version":1,"time":1767225601000,"payload":{}}
"#,
    )
    .expect("events");
    let tested = Command::new(projector_bin())
        .arg("test")
        .arg(&wasm)
        .arg("--events")
        .arg(&events)
        .arg("--expect")
        .arg(dir.path().join("golden"))
        .arg("--update")
        .output()
        .expect("projector test");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        stderr(&tested)
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("dead letter:") && l.contains("apply of a returned 'updatd'")),
        "{out}"
    );
    assert!(!dir.path().join("golden/a.json").exists(), "{out}");
}

/// A setting the plugin does not declare stops the runtime at start, in
/// the same words from either SDK: the plugin, the setting, the one meant
/// and what it accepts.
#[test]
fn a_misspelled_setting_is_refused_by_both_sdks_in_the_same_words() {
    let refusal = |plugin: &str| -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        projector_tests::plugins_dir(dir.path(), &[plugin]);
        let text = format!(
            "data_dir = \"data\"\nplugins_dir = \"plugins\"\n[plugins.{plugin}]\n\
             settings = {{ max_unreed = 5 }}\nlimits = {{ max_memory_bytes = 134217728 }}\n"
        );
        let mut config =
            projector::config::Config::parse(&text, "test.toml", dir.path()).expect("parses");
        config.engine.compile_cache_dir =
            Some(projector_tests::root().join("target/test-compile-cache"));
        match projector::app::App::open(config) {
            Ok(_) => panic!("{plugin} started with a misspelled setting"),
            Err(e) => format!("{e:#}"),
        }
    };
    let (rust, ts) = (refusal(RUST), refusal(TS));
    let words = r#"configure: unknown setting "max_unreed" (did you mean "max_unread"?); the plugin accepts max_unread, source"#;
    assert!(rust.contains(&format!("plugin {RUST}: {words}")), "{rust}");
    assert!(ts.contains(&format!("plugin {TS}: {words}")), "{ts}");
}
