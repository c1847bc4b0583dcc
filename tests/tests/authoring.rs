//! What a plugin author runs: `projector test` against golden views, and
//! `projector new`, whose project builds and passes both its tests.

use projector_tests::{inbox_events, projector_bin, stderr, write_ndjson, InboxShape};
use std::process::Command;

/// `projector test`: golden views written with `--update` pass; a changed
/// golden view fails with a diff naming the key and the field.
/// `projector test WASM --events EVENTS --expect GOLDEN EXTRA…`.
fn projector_test(
    wasm: &std::path::Path,
    events: &std::path::Path,
    golden: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(projector_bin())
        .arg("test")
        .arg(wasm)
        .arg("--events")
        .arg(events)
        .arg("--expect")
        .arg(golden)
        .args(extra)
        .output()
        .expect("projector test")
}

#[test]
fn projector_test_compares_every_view_with_its_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    write_ndjson(
        &events,
        &inbox_events(InboxShape {
            sites: 2,
            users: 8,
            events: 300,
            seed: 11,
        }),
    );
    let golden = dir.path().join("golden");
    let wasm = projector_tests::plugin_wasm("inbox-unread");
    let test = |extra: &[&str]| projector_test(&wasm, &events, &golden, extra);
    let wrote = test(&["--update"]);
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    let files: Vec<_> = std::fs::read_dir(&golden).expect("golden").collect();
    assert!(files.len() >= 8, "{} golden files", files.len());
    let passed = test(&[]);
    assert!(passed.status.success(), "{}", stderr(&passed));
    assert!(String::from_utf8_lossy(&passed.stdout).contains(" 0 differ"));

    // One field changed in one golden view: named, exit 1.
    let file = golden.join("u1:s1.json");
    let mut view: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("golden")).expect("json");
    view["count"] = serde_json::json!(9999);
    std::fs::write(&file, view.to_string()).expect("write");
    let failed = test(&[]);
    assert_eq!(failed.status.code(), Some(1));
    // The differences on stdout, apart from the log on stderr.
    let out = String::from_utf8_lossy(&failed.stdout);
    assert!(out.contains("u1:s1: /count: expected 9999, got"), "{out}");
    assert!(!stderr(&failed).contains("expected 9999"));
    // A view with no golden file is a difference too.
    std::fs::remove_file(golden.join("u2:s1.json")).expect("rm");
    let again = test(&[]);
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.contains("u2:s1: a view with no golden file"), "{out}");
}

/// `projector test`: a dead letter the golden set does not expect fails
/// it; `--update` writes the dead letters it saw; a guest panic is told
/// once, by its message and location; a line that does not decode fails
/// it by its line number.
#[test]
fn projector_test_fails_on_dead_letters_the_golden_set_does_not_expect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = |id: u64, kind: &str, key: &str| {
        serde_json::json!({"id": format!("e{id}"), "type": kind, "source": "t", "key": key,
                           "version": 1, "time": 5, "payload": {}})
        .to_string()
    };
    let events = dir.path().join("events.ndjson");
    let lines = [
        event(1, "count", "a"),
        event(2, "trap", "b"),
        event(3, "fail", "c"),
    ];
    std::fs::write(&events, lines.join("\n") + "\n").expect("events");
    let golden = dir.path().join("golden");
    let wasm = projector_tests::plugin_wasm("hostile");
    let test = |extra: &[&str]| projector_test(&wasm, &events, &golden, extra);
    let wrote = test(&["--update"]);
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    assert!(
        stderr(&wrote).contains("wrote 2 files") && stderr(&wrote).contains("2 dead letters"),
        "{}",
        stderr(&wrote)
    );
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden.join("dead-letters.json")).expect("dead letters"),
    )
    .expect("json");
    assert_eq!(
        expected,
        serde_json::json!([
            {"line": 2, "key": "b", "stage": "apply", "reason": "trap"},
            {"line": 3, "key": "c", "stage": "apply", "reason": "plugin-error"},
        ])
    );
    let passed = test(&[]);
    assert!(passed.status.success(), "{}", stderr(&passed));

    // Not expected: exit 1, the panic told once by its message and location.
    std::fs::remove_file(golden.join("dead-letters.json")).expect("rm");
    let failed = test(&[]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let err = stderr(&failed);
    assert!(
        err.contains("line 2: b: apply: trap: an unexpected dead letter"),
        "{err}"
    );
    let panic = "panicked at tests/fixtures/hostile/src/lib.rs:";
    let logged = err
        .lines()
        .filter(|l| l.contains(panic) && l.contains("WARN"))
        .count();
    assert_eq!(logged, 1, "{err}");
    assert!(
        err.contains(panic) && err.contains(": asked to trap"),
        "{err}"
    );
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");

    // A line that does not decode fails, by its line number.
    std::fs::write(&events, lines.join("\n") + "\n{not json\n").expect("events");
    assert!(test(&["--update"]).status.success().then_some(()).is_none());
    let failed = test(&[]);
    assert_eq!(failed.status.code(), Some(1));
    let err = stderr(&failed);
    assert!(err.contains("line 4: the event does not decode: "), "{err}");
}

