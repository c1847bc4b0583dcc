//! inbox-unread through the SDK's native harness: every event type, the
//! bound, rendering, snapshots, comparison, and the out-of-order cases of
//! seed 000 challenge 4.

use inbox_unread::{InboxUnread, Unread};
use projector_guest::harness::Harness;
use projector_guest::rules::{Decision, Status, Verdict};
use projector_guest::{Event, Population, Projection};
use serde_json::{json, Value};

fn event(version: u64, ty: &str, payload: Value) -> Event {
    Event {
        id: format!("e{version}"),
        event_type: ty.into(),
        source: "inbox".into(),
        key: "s1".into(),
        version,
        time_ms: 1000 + version as i64,
        payload: payload.to_string(),
        ..Default::default()
    }
}

fn sent(v: u64, conv: &str, sender: &str, participants: &[&str]) -> Event {
    event(
        v,
        "MessageSent",
        json!({"site_id": "s1", "conversation_id": conv, "sender_id": sender, "participants": participants}),
    )
}

fn for_user(v: u64, ty: &str, conv: &str, user: &str) -> Event {
    event(
        v,
        ty,
        json!({"site_id": "s1", "conversation_id": conv, "user_id": user}),
    )
}

fn for_conv(v: u64, ty: &str, conv: &str, participants: &[&str]) -> Event {
    event(
        v,
        ty,
        json!({"site_id": "s1", "conversation_id": conv, "participants": participants}),
    )
}

fn eager() -> Harness<InboxUnread> {
    Harness::<InboxUnread>::new(json!({}))
        .expect("configure")
        .with_population(Population::Eager)
}

