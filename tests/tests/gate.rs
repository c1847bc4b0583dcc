//! Gated promotion, in a served runtime with the hostile fixture and a
//! source of truth that knows each key's count: a shadow with a planted
//! defect (it does not count events of type `dropped`) is held by the gate
//! with the failing conditions named, while a correct shadow promotes
//! itself and passes its watch window; and a defective version promoted
//! while its defect did not show is rolled back by the watch once it
//! starts mismatching the source of truth. Each decision is in the
//! plugin's history with its figures and counted in `/metrics`.

use projector_tests::services::{Service, Services};
use projector_tests::{component, Served};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Keys the traffic spreads over.
const KEYS: u64 = 40;

/// The traffic and what the source of truth says of it.
struct Traffic {
    next: u64,
    counts: BTreeMap<String, u64>,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            next: 0,
            counts: BTreeMap::new(),
        }
    }

    /// `n` events of type `ty`, one key after the other, ingested; the
    /// source of truth then counts them (every type counts).
    fn send(&mut self, s: &Served, truth: &Service, ty: &str, n: u64) {
        let events: Vec<String> = (self.next..self.next + n)
            .map(|i| {
                let key = format!("k{}", i % KEYS);
                *self.counts.entry(key.clone()).or_default() += 1;
                json!({"id": format!("e{i}"), "type": ty, "source": "test", "key": key,
                       "version": i + 1, "time": 1_000 + i, "payload": {}})
                .to_string()
            })
            .collect();
        self.next += n;
        let token = s.ingest(&events);
        // Applied by the serving version before the truth moves on.
        let (status, body) = s.get(&format!(
            "/v1/views/hostile/k0?token={token}&mode=projection"
        ));
        assert_eq!(status, 200, "{body}");
        for (key, n) in &self.counts {
            truth.set(key, vec![json!({"count": n, "version": "1"})]);
        }
    }
}

fn serve(truth: &Service, watch_ms: u64) -> Served {
    Served::start(
        &["hostile"],
        &format!(
            "[plugins.hostile]\ntruth = {{ url = \"http://{}/truth/{{key}}\" }}\n\
             [plugins.hostile.promote]\nsample_keys = 40\nmin_keys = 40\nmin_follow_ms = 1000\n\
             min_events = 40\ncheck_ms = 200\nmax_truth_mismatch = 0.05\nmax_mismatch = 0.05\n\
             watch_ms = {watch_ms}\nwatch_events = 40\n",
            truth.addr
        ),
    )
}

/// Deploy `fixture` as a gated shadow of the hostile plugin.
fn deploy_gated(s: &Served, fixture: &str) -> String {
    let (bytes, id) = component(fixture);
    let (status, body) = s.post(
        "/v1/admin/plugins/hostile?mode=shadow&method=rebuild&promote=gated",
        bytes,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gate"]["config"]["mode"], "gated", "{body}");
    id
}

fn serving(s: &Served) -> String {
    let p = s.app.engine.projection("hostile").expect("hostile");
    p.code().id().to_string()
}

/// The hostile plugin's history, oldest first.
fn history(s: &Served) -> Vec<Value> {
    let (status, body) = s.get("/v1/admin/plugins");
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["plugin"] == "hostile"))
        .and_then(|p| p["history"].as_array().cloned())
        .unwrap_or_default()
}

fn decisions(s: &Served, decision: &str) -> f64 {
    s.metric(
        "projector_promotion_decisions_total",
        &format!("plugin=\"hostile\",decision=\"{decision}\""),
    )
}

/// Send events until `done` says so (at most a minute), returning what it gave.
fn until<T>(
    s: &Served,
    truth: &Service,
    traffic: &mut Traffic,
    ty: &str,
    what: &str,
    mut done: impl FnMut(&Served) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = done(s) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the gate: {}",
            gate(s)
        );
        traffic.send(s, truth, ty, 20);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gate(s: &Served) -> Value {
    s.get("/v1/admin/plugins/hostile/shadow").1["gate"].clone()
}