/// `projector test` of a made project's component against its sample
/// events and golden views passes.
fn passes_its_golden_views(wasm: &std::path::Path, project: &std::path::Path) {
    let tested = Command::new(projector_bin())
        .arg("test")
        .arg(wasm)
        .arg("--events")
        .arg(project.join("events.ndjson"))
        .arg("--expect")
        .arg(project.join("golden"))
        .output()
        .expect("projector test");
    assert!(tested.status.success(), "{}", stderr(&tested));
    assert!(String::from_utf8_lossy(&tested.stdout).contains("3 views, 3 golden, 0 differ"));
}

/// `projector new`: the project it makes builds, passes `projector test`
/// against its own golden views, and passes its native test.
#[test]
fn projector_new_makes_a_plugin_that_builds_and_passes_projector_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("counter-plugin");
    let made = Command::new(projector_bin())
        .args(["new", "counter-plugin", "--dir"])
        .arg(&project)
        .output()
        .expect("projector new");
    assert!(made.status.success(), "{}", stderr(&made));
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/harness.rs",
        "README.md",
        "events.ndjson",
        "golden/a.json",
    ] {
        assert!(project.join(file).exists(), "{file}");
    }
    // Its own build directory, under the repository's target/ (a cargo
    // running these tests holds the main one).
    let target = projector_tests::root().join("target/scaffold");
    let cargo = |args: &[&str]| {
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo")
    };
    // `projector build` knows the target and profile, and says where the component is.
    let built = Command::new(projector_bin())
        .args(["build", "--dir"])
        .arg(&project)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("projector build");
    assert!(built.status.success(), "{}", stderr(&built));
    let wasm = target.join("wasm32-wasip2/plugin/counter_plugin.wasm");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).trim(),
        wasm.display().to_string()
    );
    passes_its_golden_views(&wasm, &project);
    let native = cargo(&["test", "--quiet"]);
    assert!(native.status.success(), "{}", stderr(&native));

    // Not twice into the same place, and not in a language it does not know.
    let again = Command::new(projector_bin())
        .args(["new", "counter-plugin", "--dir"])
        .arg(&project)
        .output()
        .expect("projector new");
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
    let go = Command::new(projector_bin())
        .args(["new", "x", "--lang", "go", "--dir"])
        .arg(dir.path().join("x"))
        .output()
        .expect("projector new");
    assert!(
        stderr(&go).contains("invalid value 'go'"),
        "{}",
        stderr(&go)
    );
}

