//! A memory budget (`[engine] memory_mb`): a `projector replay` whose
//! views do not fit in the budget keeps its resident memory within the
//! budget above what the process takes at all (measured on a tiny
//! stream: its code, the compiled plugin, the runtime's threads), plus an
//! allowance of [`SLACK_MB`] for the allocator and the machine's noise,
//! and every view is still the independent fold's.

use projector_tests::InboxShape;
use projector_tests::{assert_inbox_store, fold_inbox, inbox_file, open_app, projector_bin};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BUDGET_MB: u64 = 128;

/// What the peak may pass the budget by, above the process's own size.
const SLACK_MB: u64 = 32;

/// `projector replay` of `file` with `config`: its peak resident bytes,
/// read from `/proc` until it exits.
fn replay_peak(config: &Path, file: &Path) -> u64 {
    let mut child = Command::new(projector_bin())
        .arg("--config")
        .arg(config)
        .arg("replay")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn projector");
    let mut peak = 0;
    loop {
        if let Some(p) = projector_common::resident::peak_resident_bytes(child.id()) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "replay failed: {status}");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_replay_whose_views_outgrow_the_budget_stays_within_it_and_gets_every_view_right() {
    let config = |dir: &Path| {
        projector_tests::write_config(
            dir,
            &["inbox-unread"],
            &format!(
                "[engine]\nmemory_mb = {BUDGET_MB}\ncompile_cache_dir = {:?}\n\
                 [plugins.inbox-unread]\npopulation = \"eager\"\nsettings = {{ max_unread = 1000000 }}\n",
                projector_tests::root().join("target/test-compile-cache")
            ),
        )
    };
    // What the process takes at all: the same run on a tiny stream.
    let tiny = tempfile::tempdir().expect("tempdir");
    let (_, tiny_file) = inbox_file(
        tiny.path(),
        InboxShape {
            sites: 2,
            users: 2,
            events: 100,
            seed: 5,
        },
    );
    let fixed = replay_peak(&config(tiny.path()), &tiny_file);

    let dir = tempfile::tempdir().expect("tempdir");
    let (events, file) = inbox_file(
        dir.path(),
        InboxShape {
            sites: 9_000,
            users: 90_000,
            events: 600_000,
            seed: 12,
        },
    );
    let peak = replay_peak(&config(dir.path()), &file);
    let model = fold_inbox(&events);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "{} views; peak resident {:.0} MiB, the process on a tiny stream {:.0} MiB, budget {BUDGET_MB} MiB",
        model.len(),
        mib(peak),
        mib(fixed)
    );
    assert!(
        peak <= fixed + ((BUDGET_MB + SLACK_MB) << 20),
        "peak resident {:.0} MiB past the budget: {:.0} MiB on a tiny stream + {BUDGET_MB} MiB + {SLACK_MB} MiB",
        mib(peak),
        mib(fixed)
    );
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[plugins.inbox-unread]\nsettings = { max_unread = 1000000 }\n",
    );
    assert_inbox_store(&app.engine, &model);
}
