//! Keys of one batch folded on several worker threads give the same views
//! as an independent fold of the events: order per key holds, and no key
//! is lost or written twice.

use projector_sources::run::replay_file;
use projector_tests::{assert_inbox_store, fold_inbox, inbox_file, open_app, InboxShape};

#[test]
fn four_workers_match_an_independent_fold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, file) = inbox_file(
        dir.path(),
        InboxShape {
            sites: 300,
            users: 3000,
            events: 20_000,
            seed: 5,
        },
    );
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[engine]\nworkers = 4\n[plugins.inbox-unread]\npopulation = \"eager\"\nsettings = { max_unread = 1000000 }\n",
    );
    let totals = replay_file(&app.engine, &file, 2048, |_| {}).expect("replay");
    assert_eq!(totals.records, events.len() as u64);
    assert_eq!(totals.counters.dead_lettered, 0);

    assert_inbox_store(&app.engine, &fold_inbox(&events));
}