/// `projector new --lang ts`: the npm package it makes type-checks,
/// builds into a component, and passes `projector test` against its own
/// golden views. Its packages come from the repository's node_modules
/// (`npm ci` of the lock file, which `./scripts/build-plugins.sh` ran),
/// where a user runs `npm install`.
#[test]
fn projector_new_ts_makes_a_typescript_plugin_that_builds_and_passes_projector_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("ts-counter");
    let made = Command::new(projector_bin())
        .args(["new", "ts-counter", "--lang", "ts", "--dir"])
        .arg(&project)
        .output()
        .expect("projector new");
    assert!(made.status.success(), "{}", stderr(&made));
    for file in [
        "package.json",
        "tsconfig.json",
        "src/index.ts",
        "README.md",
        "events.ndjson",
        "golden/c.json",
    ] {
        assert!(project.join(file).exists(), "{file}");
    }
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.join("package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    let sdk = package["dependencies"]["@projector/guest"]
        .as_str()
        .expect("the SDK");
    assert!(
        sdk.starts_with("file:") && sdk.ends_with("guest-sdk/js"),
        "{sdk}"
    );
    std::os::unix::fs::symlink(
        projector_tests::root().join("node_modules"),
        project.join("node_modules"),
    )
    .expect("node_modules");
    let npm = |args: &[&str]| {
        Command::new("npm")
            .args(args)
            .current_dir(&project)
            .output()
            .expect("npm")
    };
    let checked = npm(&["run", "--silent", "check"]);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        stderr(&checked)
    );
    // `projector build` runs `npm run build` in a package.json's directory.
    let built = Command::new(projector_bin())
        .arg("build")
        .current_dir(&project)
        .output()
        .expect("projector build");
    assert!(built.status.success(), "{}", stderr(&built));
    let wasm = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert_eq!(wasm, "dist/ts-counter.wasm");
    passes_its_golden_views(&project.join(wasm), &project);
}

/// A TypeScript plugin whose `apply` answers a misspelled change does not
/// build: `npm run build` type-checks first and fails with tsc's message.
/// The project pins the TypeScript it checks with (package.json and its
/// lock file), so `npm run check` has a `tsc` after `npm install`.
#[test]
fn a_typescript_plugin_with_a_type_error_fails_its_build_with_tscs_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("misspelled");
    let made = Command::new(projector_bin())
        .args(["new", "misspelled", "--lang", "ts", "--dir"])
        .arg(&project)
        .output()
        .expect("projector new");
    assert!(made.status.success(), "{}", stderr(&made));
    let json = |file: std::path::PathBuf| -> serde_json::Value {
        let text = std::fs::read_to_string(&file).expect("read");
        serde_json::from_str(&text).expect("JSON")
    };
    let root = projector_tests::root();
    let sdk = json(root.join("guest-sdk/js/package.json"));
    let pinned = sdk["dependencies"]["typescript"]
        .as_str()
        .expect("the SDK's typescript");
    let package = json(project.join("package.json"));
    assert_eq!(package["devDependencies"]["typescript"], pinned);
    let lock = json(project.join("package-lock.json"));
    let locked = &lock["packages"]["node_modules/typescript"];
    assert_eq!(locked["version"], pinned);
    assert!(
        locked["integrity"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha512-")),
        "{locked}"
    );

    std::os::unix::fs::symlink(root.join("node_modules"), project.join("node_modules"))
        .expect("node_modules");
    let index = project.join("src/index.ts");
    let source = std::fs::read_to_string(&index).expect("index.ts");
    assert!(source.contains("return 'updated';"));
    std::fs::write(
        &index,
        source.replace("return 'updated';", "return 'updatd';"),
    )
    .expect("write");
    let built = Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&project)
        .output()
        .expect("npm");
    assert!(!built.status.success(), "built with a type error");
    let err = stderr(&built);
    assert!(
        err.contains("src/index.ts(") && err.contains("error TS2322"),
        "{err}"
    );
    assert!(
        err.contains(r#"Type '"updatd"' is not assignable to type 'Change'"#),
        "{err}"
    );
    assert!(!project.join("dist/misspelled.wasm").exists());
}
