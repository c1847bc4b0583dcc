//! Events posted again to `POST /v1/events` (what a client does when its
//! first POST timed out): the log does not append them again; with the
//! log's dedup off, the engine skips each as a duplicate as long as the
//! view remembers its version (the last `RECENT_PER_SOURCE` per source).
//! Either way every view stays Valid and equal to the fold of the events
//! once.

use projector_tests::{
    assert_inbox_views, fold_inbox, inbox_deliveries, inbox_events, InboxShape, Served,
};
use std::time::{Duration, Instant};

/// Post 400 inbox events, then the last `again` of them once more.
fn post_twice(dedup_window: u64, again: usize) -> (Served, serde_json::Value) {
    let s = Served::start(
        &["inbox-unread"],
        &format!(
            "[log]\ndedup_window = {dedup_window}\n\
             [plugins.inbox-unread]\npopulation = \"eager\"\nsettings = {{ max_unread = 1000000 }}\n"
        ),
    );
    let events = inbox_events(InboxShape {
        sites: 5,
        users: 40,
        events: 400,
        seed: 3,
    });
    let once = inbox_deliveries(&events);
    let body = events.join("\n");
    let (status, first) = s.send(reqwest::Method::POST, "/v1/events", &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicates"], 0);
    wait_received(&s, once);
    let resent = &events[events.len() - again..];
    let (status, second) = s.send(reqwest::Method::POST, "/v1/events", &resent.join("\n"));
    assert_eq!(status, 200, "{second}");
    let expected_received = if dedup_window > 0 {
        once
    } else {
        once + inbox_deliveries(resent)
    };
    wait_received(&s, expected_received);

    let c = counters(&s);
    assert_eq!(c.applied, once, "each delivery applied once: {c:?}");
    assert_eq!(c.invalidated, 0, "no view taken for disorder: {c:?}");
    assert_eq!(c.skipped, expected_received - once, "{c:?}");
    assert_inbox_views(&s.app.engine, &fold_inbox(&events));
    (s, second)
}

fn counters(s: &Served) -> projector_core::store::Counters {
    s.app
        .engine
        .projection("inbox-unread")
        .expect("loaded")
        .counters()
}

/// Wait until the plugin has received `n` deliveries (30 s at most).
fn wait_received(s: &Served, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = counters(s);
        if c.received >= n {
            assert_eq!(c.received, n, "{c:?}");
            return;
        }
        assert!(Instant::now() < deadline, "only {c:?} of {n} deliveries");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_batch_posted_again_is_acknowledged_and_not_appended_twice() {
    let (s, second) = post_twice(65_536, 400);
    assert_eq!(second["count"], 400);
    assert_eq!(second["duplicates"], 400);
    assert_eq!(s.metric("projector_ingest_duplicates_total", ""), 400.0);
    assert_eq!(s.metric("projector_ingested_total", ""), 400.0);
}

#[test]
fn with_the_logs_dedup_off_the_engine_skips_the_redelivered_events() {
    // The last 16 events: none of them has more than 15 newer ones in its
    // views, so every view still remembers it.
    let again = projector_guest::rules::RECENT_PER_SOURCE;
    let (_s, second) = post_twice(0, again);
    assert_eq!(second["duplicates"], 0);
}
