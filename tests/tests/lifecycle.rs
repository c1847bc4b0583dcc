//! A view's life and its rollout, as the seeds ran them: views that expire
//! (`ttl_ms`), backfill and bulk verify against the source of truth,
//! rollout rules on request attributes, and the audit of who applied what.

use projector_tests::{Api, Projector, Served};
use serde_json::json;
use std::time::{Duration, Instant};

const INBOX: &str = "inbox-unread";

/// A message from `sender` to `to` on site s1, at `time_ms`.
fn sent(id: u64, conv: &str, sender: &str, to: &str, time_ms: i64) -> String {
    json!({
        "id": format!("e{id}"), "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": id, "time": time_ms,
        "payload": {"site_id": "s1", "conversation_id": conv,
                    "sender_id": sender, "participants": [sender, to]},
    })
    .to_string()
}

/// Wait (30 s at most) until `done` holds.
fn eventually(what: &str, done: impl FnMut() -> bool) {
    projector_tests::eventually(what, Duration::from_secs(30), done);
}

#[test]
fn a_view_past_its_ttl_is_not_served_a_millisecond_after_and_is_swept() {
    let ttl = 2_000;
    let s = Served::start(
        &[INBOX],
        &format!(
            "[engine]\nsweep_interval_ms = 100\n\
             [plugins.inbox-unread]\npopulation = \"eager\"\nttl_ms = {ttl}\n"
        ),
    );
    let (status, plugins) = s.get("/v1/plugins");
    assert_eq!(status, 200);
    assert_eq!(plugins["plugins"][0]["ttl_ms"], ttl);
    let t = projector_core::now_ms();
    let token = s.ingest(&[sent(1, "c1", "u1", "u2", t), sent(2, "c2", "u3", "u2", t)]);
    let (status, view) = s.get(&format!("/v1/views/{INBOX}/u2:s1?token={token}"));
    assert_eq!(status, 200, "{view}");
    let updated = view["view"]["updated_ms"].as_i64().expect("updated_ms");
    assert_eq!(updated, t);

    // Read at the last millisecond of its life, then at its first after.
    let at = |ms: i64| s.get(&format!("/v1/views/{INBOX}/u2:s1?at_ms={ms}"));
    let (status, body) = at(updated + ttl - 1);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["answer"]["conversations"].as_array().map(Vec::len),
        Some(2)
    );
    let (status, body) = at(updated + ttl + 1);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "view_not_found");
    let labels = format!("plugin=\"{INBOX}\"");
    assert_eq!(s.metric("projector_expired_reads_total", &labels), 1.0);

    // The sweep deletes all three views (u1, u2, u3) once they expire.
    eventually("the sweep", || {
        s.metric("projector_views_expired_total", &labels) >= 3.0
    });
    assert_eq!(s.metric("projector_views_expired_total", &labels), 3.0);
    let left = s.app.engine.store().views(INBOX).count();
    assert_eq!(left, 0, "every view swept");
    let (status, _) = s.get(&format!("/v1/views/{INBOX}/u2:s1"));
    assert_eq!(status, 404);
}

