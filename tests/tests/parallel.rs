//! Keys of one batch folded on several worker threads give the same views
//! as an independent fold of the events: order per key holds, and no key
//! is lost or written twice.

use projector_sources::pipeline::replay_file;
use projector_tests::{
    fold_inbox, inbox_events, open_app, rendered, shown, write_ndjson, InboxShape,
};

#[test]
fn four_workers_match_an_independent_fold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = inbox_events(InboxShape {
        sites: 300,
        users: 3000,
        events: 20_000,
        seed: 5,
    });
    let file = dir.path().join("events.ndjson");
    write_ndjson(&file, &events);
    let app = open_app(
        dir.path(),
        &["inbox-unread"],
        "[engine]\nworkers = 4\n[plugins.inbox-unread]\npopulation = \"eager\"\nsettings = { max_unread = 1000000 }\n",
    );
    let totals = replay_file(&app.engine, &file, 2048, |_| {}).expect("replay");
    assert_eq!(totals.records, events.len() as u64);
    assert_eq!(totals.counters.dead_lettered, 0);

    let model = fold_inbox(&events);
    assert_eq!(
        app.engine.store().views("inbox-unread").count(),
        model.len()
    );
    for (key, unread) in &model {
        let v = app
            .engine
            .read("inbox-unread", key, 0)
            .expect("read")
            .expect("view");
        assert_eq!(
            rendered(&v.json().expect("valid")),
            shown(unread),
            "view {key}"
        );
    }
}
