//! What a plugin author runs: `projector test` against golden views, and
//! `projector new`, whose project builds and passes both its tests.

use projector_tests::{inbox_events, projector_bin, stderr, write_ndjson, InboxShape};
use std::process::Command;

/// `projector test`: golden views written with `--update` pass; a changed
/// golden view fails with a diff naming the key and the field.
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
    let test = |extra: &[&str]| {
        Command::new(projector_bin())
            .arg("test")
            .arg(&wasm)
            .arg("--events")
            .arg(&events)
            .arg("--expect")
            .arg(&golden)
            .args(extra)
            .output()
            .expect("projector test")
    };
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
    let err = stderr(&failed);
    assert!(err.contains("u1:s1: /count: expected 9999, got"), "{err}");
    // A view with no golden file is a difference too.
    std::fs::remove_file(golden.join("u2:s1.json")).expect("rm");
    let err = stderr(&test(&[]));
    assert!(err.contains("u2:s1: a view with no golden file"), "{err}");
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
    let built = cargo(&[
        "build",
        "--quiet",
        "--target",
        "wasm32-wasip2",
        "--profile",
        "plugin",
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    passes_its_golden_views(
        &target.join("wasm32-wasip2/plugin/counter_plugin.wasm"),
        &project,
    );
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
    let built = npm(&["run", "--silent", "build"]);
    assert!(built.status.success(), "{}", stderr(&built));
    passes_its_golden_views(&project.join("dist/ts-counter.wasm"), &project);
}