fn unread(h: &Harness<InboxUnread>, key: &str) -> Vec<String> {
    let body = h.render(key, 0).expect("render").expect("valid view");
    body["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn message_sent_is_unread_for_the_others_and_read_for_the_sender() {
    let mut h = eager();
    h.feed(&sent(1, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    assert_eq!(unread(&h, "owner:s1"), ["c1"]);
    assert!(unread(&h, "visitor:s1").is_empty());
    // The owner answers: read for the owner, unread for the visitor.
    h.feed(&sent(2, "c1", "owner", &["owner", "visitor"]))
        .expect("feed");
    assert!(unread(&h, "owner:s1").is_empty());
    assert_eq!(unread(&h, "visitor:s1"), ["c1"]);
}

#[test]
fn newest_first_and_counted() {
    let mut h = eager();
    for (v, c) in [(1, "c1"), (2, "c2"), (3, "c3"), (4, "c1")] {
        h.feed(&sent(v, c, "visitor", &["owner", "visitor"]))
            .expect("feed");
    }
    let body = h.render("owner:s1", 0).expect("render").expect("view");
    assert_eq!(body["count"], 3);
    assert_eq!(unread(&h, "owner:s1"), ["c1", "c3", "c2"]);
}

#[test]
fn conversation_read_removes_it() {
    let mut h = eager();
    h.feed(&sent(1, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    h.feed(&for_user(2, "ConversationRead", "c1", "owner"))
        .expect("feed");
    assert!(unread(&h, "owner:s1").is_empty());
}

#[test]
fn archive_hides_unarchive_shows_and_a_message_unarchives() {
    let mut h = eager();
    h.feed(&sent(1, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    h.feed(&for_conv(
        2,
        "ConversationArchived",
        "c1",
        &["owner", "visitor"],
    ))
    .expect("feed");
    assert!(unread(&h, "owner:s1").is_empty());
    h.feed(&for_conv(
        3,
        "ConversationUnarchived",
        "c1",
        &["owner", "visitor"],
    ))
    .expect("feed");
    assert_eq!(unread(&h, "owner:s1"), ["c1"]);
    h.feed(&for_conv(
        4,
        "ConversationArchived",
        "c1",
        &["owner", "visitor"],
    ))
    .expect("feed");
    h.feed(&sent(5, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    assert_eq!(
        unread(&h, "owner:s1"),
        ["c1"],
        "a message to an archived conversation unarchives it"
    );
}

#[test]
fn deleted_conversations_and_removed_participants_disappear() {
    let mut h = eager();
    h.feed(&sent(1, "c1", "visitor", &["owner", "visitor", "agent"]))
        .expect("feed");
    h.feed(&sent(2, "c2", "visitor", &["owner", "visitor", "agent"]))
        .expect("feed");
    h.feed(&for_conv(
        3,
        "ConversationDeleted",
        "c1",
        &["owner", "visitor", "agent"],
    ))
    .expect("feed");
    assert_eq!(unread(&h, "owner:s1"), ["c2"]);
    h.feed(&for_user(4, "ParticipantRemoved", "c2", "agent"))
        .expect("feed");
    assert!(unread(&h, "agent:s1").is_empty());
    assert_eq!(unread(&h, "owner:s1"), ["c2"]);
}

#[test]
fn participant_added_sees_the_conversation_unread_only_when_told() {
    let mut h = eager();
    h.feed(&event(
        1,
        "ParticipantAdded",
        json!({"site_id": "s1", "conversation_id": "c1", "user_id": "agent"}),
    ))
    .expect("feed");
    assert!(unread(&h, "agent:s1").is_empty());
    h.feed(&event(
        2,
        "ParticipantAdded",
        json!({"site_id": "s1", "conversation_id": "c2", "user_id": "agent", "unread": true}),
    ))
    .expect("feed");
    assert_eq!(unread(&h, "agent:s1"), ["c2"]);
}

#[test]
fn the_view_is_bounded() {
    let mut h = Harness::<InboxUnread>::new(json!({"max_unread": 3}))
        .expect("configure")
        .with_population(Population::Eager);
    for v in 1..=10 {
        h.feed(&sent(v, &format!("c{v}"), "visitor", &["owner", "visitor"]))
            .expect("feed");
    }
    assert_eq!(unread(&h, "owner:s1"), ["c10", "c9", "c8"]);
}

#[test]
fn bad_settings_and_bad_payloads_are_errors() {
    assert!(Harness::<InboxUnread>::new(json!({"max_unread": 0})).is_err());
    assert!(Harness::<InboxUnread>::new(json!({"max_unread": "many"})).is_err());
    // Its declared settings are all it takes: a misspelled one is refused.
    assert!(Harness::<InboxUnread>::new(json!({"max_unread": 5, "source": "inbox"})).is_ok());
    let misspelled = Harness::<InboxUnread>::new(json!({"max_unreed": 5}))
        .err()
        .expect("refused");
    assert!(
        misspelled
            .message
            .contains("\"max_unreed\" (did you mean \"max_unread\"?)"),
        "{misspelled}"
    );
    let mut h = eager();
    let bad = event(1, "MessageSent", json!({"site_id": "s1"}));
    assert!(h.feed(&bad).is_err());
    let colon = sent(1, "c1", "a:b", &["owner", "a:b"]);
    assert!(
        h.feed(&colon).is_err(),
        "ids with ':' would make ambiguous keys"
    );
}

// Seed 000, challenge 4: the out-of-order cases.

#[test]
fn message_after_a_newer_read_invalidates_and_later_events_are_ignored() {
    let mut h = Harness::<InboxUnread>::new(json!({})).expect("configure");
    h.snapshot("owner:s1", &json!({"conversations": [], "version": 0}))
        .expect("snapshot");
    h.feed(&for_user(2, "ConversationRead", "c1", "owner"))
        .expect("feed");
    let out = h
        .feed(&sent(1, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    assert!(out.contains(&("owner:s1".to_string(), Verdict::Invalidated)));
    let v = h.view("owner:s1").expect("view").expect("exists");
    assert_eq!(v.status, Status::Invalid);
    let out = h
        .feed(&sent(3, "c2", "visitor", &["owner", "visitor"]))
        .expect("feed");
    assert!(out.contains(&("owner:s1".to_string(), Verdict::Skipped(Decision::Ignored))));
    assert_eq!(
        h.render("owner:s1", 0).expect("render"),
        None,
        "Invalid views are not served"
    );
}

#[test]
fn a_duplicate_is_skipped() {
    let mut h = eager();
    let e = sent(1, "c1", "visitor", &["owner", "visitor"]);
    h.feed(&e).expect("feed");
    let out = h.feed(&e).expect("feed");
    assert!(
        out.iter()
            .all(|(_, v)| *v == Verdict::Skipped(Decision::Duplicate)),
        "{out:?}"
    );
}

#[test]
fn lazy_dismisses_and_a_snapshot_ignores_what_it_already_reflects() {
    let mut h = Harness::<InboxUnread>::new(json!({})).expect("configure");
    let out = h
        .feed(&sent(1, "c1", "visitor", &["owner", "visitor"]))
        .expect("feed");
    assert!(out
        .iter()
        .all(|(_, v)| *v == Verdict::Skipped(Decision::Dismissed)));
    assert!(h.view("owner:s1").expect("view").is_none());

    h.snapshot(
        "owner:s1",
        &json!({"conversations": [{"id": "c1", "last_message_at": 1001}], "version": 5}),
    )
    .expect("snapshot");
    let out = h
        .feed(&for_user(4, "ConversationRead", "c1", "owner"))
        .expect("feed");
    assert_eq!(
        out,
        vec![(
            "owner:s1".to_string(),
            Verdict::Skipped(Decision::BelowSnapshot)
        )]
    );
    assert_eq!(unread(&h, "owner:s1"), ["c1"]);
    h.feed(&for_user(6, "ConversationRead", "c1", "owner"))
        .expect("feed");
    assert!(unread(&h, "owner:s1").is_empty());
}

#[test]
fn comparison_ignores_the_order_of_equal_timestamps_only() {
    let p = InboxUnread::configure(&json!({})).expect("configure");
    let a = json!({"count": 3, "conversations": [
        {"id": "c1", "last_message_at": 5}, {"id": "c2", "last_message_at": 5}, {"id": "c3", "last_message_at": 1}]});
    let same_ties_swapped = json!({"conversations": [
        {"id": "c2", "last_message_at": 5}, {"id": "c1", "last_message_at": 5}, {"id": "c3", "last_message_at": 1}]});
    assert!(p.compare("k", &a, &same_ties_swapped).is_empty());

    let missing = json!({"conversations": [{"id": "c1", "last_message_at": 5}, {"id": "c2", "last_message_at": 5}]});
    let d = p.compare("k", &missing, &a);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].reason.as_str(), d[0].path.as_str()),
        ("missing", "/conversations/c3")
    );

    let reordered = json!({"conversations": [
        {"id": "c3", "last_message_at": 1}, {"id": "c1", "last_message_at": 5}, {"id": "c2", "last_message_at": 5}]});
    assert_eq!(p.compare("k", &reordered, &a)[0].reason, "order");

    let moved = json!({"conversations": [
        {"id": "c1", "last_message_at": 6}, {"id": "c2", "last_message_at": 5}, {"id": "c3", "last_message_at": 1}]});
    assert_eq!(p.compare("k", &moved, &a)[0].reason, "timestamp");
}

#[test]
fn snapshots_take_the_legacy_answer_with_one_or_many_versions() {
    let p = InboxUnread::configure(&json!({})).expect("configure");
    let (state, versions): (Unread, _) = p
        .snapshot(
            "owner:s1",
            &json!({"conversations": [{"id": "c1", "last_message_at": 3}], "version": 9}),
        )
        .expect("snapshot");
    assert_eq!(state.entries.len(), 1);
    assert_eq!(versions, vec![("inbox".to_string(), 9)]);
    let (_, versions) = p
        .snapshot(
            "owner:s1",
            &json!({"conversations": [], "versions": {"db.messages": 4, "db.reads": 2}}),
        )
        .expect("snapshot");
    assert_eq!(
        versions,
        vec![("db.messages".to_string(), 4), ("db.reads".to_string(), 2)]
    );
    assert!(p.snapshot("owner:s1", &json!({"rows": []})).is_err());
}
