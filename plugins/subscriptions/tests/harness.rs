//! subscriptions through the SDK's native harness: both event flavours,
//! stale and duplicate messages, refetching a lagging source, read-time
//! rendering and the comparison rule.

use projector_guest::harness::{set_fetch, Harness};
use projector_guest::{Event, FetchError, Fetched, Projection};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subscriptions::{Row, Subscriptions};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn event(source: &str, ty: &str, version: u64, entity: Option<Value>) -> Event {
    let mut payload = json!({"user_id": "u1", "asset_id": "a1"});
    if let Some(e) = entity {
        payload["entity"] = e;
    }
    Event {
        id: format!("{source}-{version}"),
        event_type: ty.into(),
        source: source.into(),
        key: "a1".into(),
        version,
        time_ms: 0,
        payload: payload.to_string(),
        ..Default::default()
    }
}

fn subscription(version: u64, plan: &str, trial_end_ms: Option<i64>) -> Value {
    json!({"version": version, "product": "site-plan", "plan": plan,
           "trial_end_ms": trial_end_ms, "expires_ms": 400 * DAY})
}

fn harness() -> Harness<Subscriptions> {
    Harness::new(json!({})).expect("configures")
}

fn row(h: &Harness<Subscriptions>) -> Row {
    h.view("u1:a1")
        .expect("view")
        .and_then(|v| v.state)
        .expect("present")
}

#[test]
fn entity_events_aggregate_four_sources_into_one_row() {
    let mut h = harness();
    for e in [
        event(
            "subscriptions",
            "SubscriptionChanged",
            1,
            Some(subscription(1, "premium", None)),
        ),
        event(
            "billing",
            "BillingChanged",
            7,
            Some(json!({"version": 7, "payment_status": "paid",
            "next_charge_ms": 30 * DAY, "amount_cents": 1200, "currency": "EUR"})),
        ),
        event(
            "domains",
            "DomainChanged",
            3,
            Some(json!({"version": 3, "name": "example.com", "expires_ms": 365 * DAY})),
        ),
        event(
            "sites",
            "SiteChanged",
            2,
            Some(json!({"version": 2, "name": "Shop", "url": "https://shop.example.com"})),
        ),
    ] {
        h.feed(&e).expect("feeds");
    }
    let view = h.render("u1:a1", DAY).expect("render").expect("valid");
    assert_eq!(view["plan"], "premium");
    assert_eq!(view["status"], "active");
    assert_eq!(view["payment_status"], "paid");
    assert_eq!(view["amount"], json!({"cents": 1200, "currency": "EUR"}));
    assert_eq!(view["domain"], "example.com");
    assert_eq!(view["site"]["name"], "Shop");
}

#[test]
fn stale_and_duplicate_messages_are_ignored() {
    let mut h = harness();
    let newer = event(
        "subscriptions",
        "SubscriptionChanged",
        5,
        Some(subscription(5, "vip", None)),
    );
    let older = event(
        "subscriptions",
        "SubscriptionChanged",
        3,
        Some(subscription(3, "basic", None)),
    );
    h.feed(&newer).expect("feeds");
    h.feed(&older).expect("feeds");
    h.feed(&newer).expect("feeds");
    assert_eq!(row(&h).subscription.expect("part").plan, "vip");
}

#[test]
fn trial_days_left_follow_the_read_time() {
    let mut h = harness();
    h.feed(&event(
        "subscriptions",
        "SubscriptionChanged",
        1,
        Some(subscription(1, "premium", Some(10 * DAY))),
    ))
    .expect("feeds");
    let at = |now| h.render("u1:a1", now).expect("render").expect("valid");
    assert_eq!(at(0)["trial_days_left"], 10);
    assert_eq!(at(0)["status"], "trial");
    assert_eq!(at(3 * DAY + 1)["trial_days_left"], 7);
    assert_eq!(at(10 * DAY)["trial_days_left"], Value::Null);
    assert_eq!(at(10 * DAY)["status"], "active");
    assert_eq!(at(400 * DAY)["status"], "expired");
}

#[test]
fn id_only_events_fetch_the_entity_and_refetch_a_lagging_one() {
    // One process-wide fetch hook: this test alone sets it.
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    set_fetch(move |service, path| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        match (service, path) {
            // A lagging replica first, then the current version.
            ("billing", "/billing/a1") => Ok(Fetched {
                status: 200,
                body: json!({"version": if n == 0 { 3 } else { 4 }, "payment_status": "failed",
                             "amount_cents": 900, "currency": "USD"})
                .to_string()
                .into_bytes(),
                stale: false,
            }),
            ("sites", _) => Err(FetchError::Timeout),
            _ => Err(FetchError::NotAllowed(service.into())),
        }
    });
    let mut h = harness();
    h.feed(&event(
        "subscriptions",
        "SubscriptionChanged",
        1,
        Some(subscription(1, "premium", None)),
    ))
    .expect("feeds");
    h.feed(&event("billing", "BillingChanged", 4, None))
        .expect("feeds");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the lagging answer was fetched again"
    );
    let r = row(&h);
    assert_eq!(r.billing.expect("billing").version, 4);
    let view = h.render("u1:a1", 0).expect("render").expect("valid");
    assert_eq!(view["status"], "payment-failed");

    // A source that times out fails the event; the row keeps its parts.
    let verdicts = h
        .feed(&event("sites", "SiteChanged", 2, None))
        .expect("feeds");
    assert!(
        format!("{verdicts:?}").contains("timed out"),
        "{verdicts:?}"
    );
    assert!(row(&h).site.is_none());
}

#[test]
fn compare_checks_facts_not_read_time_fields() {
    let h = harness();
    let p = h.plugin();
    let a = json!({"plan": "premium", "status": "trial", "trial_days_left": 3, "domain": "a.com"});
    let b =
        json!({"plan": "premium", "status": "active", "trial_days_left": null, "domain": "a.com"});
    assert!(p.compare("u1:a1", &a, &b).is_empty());
    let c = json!({"plan": "basic", "status": "active", "domain": "a.com"});
    let d = p.compare("u1:a1", &a, &c);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].path, "/plan");
}

#[test]
fn id_only_events_and_recollections_name_their_fetches_ahead() {
    use projector_guest::{Need, RECOLLECT};
    let plugin: Subscriptions = projector_guest::configure(&json!({})).expect("configures");
    let id_only = event("billing", "BillingChanged", 2, None);
    assert_eq!(
        plugin.needs(&id_only),
        [Need::new("billing", "/billing/a1")]
    );
    let carrying = event("billing", "BillingChanged", 2, Some(json!({"version": 2})));
    assert!(plugin.needs(&carrying).is_empty(), "the entity is carried");
    let unknown = event("billing", "SomethingElse", 2, None);
    assert!(plugin.needs(&unknown).is_empty());
    let recollect = Event {
        event_type: RECOLLECT.into(),
        key: "u1:a1".into(),
        payload: "{}".into(),
        ..Default::default()
    };
    let paths: Vec<String> = plugin
        .needs(&recollect)
        .into_iter()
        .map(|n| n.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/subscriptions/a1",
            "/billing/a1",
            "/domains/a1",
            "/sites/a1"
        ]
    );
}
