//! The `projector` binary killed (SIGKILL) mid-replay and restarted: the
//! final views equal an independent fold of the events, and the persisted
//! counters show every delivery applied exactly once.

use projector_tests::{
    assert_inbox_store, fold_inbox, inbox_deliveries, inbox_file, open_app, projector_bin,
    InboxShape,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn sigkill_mid_replay_then_restart_loses_nothing_and_applies_nothing_twice() {
    crash_and_restart("", &[], |_| {});
}

/// The store's materializer held back, so the kills land while committed
/// views wait as records: after the restart every view is the fold's.
#[test]
fn sigkill_while_the_materializer_is_behind_loses_no_committed_view() {
    let mut behind_at_kill = Vec::new();
    crash_and_restart(
        "commit_interval_ms = 100\n",
        &[("PROJECTOR_MATERIALIZER_DELAY_MS", "60000")],
        |data| behind_at_kill.push(records_waiting(data)),
    );
    eprintln!("commit records waiting at the kills: {behind_at_kill:?}");
    assert!(
        behind_at_kill.iter().any(|n| *n > 0),
        "no kill landed while commits waited as records: {behind_at_kill:?}"
    );
}

/// Records of commits whose views are not yet applied, read from sled
/// itself (opening the store would apply them).
fn records_waiting(data: &Path) -> usize {
    let db = sled::Config::new()
        .path(data)
        .segment_size(projector_core::store::SEGMENT_BYTES)
        .open()
        .expect("open the killed store");
    let state = db.open_tree("state").expect("state");
    state.scan_prefix([b'w', 0]).count()
}

/// Replay 120k inbox events with `projector replay`, SIGKILL it twice,
/// let a third run finish, then check views and counters against an
/// independent fold. `engine` is more of the config's `[engine]` table,
/// `env` is set for the killed runs, and `after_kill` sees the data
/// directory after each kill.
fn crash_and_restart(engine: &str, env: &[(&str, &str)], mut after_kill: impl FnMut(&Path)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, file) = inbox_file(
        dir.path(),
        InboxShape {
            sites: 200,
            users: 2000,
            events: 120_000,
            seed: 11,
        },
    );
    let config = projector_tests::write_config(
        dir.path(),
        &["inbox-unread"],
        &format!(
            "[engine]\nbatch_size = 256\n{engine}\
             [plugins.inbox-unread]\npopulation = \"eager\"\nsettings = {{ max_unread = 1000000 }}\n"
        ),
    );
    let replay = || {
        let mut cmd = Command::new(projector_bin());
        cmd.arg("--config").arg(&config).arg("replay").arg(&file);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        cmd
    };

    // Compile the plugin into the cache first, so that the kills land in
    // the replay itself and not in a cold compile (seconds on a busy CI).
    let status = Command::new(projector_bin())
        .arg("--config")
        .arg(&config)
        .arg("status")
        .stdout(Stdio::null())
        .status()
        .expect("projector status");
    assert!(status.success(), "projector status failed: {status}");

    // Kill it twice at different points, then let it finish.
    for wait_ms in [1500, 900] {
        let mut child = replay()
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn projector");
        std::thread::sleep(Duration::from_millis(wait_ms));
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "replay finished before it could be killed"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        after_kill(&dir.path().join("data"));
    }
    let out = replay().output().expect("final replay");
    assert!(out.status.success(), "final replay failed: {out:?}");

    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\nsettings = { max_unread = 1000000 }\n",
    );
    let p = app.engine.projection("inbox-unread").expect("loaded");
    let c = p.counters();
    let expected = inbox_deliveries(&events);
    let letters: Vec<_> = app.engine.store().dead_letters().collect();
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    assert_eq!(
        c.received, expected,
        "each delivery counted once across the crashes"
    );
    assert_eq!(c.applied, expected, "each delivery applied exactly once");
    assert_eq!((c.skipped, c.invalidated, c.dead_lettered), (0, 0, 0));

    assert_inbox_store(&app.engine, &fold_inbox(&events));
}

#[test]
fn a_restart_loads_compiled_plugins_without_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[engine]\ncompile_cache_dir = \"compiled\"\n";
    let first = open_app(dir.path(), &["inbox-unread"], extra);
    assert_eq!(
        first.deployer.host().compile_cache_hits(),
        0,
        "a fresh cache compiles"
    );
    drop(first);
    let again = open_app(dir.path(), &["inbox-unread"], extra);
    assert_eq!(
        again.deployer.host().compile_cache_hits(),
        1,
        "the restart loads the compiled code"
    );
    assert!(again.engine.projection("inbox-unread").is_ok());
}