#[test]
fn a_defective_shadow_is_held_and_a_correct_one_promotes_itself() {
    let services = Services::start(&["truth"]);
    let truth = services.get("truth");
    let s = serve(truth, 2_000);
    let mut traffic = Traffic::new();
    traffic.send(&s, truth, "count", 200);
    traffic.send(&s, truth, "dropped", 80);
    let v1 = serving(&s);

    // The defect: every key's count differs, from the live generation and
    // from the source of truth. Held, with both conditions named.
    let drops = deploy_gated(&s, "hostile-drops");
    let held = until(&s, truth, &mut traffic, "count", "the gate to hold", |s| {
        let g = gate(s);
        (g["state"] == "held").then_some(g)
    });
    let failing: Vec<&str> = held["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        failing.contains(&"compared") && failing.contains(&"truth"),
        "{held}"
    );
    let recorded = history(&s)
        .into_iter()
        .find(|e| e["action"] == "held")
        .expect("a held decision in the history");
    assert_eq!(recorded["id"], drops.as_str());
    let reason = recorded["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("compared: ") && reason.contains("differ from the live generation"),
        "{reason}"
    );
    assert!(decisions(&s, "held") >= 1.0);
    assert_eq!(serving(&s), v1, "a held shadow does not serve");
    // Held for as long as it runs.
    for _ in 0..5 {
        traffic.send(&s, truth, "count", 20);
    }
    assert_eq!(serving(&s), v1);
    assert_eq!(gate(&s)["state"], "held");
    let (status, body) = s.post("/v1/admin/plugins/hostile/retire", "");
    assert_eq!(status, 200, "{body}");

    // A correct version: promoted by the gate, then watched.
    let same = deploy_gated(&s, "hostile-same");
    // Written to the history once the switch is done.
    let promoted = until(
        &s,
        truth,
        &mut traffic,
        "count",
        "the gate to promote",
        |s| {
            let e = history(s)
                .into_iter()
                .rev()
                .find(|e| e["action"] == "promote");
            e.filter(|e| e["id"] == same.as_str())
        },
    );
    assert_eq!(serving(&s), same);
    let reason = promoted["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("the promotion gate passed: followed: ") && reason.contains("truth: "),
        "{reason}"
    );
    until(&s, truth, &mut traffic, "count", "the watch to pass", |s| {
        (gate(s)["state"] == "passed").then_some(())
    });
    assert!(history(&s).iter().any(|e| e["action"] == "watched"));
    assert_eq!(decisions(&s, "promoted"), 1.0);
    assert_eq!(decisions(&s, "passed"), 1.0);
    assert_eq!(decisions(&s, "rolled_back"), 0.0);
    assert_eq!(serving(&s), same);
}

#[test]
fn a_promoted_version_that_starts_mismatching_the_truth_is_rolled_back_by_the_watch() {
    let services = Services::start(&["truth"]);
    let truth = services.get("truth");
    let s = serve(truth, 600_000);
    let mut traffic = Traffic::new();
    traffic.send(&s, truth, "count", 200);
    let v1 = serving(&s);

    // No `dropped` event flows yet: the defect does not show, the gate
    // promotes it.
    let drops = deploy_gated(&s, "hostile-drops");
    until(
        &s,
        truth,
        &mut traffic,
        "count",
        "the gate to promote",
        |s| (gate(s)["state"] == "watching").then_some(()),
    );
    assert_eq!(serving(&s), drops);

    // Now they flow: the promoted version's views fall behind the truth.
    until(
        &s,
        truth,
        &mut traffic,
        "dropped",
        "the watch to roll back",
        |s| (gate(s)["state"] == "rolled_back").then_some(()),
    );
    let rolled = history(&s)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "runtime_rollback")
        .expect("the rollback in the history");
    assert_eq!(rolled["previous"], drops.as_str());
    assert_eq!(serving(&s), v1);
    let reason = rolled["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("rolled back by the promotion watch after ")
            && reason.contains("truth: "),
        "{reason}"
    );
    assert_eq!(rolled["id"], v1.as_str());
    assert_eq!(decisions(&s, "rolled_back"), 1.0);
    // The version serving again kept up meanwhile: every view is right.
    traffic.send(&s, truth, "count", 40);
    for (key, n) in &traffic.counts {
        let (status, body) = s.get(&format!("/v1/views/hostile/{key}?mode=projection"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["answer"]["count"], json!(n), "{key}: {body}");
    }
}
