//! The `projector` binary as a user runs it: the embedded log with
//! `run --ingest`, `get`, `status`, `dead-letters`, and clear errors for
//! bad config and bad input.

use projector_tests::{
    inbox_events, projector_bin, write_config, write_ndjson, InboxShape, Launch, Projector,
};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn projector(dir: &Path, args: &[&str]) -> Output {
    Command::new(projector_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run projector")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

use projector_tests::stderr;

/// The config of the inbox tests after its layout: the API on a free
/// loopback port, the inbox populated eagerly.
const INBOX: &str =
    "[http]\nlisten = \"127.0.0.1:0\"\n[plugins.inbox-unread]\npopulation = \"eager\"\n";

#[test]
fn run_on_the_embedded_log_then_read_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["inbox-unread"], INBOX);
    let mut events = inbox_events(InboxShape {
        sites: 5,
        users: 20,
        events: 500,
        seed: 3,
    });
    let good = events.len();
    events.push(r#"{"id":"broken""#.to_string());
    write_ndjson(&dir.path().join("events.ndjson"), &events);

    // A bad line refuses the whole ingest, naming the line.
    let o = projector(
        dir.path(),
        &["run", "--ingest", "events.ndjson", "--exit-when-idle"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("events.ndjson line {}", good + 1)),
        "{}",
        stderr(&o)
    );

    events.pop();
    write_ndjson(&dir.path().join("events.ndjson"), &events);
    let o = projector(
        dir.path(),
        &["run", "--ingest", "events.ndjson", "--exit-when-idle"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with(&format!("events {good}, applied ")),
        "{}",
        stdout(&o)
    );

    let o = projector(dir.path(), &["get", "inbox-unread", "u0:s0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let view: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("get prints JSON");
    assert_eq!(view["status"], "valid");
    assert!(view["view"]["count"].as_u64().is_some(), "{view}");

    let o = projector(dir.path(), &["get", "inbox-unread", "nobody:s0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no view for \"nobody:s0\""));

    let o = projector(dir.path(), &["get", "no-such-plugin", "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown plugin \"no-such-plugin\""),
        "{}",
        stderr(&o)
    );

    let o = projector(dir.path(), &["status"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("status JSON");
    assert_eq!(status["plugins"][0]["plugin"], "inbox-unread");
    assert_eq!(status["plugins"][0]["dead_lettered"], 0);
}

#[test]
fn replay_dead_letters_a_malformed_line_with_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["inbox-unread"], INBOX);
    let mut events = inbox_events(InboxShape {
        sites: 5,
        users: 20,
        events: 50,
        seed: 3,
    });
    events.insert(10, r#"{"id":"e-bad","type":"MessageSent""#.to_string());
    write_ndjson(&dir.path().join("events.ndjson"), &events);
    let o = projector(dir.path(), &["replay", "events.ndjson"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("decode errors 1"), "{}", stdout(&o));
    let o = projector(dir.path(), &["dead-letters"]);
    let letters: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0]["stage"].as_str(), letters[0]["offset"].as_u64()),
        (Some("decode"), Some(10))
    );
    assert!(
        letters[0]["error"].as_str().expect("error").contains("EOF"),
        "{}",
        letters[0]
    );
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "bad-key.toml",
            "data_dir = \"d\"\nflush = true\n",
            "unknown field `flush`",
        ),
        (
            "bad-limit.toml",
            "[limits]\nepoch_deadline = 5\n",
            "unknown field `epoch_deadline`, expected one of",
        ),
        (
            "bad-type.toml",
            "[engine]\nbatch_size = \"big\"\n",
            "invalid type: string \"big\", expected usize",
        ),
        (
            "bad-value.toml",
            "[engine]\nworkers = 0\n",
            "engine.workers: expected 1 to 256, got 0",
        ),
        (
            "bad-pop.toml",
            "[plugins.x]\npopulation = \"sometimes\"\n",
            "unknown variant `sometimes`, expected `lazy` or `eager`",
        ),
        (
            "bad-listen.toml",
            "[http]\nlisten = \"everywhere\"\n",
            "http.listen: expected an address like 127.0.0.1:8080",
        ),
        (
            "bad-truth.toml",
            "[plugins.x.truth]\nurl = \"http://legacy/{team}\"\nkey = \"{user}:{site}\"\n",
            "plugins.x.truth.url: field {team} is neither {key} nor a field of the key pattern",
        ),
        (
            // The older name of the table is still read.
            "bad-source.toml",
            "[plugins.x.source]\nurl = \"http://legacy/{team}\"\nkey = \"{user}:{site}\"\n",
            "plugins.x.truth.url: field {team} is neither {key} nor a field of the key pattern",
        ),
        (
            "both-names.toml",
            "[plugins.x.truth]\nurl = \"http://a/{key}\"\n[plugins.x.source]\nurl = \"http://b/{key}\"\n",
            "plugins.x: both `truth` and its older name `source` are set",
        ),
        (
            "bad-rollout.toml",
            "[plugins.x.rollout]\nrules = [{ percent = 101, mode = \"projection\" }]\n",
            "plugins.x.rollout.rules[0].percent: expected 0 to 100, got 101",
        ),
        (
            "bad-mode.toml",
            "[plugins.x.rollout]\ndefault = \"mysql\"\n",
            "unknown variant `mysql`",
        ),
    ];
    for (file, text, expected) in cases {
        std::fs::write(dir.path().join(file), text).expect("write");
        let o = projector(dir.path(), &["--config", file, "status"]);
        assert_eq!(o.status.code(), Some(2), "{file}");
        let err = stderr(&o);
        assert!(err.contains(&format!("config {file}:")), "{file}: {err}");
        assert!(err.contains(expected), "{file}: {err}");
    }
    // A configured plugin with no module is an error, not silence.
    std::fs::create_dir_all(dir.path().join("plugins")).expect("mkdir");
    std::fs::write(
        dir.path().join("ghost.toml"),
        "plugins_dir = \"plugins\"\ndata_dir = \"data\"\n[plugins.ghost]\n",
    )
    .expect("write");
    let o = projector(dir.path(), &["--config", "ghost.toml", "status"]);
    assert!(
        stderr(&o).contains("[plugins.ghost] is set but there is no ghost.wasm"),
        "{}",
        stderr(&o)
    );
}

/// The events count of a run's closing summary.
fn summary_events(out: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("events "))
        .unwrap_or_else(|| panic!("no summary in {out:?}"));
    line["events ".len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

#[test]
fn sigterm_stops_run_after_its_batch_and_a_restart_finishes_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &["inbox-unread"],
        &format!("{INBOX}[engine]\nbatch_size = 64\n"),
    );
    let events = inbox_events(InboxShape {
        sites: 20,
        users: 200,
        events: 3000,
        seed: 9,
    });
    write_ndjson(&dir.path().join("events.ndjson"), &events);

    // Readiness: the runtime says where its read API listens.
    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "events.ndjson"])
        .keep_stdout()
        .start();
    assert_eq!(run.get("/readyz").0, 200);
    // A stop on SIGTERM is clean.
    let first = summary_events(&run.stop().stdout);

    let o = projector(dir.path(), &["run", "--exit-when-idle"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = summary_events(&stdout(&o));
    assert_eq!(
        first + second,
        events.len() as u64,
        "nothing lost or repeated across the stop"
    );
}

#[test]
fn kafka_dev_serves_a_run_on_kafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Projector::kafka_dev(dir.path(), &["--topics", "inbox:2", "--group", "views"]);
    let bootstrap = broker.announced().to_string();
    assert!(bootstrap.contains(':'), "{bootstrap}");

    let events = inbox_events(InboxShape {
        sites: 20,
        users: 200,
        events: 2000,
        seed: 4,
    });
    projector_tests::kafka::produce(&bootstrap, "inbox", 2, &events);
    write_config(
        dir.path(),
        &["inbox-unread"],
        &format!(
            "{INBOX}[source.kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"views\"\ntopics = [\"inbox\"]\n"
        ),
    );
    let mut run = Launch::in_dir(dir.path(), &["run"]).keep_stdout().start();

    // The busiest view of the model, read through the API once applied.
    let model = projector_tests::fold_inbox(&events);
    let (key, unread) = model.iter().max_by_key(|(_, u)| u.len()).expect("a view");
    let path = format!("/v1/views/inbox-unread/{key}?mode=projection");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = run.try_get(&path).map(|a| a.body).unwrap_or_default();
        if body["served_by"] == "projection"
            && projector_tests::rendered(&body["answer"]) == projector_tests::shown(unread)
        {
            // Staleness names the topic and its owned partitions.
            assert_eq!(body["staleness"]["source"], "kafka:inbox", "{body}");
            assert_eq!(
                body["staleness"]["partitions"].as_array().map(Vec::len),
                Some(2),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "view {key} never matched: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every Kafka metric documented in runtime/api/src/metrics.rs is
    // exposed, once every partition's end is known (until then its lag is
    // not reported).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run
        .get_text("/metrics")
        .contains("projector_kafka_lag_unknown_partitions 0")
    {
        assert!(Instant::now() < deadline, "partitions' ends never known");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = projector_tests::assert_documented_metrics(&run, "//! | (kafka) `", 10);
    assert!(
        text.contains("projector_lag_records{plugin=\"inbox-unread\",source=\"kafka:inbox\""),
        "{text}"
    );
    run.sigterm();
    broker.sigterm();
    let out = run.wait();
    assert!(
        out.status.success(),
        "run stops cleanly on SIGTERM: {:?}",
        out.status
    );
    let summary = out.stdout;
    assert_eq!(summary_events(&summary), events.len() as u64, "{summary}");
    broker.wait();
}

#[test]
fn plugin_commands_deploy_list_roll_back_and_show_logs_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = projector_tests::hostile::run_printing(dir.path());
    // `projector plugin <args> --api <its API>`.
    let plugin = |args: &[&str]| {
        projector(
            dir.path(),
            &[&["plugin"], args, &["--api", &run.base]].concat(),
        )
    };

    let v2 = projector_tests::plugin_wasm("hostile-v2");
    let v2 = v2.to_str().expect("path");
    // Replacing the running plugin is refused unless asked for, naming both.
    let o = plugin(&["deploy", v2, "--name", "hostile"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let refusal = stderr(&o);
    assert!(refusal.contains("409"), "{refusal}");
    assert!(
        refusal.contains(r#""hostile" version "1""#)
            && refusal.contains(r#""hostile" version "2""#),
        "{refusal}"
    );
    assert!(refusal.contains("--replace"), "{refusal}");
    let o = plugin(&["deploy", v2, "--name", "hostile", "--replace"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deployed: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(deployed["changed"], true);

    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").expect("broken");
    let o = plugin(&["deploy", "broken.wasm", "--name", "hostile", "--replace"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rejected"), "{}", stderr(&o));

    let o = plugin(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(list["plugins"][0]["active"], deployed["id"], "{list}");
    assert_eq!(
        list["plugins"][0]["versions"].as_array().map(Vec::len),
        Some(2)
    );

    let o = plugin(&["rollback", "hostile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = plugin(&["rollback", "hostile"]);
    assert!(!o.status.success(), "nothing earlier to roll back to");
    assert!(stderr(&o).contains("no earlier version"), "{}", stderr(&o));

    // A shadow deploy: built with a progress bar, compared, promoted,
    // and the old generation retired.
    let o = plugin(&["deploy", v2, "--name", "hostile", "--mode", "shadow"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shadow: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(shadow["phase"], "following", "{shadow}");
    assert_eq!(shadow["percent"], 100.0, "{shadow}");
    let o = plugin(&["compare", "hostile", "--sample", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let compared: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(compared["compared"], 1, "{compared}");
    assert_eq!(compared["mismatched"], 1, "{compared}");
    let o = plugin(&["promote", "hostile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, view) = run.get("/v1/views/hostile/k?mode=projection");
    assert_eq!(view["answer"]["version"], "2", "{view}");
    let o = plugin(&["retire", "hostile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"retired\": \"hostile\""),
        "{}",
        stdout(&o)
    );

    // The log lines of the first version outlive the deploys.
    let o = plugin(&["logs", "hostile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("hello from the log import"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("hello from stdout"), "{}", stdout(&o));

    // A dead letter listed by key and sent back from the CLI: `fail`
    // fails in every build, so it comes back as the serving version's.
    let fail =
        r#"{"id":"f1","type":"fail","source":"t","key":"f","version":1,"time":1,"payload":{}}"#;
    run.ingest(&[fail.to_string()]);
    let letters = |dir: &std::path::Path| {
        let o = projector(dir, &["dead-letters", "--key", "f", "--api", &run.base]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "no dead letter for f");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = projector(
        dir.path(),
        &[
            "dead-letters",
            "redrive",
            "--plugin",
            "hostile",
            "--key",
            "f",
            "--api",
            &run.base,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let done: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(done["redriven"], 1, "{done}");
    assert!(
        stderr(&o).contains("1 dead letter sent back through hostile"),
        "{}",
        stderr(&o)
    );
    run.stop();
}

/// With `projector run` holding the store, the commands that read go
/// through its API (with the admin token); with no API there either, the
/// error names the process that holds the store.
#[test]
fn read_commands_beside_a_running_instance_go_through_its_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &["inbox-unread"],
        "[engine]\ncommit_interval_ms = 50\ncompile_cache_dir = \"compiled\"\n\
         [http]\nadmin_token = \"cli-admin-t0ken-0123\"\n\
         [plugins.inbox-unread]\npopulation = \"eager\"\n",
    );
    let mut runtime = Projector::run(&config);
    let base = runtime.base.clone();
    let event = r#"{"id":"e1","type":"MessageSent","source":"inbox","key":"s1","version":1,"time":1767225600000,"payload":{"site_id":"s1","conversation_id":"c1","sender_id":"u1","participants":["u1","u2"]}}"#;
    let (_, token) = runtime.post("/v1/events", event);
    let (waited, _) = runtime.get(&format!(
        "/v1/views/inbox-unread/u2:s1?token={}",
        token["token"].as_str().expect("token")
    ));
    assert_eq!(waited, 200, "a read that waits for the event");
    let run = |args: &[&str]| {
        Command::new(projector_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("PROJECTOR_ADMIN_TOKEN")
            .output()
            .expect("projector")
    };
    let got = run(&["get", "inbox-unread", "u2:s1", "--api", &base]);
    assert!(got.status.success(), "{}", stderr(&got));
    let view: serde_json::Value = serde_json::from_slice(&got.stdout).expect("json");
    assert_eq!(view["status"], "valid");
    assert_eq!(view["view"]["conversations"][0]["id"], "c1", "{view}");
    let none = run(&["get", "inbox-unread", "nobody:s1", "--api", &base]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    let status = run(&["status", "--api", &base]);
    assert!(status.status.success(), "{}", stderr(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(s["plugins"][0]["plugin"], "inbox-unread", "{s}");
    // The retry queue, as when the store is opened directly.
    assert_eq!(s["retry_queue"], 0, "{s}");
    let letters = run(&["dead-letters", "--api", &base]);
    assert!(letters.status.success(), "{}", stderr(&letters));
    // No API where it is looked for: the holder is named.
    let lost = run(&[
        "get",
        "inbox-unread",
        "u2:s1",
        "--api",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(lost.status.code(), Some(2));
    let err = stderr(&lost);
    assert!(
        err.contains(&format!("held by process {}", runtime.id())) && err.contains("--api"),
        "{err}"
    );
    runtime.sigkill();
}

/// SIGTERM stops `run` cleanly even when the readers of its stderr and
/// stdout are gone (dead pipes under a supervisor): the stop comes before
/// the message saying so, and neither a log line nor the summary panics.
#[test]
fn run_stops_on_sigterm_when_its_stderr_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &["inbox-unread"], "");
    // Read until it runs, then close both pipes' only readers: the lines
    // it logs and the summary it prints on the way out are lost, and it
    // still stops cleanly.
    let run = Launch::run(&config).deaf_once_ready().start();
    run.stop_within(Duration::from_secs(30));
}

#[test]
fn gen_inbox_help_prints_its_usage() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gen-inbox"))
        .arg("--help")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("gen-inbox");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("usage: gen-inbox"), "{}", stdout(&o));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gen-inbox"))
        .arg("many")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("gen-inbox");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("usage: gen-inbox"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("backtrace"), "{}", stderr(&o));
}

#[test]
fn plugin_deploy_of_a_new_plugin_reports_its_build_progress_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &["inbox-unread"],
        "[http]\nlisten = \"127.0.0.1:0\"\n[plugins.hostile]\nlimits = { epoch_deadline_ms = 50 }\n",
    );
    // Events that each run the hostile plugin to its deadline: a build
    // of some seconds.
    let slow: Vec<String> = (0..60)
        .map(|i| {
            format!(r#"{{"id":"s{i}","type":"loop","source":"t","key":"k{i}","version":1,"time":1,"payload":{{}}}}"#)
        })
        .collect();
    std::fs::write(dir.path().join("events.ndjson"), slow.join("\n") + "\n").expect("events");
    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "events.ndjson"]).start();
    let hostile = projector_tests::plugin_wasm("hostile");
    let o = projector(
        dir.path(),
        &[
            "plugin",
            "deploy",
            hostile.to_str().expect("path"),
            "--api",
            &run.base,
        ],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // Not a terminal: a line every few seconds, the first at once, and
    // the last once live; never 100% while building.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("build hostile: "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("build hostile: building, ")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("building"))
            .all(|l| !l.contains("(100%)")),
        "{err}"
    );
    let last = lines.last().expect("a progress line");
    assert!(
        last.starts_with("build hostile: live, ") && last.contains("of 60 records (100%)"),
        "{err}"
    );
}

/// `plugin deploy --setting key=value` runs that version with the
/// setting over the config's, and a restart keeps it.
#[test]
fn plugin_deploy_settings_apply_to_that_version_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `capped`, added at runtime, populates eagerly too.
    let config = format!("{INBOX}[plugins.capped]\npopulation = \"eager\"\n");
    write_config(dir.path(), &["inbox-unread"], &config);
    let sent = |n: usize| {
        let payload = serde_json::json!({"site_id": "s1", "conversation_id": format!("c{n}"),
            "sender_id": "u1", "participants": ["u1", "u2"]});
        serde_json::json!({"id": format!("e{n}"), "type": "MessageSent", "source": "inbox",
            "key": "s1", "version": n, "time": 1000 + n as i64, "payload": payload})
        .to_string()
    };
    let lines = |from: usize, to: usize| -> String {
        (from..=to).map(|n| sent(n) + "\n").collect::<String>()
    };
    std::fs::write(dir.path().join("first.ndjson"), lines(1, 3)).expect("events");
    std::fs::write(dir.path().join("more.ndjson"), lines(4, 4)).expect("events");
    // The conversations of u2's view of plugin `p` that name one of c1..c4.
    let unread = |run: &Projector, p: &str| -> Vec<String> {
        let (status, view) = run.get(&format!("/v1/views/{p}/u2:s1?mode=projection"));
        assert_eq!(status, 200, "{view}");
        let text = view["answer"].to_string();
        (1..=4)
            .map(|n| format!("c{n}"))
            .filter(|c| text.contains(&format!("\"{c}\"")))
            .collect()
    };

    // Whether plugin `p`'s view of u2 names conversation `c` yet.
    let holds = |run: &Projector, p: &str, c: &str| {
        let (status, view) = run.get(&format!("/v1/views/{p}/u2:s1?mode=projection"));
        status == 200 && view["answer"].to_string().contains(&format!("\"{c}\""))
    };

    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "first.ndjson"]).start();
    projector_tests::eventually("c3 applied", Duration::from_secs(30), || {
        holds(&run, "inbox-unread", "c3")
    });
    let wasm = projector_tests::plugin_wasm("inbox-unread");
    let wasm = wasm.to_str().expect("path");
    let o = projector(
        dir.path(),
        &[
            "plugin",
            "deploy",
            wasm,
            "--name",
            "capped",
            "--replace",
            "--setting",
            "max_unread=1",
            "--api",
            &run.base,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(unread(&run, "inbox-unread"), ["c1", "c2", "c3"]);
    assert_eq!(
        unread(&run, "capped"),
        ["c3"],
        "max_unread = 1: the newest only"
    );
    let (_, list) = run.get("/v1/admin/plugins");
    let capped = list["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["plugin"] == "capped"))
        .expect("capped in the registry");
    assert_eq!(capped["versions"][0]["settings"]["max_unread"], 1, "{list}");
    run.stop();

    // After a restart the deployed version runs with its setting still.
    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "more.ndjson"]).start();
    // The ingested event is applied after the API announces itself.
    projector_tests::eventually("c4 applied", Duration::from_secs(30), || {
        holds(&run, "inbox-unread", "c4") && holds(&run, "capped", "c4")
    });
    assert_eq!(unread(&run, "inbox-unread"), ["c1", "c2", "c3", "c4"]);
    assert_eq!(unread(&run, "capped"), ["c4"]);
    run.stop();
}

/// A misspelled setting is refused, naming the plugin, the setting and
/// the one meant: at deploy (`--setting`, the plugin not added) and in the
/// config at start (the runtime does not start).
#[test]
fn a_misspelled_setting_is_refused_at_deploy_and_at_start() {
    const MEANT: &str = r#"unknown setting "max_unreed" (did you mean "max_unread"?); the plugin accepts max_unread, source"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!("{INBOX}[plugins.capped]\npopulation = \"eager\"\n");
    write_config(dir.path(), &["inbox-unread"], &config);
    let run = Launch::in_dir(dir.path(), &["run"]).start();
    let wasm = projector_tests::plugin_wasm("inbox-unread");
    let wasm = wasm.to_str().expect("path");
    let deploy = |setting: &str| {
        projector(
            dir.path(),
            &[
                "plugin",
                "deploy",
                wasm,
                "--name",
                "capped",
                "--replace",
                "--setting",
                setting,
                "--api",
                &run.base,
            ],
        )
    };
    let o = deploy("max_unreed=5");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("plugin capped:"), "{err}");
    assert!(err.contains(MEANT), "{err}");
    let (status, _) = run.get("/v1/views/capped/u1:s1");
    assert_eq!(status, 404, "capped was not added");
    assert!(deploy("max_unread=5").status.success());
    run.stop();

    // The same in the config: the runtime does not start.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!("{INBOX}settings = {{ max_unreed = 5 }}\n");
    write_config(dir.path(), &["inbox-unread"], &config);
    let o = projector(dir.path(), &["run", "--exit-when-idle"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("plugin inbox-unread:"), "{err}");
    assert!(err.contains(MEANT), "{err}");
}

/// Deploying the version a plugin runs with other settings is a
/// reconfigure: refused without `--replace` (naming both settings), then
/// done with it, noted in the history; the same settings again change
/// nothing.
#[test]
fn plugin_deploy_of_the_running_version_with_new_settings_reconfigures_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["inbox-unread"], INBOX);
    let sent = |n: usize| {
        let payload = serde_json::json!({"site_id": "s1", "conversation_id": format!("c{n}"),
            "sender_id": "u1", "participants": ["u1", "u2"]});
        serde_json::json!({"id": format!("e{n}"), "type": "MessageSent", "source": "inbox",
            "key": "s1", "version": n, "time": 1000 + n as i64, "payload": payload})
        .to_string()
            + "\n"
    };
    std::fs::write(dir.path().join("first.ndjson"), sent(1) + &sent(2)).expect("events");
    std::fs::write(dir.path().join("more.ndjson"), sent(3)).expect("events");
    let unread = |run: &Projector| -> serde_json::Value {
        let (status, view) = run.get("/v1/views/inbox-unread/u2:s1?mode=projection");
        assert_eq!(status, 200, "{view}");
        view["answer"]["count"].clone()
    };
    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "first.ndjson"]).start();
    projector_tests::eventually("c2 applied", Duration::from_secs(30), || {
        run.get("/v1/views/inbox-unread/u2:s1?mode=projection").0 == 200 && unread(&run) == 2
    });
    let wasm = projector_tests::plugin_wasm("inbox-unread");
    let wasm = wasm.to_str().expect("path");
    let deploy = |extra: &[&str]| {
        let mut args = vec!["plugin", "deploy", wasm, "--name", "inbox-unread"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--api", &run.base]);
        projector(dir.path(), &args)
    };

    // Without --replace: refused, naming the settings it has and would have.
    let o = deploy(&["--setting", "max_unread=1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("already runs this version"), "{err}");
    assert!(
        err.contains(r#"would change from {} to {"max_unread":1}"#),
        "{err}"
    );
    assert!(err.contains("--replace"), "{err}");

    // With it: the same version, now with its new settings.
    let o = deploy(&["--setting", "max_unread=1", "--replace"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(done["changed"], true, "{done}");
    assert_eq!(done["replaced"], done["id"], "{done}");
    let (_, list) = run.get("/v1/admin/plugins");
    let entry = list["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["plugin"] == "inbox-unread"))
        .expect("inbox-unread in the registry")
        .clone();
    assert_eq!(entry["versions"][0]["settings"]["max_unread"], 1, "{entry}");
    let actions: Vec<&str> = entry["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["action"].as_str())
        .collect();
    assert_eq!(actions, ["deploy", "reconfigure"], "{entry}");

    // The same settings again: unchanged, with or without --replace.
    for extra in [
        &["--setting", "max_unread=1"][..],
        &["--setting", "max_unread=1", "--replace"],
    ] {
        let o = deploy(extra);
        assert!(o.status.success(), "{}", stderr(&o));
        let again: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(again["changed"], false, "{again}");
    }
    run.stop();

    // The new settings hold after a restart: the next message leaves one.
    let run = Launch::in_dir(dir.path(), &["run", "--ingest", "more.ndjson"]).start();
    projector_tests::eventually("c3 applied", Duration::from_secs(30), || {
        run.get("/v1/views/inbox-unread/u2:s1?mode=projection").1["answer"]
            .to_string()
            .contains("\"c3\"")
    });
    assert_eq!(unread(&run), 1, "max_unread = 1");
    run.stop();
}

/// `projector get --as-of`: the view as it was then, from the plugin's
/// history on the store; exit 1 before it existed.
#[test]
fn get_as_of_reads_a_view_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &["inbox-unread"],
        &format!("{INBOX}history = {{ versions = 10, ms = 604800000 }}\n"),
    );
    let before = projector_core::now_ms() - 1;
    let events = inbox_events(InboxShape {
        sites: 5,
        users: 20,
        events: 200,
        seed: 4,
    });
    write_ndjson(&dir.path().join("events.ndjson"), &events);
    let o = projector(
        dir.path(),
        &["run", "--ingest", "events.ndjson", "--exit-when-idle"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let now = (projector_core::now_ms() + 1000).to_string();
    let o = projector(dir.path(), &["get", "inbox-unread", "u0:s0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let current: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let o = projector(
        dir.path(),
        &["get", "inbox-unread", "u0:s0", "--as-of", &now],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let past: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(past["answer"], current["view"], "as of now: the view now");
    assert!(
        past["version"].as_str().is_some_and(|v| v.len() == 16),
        "{past}"
    );
    let o = projector(
        dir.path(),
        &[
            "get",
            "inbox-unread",
            "u0:s0",
            "--as-of",
            &before.to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("then"), "{}", stderr(&o));
}