#[test]
fn the_audit_lists_which_version_applied_which_offsets_after_a_replace_deploy() {
    use projector_tests::hostile::{applied, event};
    let s = Served::start(&["hostile"], "");
    let v1 = projector_deploy::content_id(
        &std::fs::read(projector_tests::plugin_wasm("hostile")).expect("v1"),
    );
    let v2_bytes = std::fs::read(projector_tests::plugin_wasm("hostile-v2")).expect("v2");
    let v2 = projector_deploy::content_id(&v2_bytes);
    // The embedded log's default partitions.
    let partitions = 4;
    let batch = |range: std::ops::Range<u64>| -> Vec<String> { range.map(event).collect() };
    s.ingest(&batch(0..400));
    eventually("v1 applies 400", || applied(&s.app, partitions) == 400);
    let (status, body) = s.post(
        "/v1/admin/plugins/hostile?from=lifecycle&replace=true",
        v2_bytes,
    );
    assert_eq!(status, 200, "{body}");
    s.ingest(&batch(400..1000));
    eventually("v2 applies the rest", || {
        applied(&s.app, partitions) == 1000
    });

    // The audit is committed with the views, within a commit interval.
    let mut audit = serde_json::Value::Null;
    eventually("the audit committed", || {
        let (status, body) = s.get("/v1/admin/plugins/hostile/audit");
        assert_eq!(status, 200, "{body}");
        audit = body;
        audit["generations"][0]["runs"]
            .as_array()
            .is_some_and(|runs| {
                runs.iter()
                    .map(|r| r["records"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 1000
            })
    });
    let generations = audit["generations"].as_array().expect("generations");
    assert_eq!(generations.len(), 1, "{audit}");
    assert_eq!(generations[0]["role"], "active");
    assert_eq!(generations[0]["version"], v2.as_str());
    let runs = generations[0]["runs"].as_array().expect("runs");
    let records = |version: &str| -> u64 {
        runs.iter()
            .filter(|r| r["version"] == version)
            .map(|r| r["records"].as_u64().expect("records"))
            .sum()
    };
    assert_eq!(records(&v1), 400, "{audit}");
    assert_eq!(records(&v2), 600, "{audit}");
    for r in runs.iter().filter(|r| r["version"] == v2.as_str()) {
        assert_eq!(r["from_file"], "lifecycle", "{r}");
        assert!(r["deployed_ms"].as_i64().is_some(), "{r}");
    }
    let (status, body) = s.get("/v1/admin/plugins/nope/audit");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn rollout_rules_on_accept_language_and_a_tenant_header_route_reads() {
    let legacy = projector_tests::legacy::Legacy::start();
    let event = legacy.send("s1", "c1", "u1", &["u2"]);
    let s = Served::start(
        &[INBOX],
        &format!(
            "[plugins.inbox-unread]\npopulation = \"eager\"\n{}",
            legacy.source_config()
        ),
    );
    let token = s.ingest(&[event]);
    s.rollout(
        INBOX,
        json!({
            "default": "source",
            "rules": [
                {"name": "french", "mode": "projection",
                 "match": [{"header": "accept-language", "values": ["fr"]}]},
                {"name": "acme", "mode": "compare-return-projection",
                 "match": [{"header": "x-tenant", "values": ["acme"]}]},
                {"name": "beta-query", "mode": "compare-return-source",
                 "match": [{"query": "channel", "pattern": "^beta"}]}
            ]
        }),
    );
    let read = |headers: &[(&str, &str)], query: &str| {
        let mut request = s.client.get(format!(
            "{}/v1/views/{INBOX}/u2:s1?token={token}{query}",
            s.base
        ));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().expect("read");
        let header = |name: &str| response.headers()[name].to_str().expect("text").to_string();
        let (mode, rule) = (header("x-projector-mode"), header("x-projector-rule"));
        assert_eq!(response.status(), 200);
        let body: serde_json::Value =
            serde_json::from_str(&response.text().expect("body")).expect("json");
        assert_eq!(body["mode"], mode.as_str());
        (
            mode,
            rule,
            body["served_by"].as_str().expect("served_by").to_string(),
        )
    };
    let owned = |m: &str, r: &str, by: &str| (m.to_string(), r.to_string(), by.to_string());
    assert_eq!(
        read(&[("accept-language", "fr-FR,fr;q=0.9,en;q=0.8")], ""),
        owned("projection", "french", "projection")
    );
    assert_eq!(
        read(&[("accept-language", "de-DE"), ("x-tenant", "acme")], ""),
        owned("compare-return-projection", "acme", "projection")
    );
    assert_eq!(
        read(&[("x-tenant", "globex")], ""),
        owned("source", "default", "source")
    );
    assert_eq!(
        read(&[], "&channel=beta-2"),
        owned("compare-return-source", "beta-query", "source")
    );
    assert_eq!(
        read(&[("x-tenant", "acme")], "&mode=source"),
        owned("source", "asked", "source")
    );
    let count = |rule: &str, mode: &str| {
        s.metric(
            "projector_rollout_rule_total",
            &format!("plugin=\"{INBOX}\",rule=\"{rule}\",mode=\"{mode}\""),
        )
    };
    assert_eq!(count("french", "projection"), 1.0);
    assert_eq!(count("acme", "compare-return-projection"), 1.0);
    assert_eq!(count("default", "source"), 1.0);
    assert_eq!(count("beta-query", "compare-return-source"), 1.0);
    assert_eq!(count("asked", "source"), 1.0);
    // A parameter no rule reads is a typo, named in the answer.
    let (status, body) = s.get(&format!("/v1/views/{INBOX}/u2:s1?chanel=beta"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_query");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("chanel"),
        "{body}"
    );
    // A bad pattern is refused when the rollout is set.
    let (status, body) = s.send(
        reqwest::Method::PUT,
        &format!("/v1/admin/rollout/{INBOX}"),
        &json!({"rules": [{"match": [{"header": "x", "pattern": "("}], "mode": "projection"}]})
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("rules[0].match[0]"),
        "{body}"
    );
}

/// Start a backfill of `keys` through `api` (`query`: its rate and
/// concurrency); the job's first progress.
fn start_backfill(api: &Api, query: &str, keys: &[String]) -> serde_json::Value {
    let (status, started) = api.post(
        &format!("/v1/admin/plugins/{INBOX}/backfill?{query}"),
        keys.join("\n"),
    );
    assert_eq!(status, 202, "{started}");
    started
}

/// The progress of the backfill through `api`.
fn backfill_progress(api: &Api) -> serde_json::Value {
    let (_, progress) = api.get(&format!("/v1/admin/plugins/{INBOX}/backfill"));
    assert!(progress.is_object(), "progress: {progress}");
    progress
}

#[test]
fn verify_finds_planted_mismatches_and_missing_views_and_repair_heals_them() {
    let legacy = projector_tests::legacy::Legacy::start();
    // 20 users on s1, each writing to the next: 20 views, all in both.
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let mut events = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let next = &users[(i + 1) % users.len()];
        events.push(legacy.send("s1", &format!("c{i}"), u, &[next.as_str()]));
    }
    let s = Served::start(
        &[INBOX],
        &format!(
            "[plugins.inbox-unread]\npopulation = \"eager\"\n{}",
            legacy.source_config()
        ),
    );
    let token = s.ingest(&events);
    let (status, _) = s.get(&format!(
        "/v1/views/{INBOX}/u0:s1?token={token}&mode=projection"
    ));
    assert_eq!(status, 200);
    let keys: Vec<String> = users.iter().map(|u| format!("{u}:s1")).collect();

    // All equal to begin with, sampled from the store.
    let (status, report) = s.send(
        reqwest::Method::POST,
        &format!("/v1/admin/plugins/{INBOX}/verify?sample=100"),
        "",
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["keys"].as_u64(), report["equal"].as_u64()),
        (Some(20), Some(20)),
        "{report}"
    );

    // Planted: 3 reads the projection never saw (mismatches), a
    // conversation only the source knows (two missing views), a user the
    // source forgot, and one neither knows.
    for i in [2, 5, 7] {
        legacy.read(&format!("c{}", i - 1), &users[i]);
    }
    legacy.send("s1", "c-new", "newcomer", &["other"]);
    legacy.forget("u9:s1");
    legacy.forget("ghost:s1");
    let mut asked = keys.clone();
    asked.extend([
        "newcomer:s1".to_string(),
        "other:s1".to_string(),
        "ghost:s1".to_string(),
    ]);
    let path = format!("/v1/admin/plugins/{INBOX}/verify");
    let (status, report) = s.post(&path, asked.join("\n"));
    assert_eq!(status, 200, "{report}");
    let count = |r: &serde_json::Value, field: &str| r[field].as_u64().expect(field);
    assert_eq!(count(&report, "keys"), 23, "{report}");
    assert_eq!(count(&report, "mismatched"), 3, "{report}");
    assert_eq!(count(&report, "missing_view"), 2, "{report}");
    assert_eq!(count(&report, "missing_in_source"), 1, "{report}");
    assert_eq!(count(&report, "absent_both"), 1, "{report}");
    assert_eq!(count(&report, "equal"), 16, "{report}");
    assert_eq!(count(&report, "repaired"), 0);
    let mismatched: Vec<&str> = report["examples"]["mismatched"]
        .as_array()
        .expect("examples")
        .iter()
        .map(|e| e["key"].as_str().expect("key"))
        .collect();
    let mut sorted = mismatched.clone();
    sorted.sort();
    assert_eq!(sorted, ["u2:s1", "u5:s1", "u7:s1"]);
    assert!(report["examples"]["mismatched"][0]["differences"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(report["examples"]["missing_in_source"], json!(["u9:s1"]));

    // Repair: the mismatched views become Invalid ...
    let (status, report) = s.post(&format!("{path}?repair=true"), asked.join("\n"));
    assert_eq!(status, 200, "{report}");
    assert_eq!(count(&report, "repaired"), 3, "{report}");
    for key in ["u2:s1", "u5:s1", "u7:s1"] {
        let view = s
            .app
            .engine
            .read(INBOX, key, 0)
            .expect("read")
            .expect("view");
        assert_eq!(
            view.status,
            projector_guest::rules::Status::Invalid,
            "{key}"
        );
    }
    // ... the next read heals one (from the source, stored) ...
    let (_, view) = s.get(&format!(
        "/v1/views/{INBOX}/u2:s1?mode=compare-return-source"
    ));
    assert_eq!(view["populated"]["stored"], true, "{view}");
    assert_eq!(view["view"]["status"], "valid", "{view}");
    // ... and a backfill heals the others and the missing views.
    let heal: Vec<String> = ["u5:s1", "u7:s1", "newcomer:s1", "other:s1"]
        .map(String::from)
        .to_vec();
    start_backfill(&s, "rate=1000", &heal);
    let mut last = json!(null);
    eventually("the backfill", || {
        last = backfill_progress(&s);
        last["state"] == "done"
    });
    assert_eq!(
        (count(&last, "stored"), count(&last, "failed")),
        (4, 0),
        "{last}"
    );
    let (_, report) = s.post(&path, asked.join("\n"));
    assert_eq!(count(&report, "equal"), 21, "{report}");
    assert_eq!(
        count(&report, "mismatched") + count(&report, "missing_view"),
        0,
        "{report}"
    );
    assert_eq!(count(&report, "missing_in_source"), 1, "{report}");
    assert_eq!(count(&report, "absent_both"), 1, "{report}");
}

/// `projector run` in its own process, for the tests that kill it.
fn run_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = projector_tests::write_config(
        dir,
        &[INBOX],
        &format!("[engine]\ncompile_cache_dir = \"compiled\"\n{extra}"),
    );
    // Compile the plugin into the cache first, so a start is quick.
    let status = std::process::Command::new(projector_tests::projector_bin())
        .arg("--config")
        .arg(&config)
        .arg("status")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("projector status");
    assert!(status.success());
    config
}

/// A backfill of many keys against a local source of truth: paced at the
/// rate asked, SIGKILLed halfway, taken up again at the next start (the
/// CLI follows it to the end) without fetching the keys it had recorded
/// as done, and leaving every view equal to the source.
#[test]
fn a_backfill_is_paced_survives_a_kill_without_fetching_done_keys_again_and_matches_the_source() {
    let n = projector_tests::knob("BACKFILL_KEYS", 10_000);
    let rate = projector_tests::knob("BACKFILL_RATE", 1_000) as f64;
    let concurrency = 8;
    let legacy = projector_tests::legacy::Legacy::start();
    for i in 0..n / 2 {
        let (a, b) = (format!("u{}", 2 * i), format!("u{}", 2 * i + 1));
        legacy.send("s1", &format!("c{i}"), &a, &[b.as_str()]);
    }
    let keys: Vec<String> = (0..n).map(|i| format!("u{i}:s1")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = run_config(dir.path(), &legacy.source_config());
    let mut run = Projector::run(&config);
    let started = Instant::now();
    start_backfill(
        &run,
        &format!("rate={rate}&concurrency={concurrency}"),
        &keys,
    );
    let mut seen = json!(null);
    eventually("half the keys", || {
        seen = backfill_progress(&run);
        seen["done"].as_u64().unwrap_or(0) >= n / 2
    });
    let elapsed = started.elapsed().as_secs_f64();
    let done = seen["done"].as_u64().expect("done");
    let observed = done as f64 / elapsed;
    eprintln!("backfill: {done} keys in {elapsed:.2} s, {observed:.0}/s asked {rate}/s");
    // Never faster than asked (one key in flight per slot of slack), and
    // not far below it either.
    assert!(
        done as f64 <= rate * elapsed + concurrency as f64,
        "{done} keys in {elapsed:.2} s at {rate}/s"
    );
    assert!(observed >= rate * 0.3, "{observed:.0}/s for {rate}/s asked");
    run.sigkill();
    let asked_before: u64 = legacy.asked().values().sum();

    // Started again, the runtime takes the job up; the CLI follows it.
    let run = Projector::run(&config);
    let follow = std::process::Command::new(projector_tests::projector_bin())
        .arg("--config")
        .arg(&config)
        .args(["backfill", INBOX, "--follow", "--api", &run.base])
        .output()
        .expect("projector backfill --follow");
    let last: serde_json::Value =
        serde_json::from_slice(&follow.stdout).expect("the last progress, as JSON");
    assert!(follow.status.success(), "{last}");
    assert_eq!(last["state"], "done");
    // A key stored just before the kill whose mark was lost is fetched
    // again and finds its view there: kept.
    let stored = last["stored"].as_u64().expect("stored");
    assert_eq!(
        stored + last["kept_newer"].as_u64().expect("kept"),
        n,
        "{last}"
    );
    assert_eq!(last["failed"].as_u64(), Some(0), "{last}");

    // Each key fetched once, but those finished within the store's flush
    // interval (200 ms) before the kill, and those in flight.
    let asked = legacy.asked();
    assert_eq!(asked.len() as u64, n, "every key fetched");
    let again: u64 = asked.values().map(|k| k - 1).sum();
    let bound = (rate * 0.2) as u64 + 2 * concurrency;
    eprintln!("backfill: {asked_before} fetched before the kill, {again} fetched again");
    assert!(again <= bound, "{again} keys fetched again, bound {bound}");

    // Every view equals the source.
    let (_, report) = run.post(
        &format!("/v1/admin/plugins/{INBOX}/verify?concurrency=16"),
        keys.join("\n"),
    );
    assert_eq!(report["equal"].as_u64(), Some(n), "{report}");
    run.stop();
}
