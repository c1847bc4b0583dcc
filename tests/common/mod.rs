//! Shared helpers of the end-to-end tests and benchmarks: where the built
//! plugins are, a generator of realistic inbox traffic, an independent
//! model of what the inbox views must hold after a stream of events, and
//! the checks of a runtime's views against it.
//!
//! # Layout
//! - [`api`]: the one HTTP client of a runtime's API.
//! - [`served`]: a runtime in the test's own process, serving its API.
//! - [`process`]: `projector` in its own process (`run`, `kafka-dev`),
//!   awaited, signalled, killed on drop.
//! - [`kafka`]: the mock cluster, a producer and readers of topics.
//! - [`counting`], [`hostile`]: test plugins' traffic and counts.
//! - [`legacy`], [`services`]: sources of truth and enrichment services.
//! - [`unread`]: the inbox-unread engine and Kafka source the benches set up.
//! - `load.rs` (not a module here: it needs dev-dependencies): the benches'
//!   fixed-rate HTTP load generator, included by `#[path]`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built plugin component: `target/plugins/<name>.wasm` (reference
/// plugins) or `target/test-plugins/<name>.wasm` (fixtures).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let file = format!("{name}.wasm");
    let found = ["target/plugins", "target/test-plugins", "target/ts-plugins"]
        .iter()
        .map(|d| root().join(d).join(&file))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{file} is missing: the suite runs with ./scripts/test.sh, which builds the plugins first (or run ./scripts/build-plugins.sh)"))
}

/// The `projector` binary next to the running test (`PROJECTOR_BIN`
/// names another, e.g. an earlier build to measure against).
pub fn projector_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROJECTOR_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("projector");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p projector` first",
        bin.display()
    );
    bin
}

/// A plugins directory holding copies of the named built plugins.
pub fn plugins_dir(into: &Path, names: &[&str]) -> PathBuf {
    let dir = into.join("plugins");
    std::fs::create_dir_all(&dir).expect("mkdir plugins");
    for n in names {
        std::fs::copy(plugin_wasm(n), dir.join(format!("{n}.wasm"))).expect("copy plugin");
    }
    dir
}

/// A benchmark setting from the environment variable `name`, or `default`
/// when it is unset or not a number.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Shape of generated inbox traffic.
#[derive(Debug, Clone, Copy)]
pub struct InboxShape {
    pub sites: u32,
    pub users: u32,
    pub events: usize,
    pub seed: u64,
}

impl Default for InboxShape {
    fn default() -> Self {
        InboxShape {
            sites: 10_000,
            users: 100_000,
            events: 1_000_000,
            seed: 7,
        }
    }
}

/// Skewed pick in 0..n: low ids are much busier (roughly Zipf-like).
fn skewed(rng: &mut StdRng, n: u32) -> u32 {
    let x: f64 = rng.gen();
    ((x * x * x) * f64::from(n)) as u32 % n.max(1)
}

/// Inbox events in the own envelope, one JSON line each, keyed by site so
/// one site's events stay in order. Versions increase strictly over the
/// stream (a CDC position), and times with them.
pub fn inbox_events(shape: InboxShape) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut convs: BTreeMap<u32, Vec<(String, Vec<String>)>> = BTreeMap::new();
    let mut out = Vec::with_capacity(shape.events);
    let base_ms = 1_767_225_600_000i64;
    for seq in 0..shape.events as u64 {
        let site = skewed(&mut rng, shape.sites);
        let owner = format!("u{}", site % shape.users);
        let site_id = format!("s{site}");
        let list = convs.entry(site).or_default();
        let roll: u32 = rng.gen_range(0..100);
        let (ty, payload) = if list.is_empty() || roll < 55 {
            // A new or existing conversation gets a message.
            let (conv, participants) = if list.is_empty() || rng.gen_bool(0.3) {
                let visitor = format!("u{}", skewed(&mut rng, shape.users));
                let conv = format!("c{site}-{}", list.len());
                let mut participants = vec![owner.clone()];
                if visitor != owner {
                    participants.push(visitor);
                }
                list.push((conv.clone(), participants.clone()));
                (conv, participants)
            } else {
                list[rng.gen_range(0..list.len())].clone()
            };
            let sender = participants[rng.gen_range(0..participants.len())].clone();
            (
                "MessageSent",
                json!({"site_id": site_id, "conversation_id": conv, "sender_id": sender, "participants": participants}),
            )
        } else {
            let i = rng.gen_range(0..list.len());
            let (conv, participants) = list[i].clone();
            let user = participants[rng.gen_range(0..participants.len())].clone();
            match roll {
                55..=79 => (
                    "ConversationRead",
                    json!({"site_id": site_id, "conversation_id": conv, "user_id": user}),
                ),
                80..=86 => (
                    "ConversationArchived",
                    json!({"site_id": site_id, "conversation_id": conv, "participants": participants}),
                ),
                87..=91 => (
                    "ConversationUnarchived",
                    json!({"site_id": site_id, "conversation_id": conv, "participants": participants}),
                ),
                92..=93 => {
                    list.swap_remove(i);
                    (
                        "ConversationDeleted",
                        json!({"site_id": site_id, "conversation_id": conv, "participants": participants}),
                    )
                }
                94..=96 => {
                    let newcomer = format!("u{}", skewed(&mut rng, shape.users));
                    if !participants.contains(&newcomer) {
                        list[i].1.push(newcomer.clone());
                    }
                    let unread = rng.gen_bool(0.5);
                    (
                        "ParticipantAdded",
                        json!({"site_id": site_id, "conversation_id": conv, "user_id": newcomer, "unread": unread}),
                    )
                }
                _ => {
                    if participants.len() > 1 && user != owner {
                        list[i].1.retain(|p| *p != user);
                    }
                    (
                        "ParticipantRemoved",
                        json!({"site_id": site_id, "conversation_id": conv, "user_id": user}),
                    )
                }
            }
        };
        let line = json!({
            "id": format!("e{seq}"), "type": ty, "source": "inbox", "key": site_id,
            "version": seq + 1, "time": base_ms + seq as i64 * 10, "payload": payload,
        });
        out.push(line.to_string());
    }
    out
}

/// One unread conversation: id, last message time, archived.
pub type Unread = BTreeMap<String, (i64, bool)>;

/// Deliveries (event, view key) the inbox makes of `events`, counted from
/// the payloads alone.
pub fn inbox_deliveries(events: &[String]) -> u64 {
    events
        .iter()
        .map(|line| {
            let e: serde_json::Value = serde_json::from_str(line).expect("json");
            let p = &e["payload"];
            let users: std::collections::BTreeSet<&str> = match e["type"].as_str().expect("type") {
                "MessageSent" => p["participants"]
                    .as_array()
                    .expect("participants")
                    .iter()
                    .filter_map(|u| u.as_str())
                    .chain(p["sender_id"].as_str())
                    .collect(),
                "ConversationRead" | "ParticipantAdded" | "ParticipantRemoved" => {
                    p["user_id"].as_str().into_iter().collect()
                }
                _ => p["participants"]
                    .as_array()
                    .expect("participants")
                    .iter()
                    .filter_map(|u| u.as_str())
                    .collect(),
            };
            users.len() as u64
        })
        .sum()
}

/// The inbox views after `events` under eager population, computed from
/// the events alone (no plugin, no rules crate): key → unread entries.
/// Every key ever touched is present, possibly empty. Unbounded: use it
/// with views smaller than the plugin's bound.
pub fn fold_inbox(events: &[String]) -> BTreeMap<String, Unread> {
    let mut views: BTreeMap<String, Unread> = BTreeMap::new();
    for line in events {
        let e: serde_json::Value = serde_json::from_str(line).expect("generated JSON");
        let p = &e["payload"];
        let time = e["time"].as_i64().expect("time");
        let site = p["site_id"].as_str().expect("site");
        let conv = p["conversation_id"].as_str().expect("conv").to_string();
        let key = |user: &serde_json::Value| format!("{}:{site}", user.as_str().expect("user"));
        let all = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
        match e["type"].as_str().expect("type") {
            "MessageSent" => {
                let sender = &p["sender_id"];
                views.entry(key(sender)).or_default().remove(&conv);
                for u in all(&p["participants"]).iter().filter(|u| *u != sender) {
                    let v = views.entry(key(u)).or_default();
                    let t = v.get(&conv).map_or(time, |(t, _)| (*t).max(time));
                    v.insert(conv.clone(), (t, false));
                }
            }
            "ConversationRead" | "ParticipantRemoved" => {
                views.entry(key(&p["user_id"])).or_default().remove(&conv);
            }
            "ParticipantAdded" => {
                let v = views.entry(key(&p["user_id"])).or_default();
                if p["unread"].as_bool() == Some(true) {
                    let t = v.get(&conv).map_or(time, |(t, _)| (*t).max(time));
                    v.insert(conv, (t, false));
                }
            }
            ty @ ("ConversationArchived" | "ConversationUnarchived" | "ConversationDeleted") => {
                for u in all(&p["participants"]) {
                    let v = views.entry(key(&u)).or_default();
                    match ty {
                        "ConversationDeleted" => {
                            v.remove(&conv);
                        }
                        _ => {
                            if let Some(entry) = v.get_mut(&conv) {
                                entry.1 = ty == "ConversationArchived";
                            }
                        }
                    }
                }
            }
            other => panic!("generator made an unknown type {other}"),
        }
    }
    views
}

/// Assert that every inbox view of `engine` is Valid and renders as the
/// fold of the events (`model`: their fold).
pub fn assert_inbox_views(
    engine: &projector_core::engine::Engine,
    model: &BTreeMap<String, Unread>,
) {
    for (key, unread) in model {
        let v = engine
            .read("inbox-unread", key, 0)
            .expect("read")
            .unwrap_or_else(|| panic!("no view for {key}"));
        assert_eq!(
            v.status,
            projector_guest::rules::Status::Valid,
            "view {key}"
        );
        let body = v.json().expect("a valid view renders");
        assert_eq!(rendered(&body), shown(unread), "view {key}");
    }
}

/// Assert that `engine` stores one inbox view per key of `model` (the
/// fold of the events), no more, each as [`assert_inbox_views`] checks.
pub fn assert_inbox_store(
    engine: &projector_core::engine::Engine,
    model: &BTreeMap<String, Unread>,
) {
    let stored = engine
        .store()
        .views("inbox-unread")
        .try_fold(0, |n, view| view.map(|_| n + 1))
        .expect("the stored views read");
    assert_eq!(stored, model.len(), "one view per key the events touched");
    assert_inbox_views(engine, model);
}

/// What a rendered inbox view shows: (id, last_message_at), newest first
/// with ties by id descending, as the plugin orders them.
pub fn shown(unread: &Unread) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = unread
        .iter()
        .filter(|(_, (_, a))| !a)
        .map(|(id, (t, _))| (id.clone(), *t))
        .collect();
    v.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    v
}

/// The (id, last_message_at) list of a rendered inbox answer.
pub fn rendered(view: &serde_json::Value) -> Vec<(String, i64)> {
    view["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("id").to_string(),
                c["last_message_at"].as_i64().expect("ts"),
            )
        })
        .collect()
}

/// An embedded log of `partitions` partitions in `store`, holding
/// `events` (appended in chunks, as an ingest would).
pub fn filled_log(
    store: &projector_core::store::Store,
    partitions: u32,
    events: &[String],
) -> anyhow::Result<projector_sources::log::EmbeddedLog> {
    let log = projector_sources::log::EmbeddedLog::open(
        store,
        partitions,
        projector_core::envelope::Format::Auto,
    )?;
    for chunk in events.chunks(20_000) {
        log.append(chunk)?;
    }
    Ok(log)
}

/// An inbox stream of `shape` written to `dir/events.ndjson`: the events
/// and the file.
pub fn inbox_file(dir: &Path, shape: InboxShape) -> (Vec<String>, PathBuf) {
    let events = inbox_events(shape);
    let file = dir.join("events.ndjson");
    write_ndjson(&file, &events);
    (events, file)
}

/// Write `lines` as an NDJSON file.
pub fn write_ndjson(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write ndjson");
}

/// Where a test's runtime keeps its store and finds its plugins, relative
/// to its directory: the head of every test config.
const LAYOUT: &str = "data_dir = \"data\"\nplugins_dir = \"plugins\"\n";

/// A `projector.toml` in `dir` for a `projector` process: the named
/// built plugins in `plugins/`, the store in `data/`, and `extra` TOML
/// after; its path.
pub fn write_config(dir: &Path, plugins: &[&str], extra: &str) -> PathBuf {
    plugins_dir(dir, plugins);
    let config = dir.join("projector.toml");
    std::fs::write(&config, format!("{LAYOUT}{extra}")).expect("write projector.toml");
    config
}

/// A runtime on a fresh store in `dir`, with the named built plugins and
/// `extra` TOML appended to the config (e.g. `[plugins.x]` tables). The
/// tests share one compile cache (`target/test-compile-cache`), so each
/// plugin is compiled once per build, not once per test.
pub fn open_app(dir: &Path, plugins: &[&str], extra: &str) -> projector::app::App {
    plugins_dir(dir, plugins);
    let text = format!("{LAYOUT}{extra}");
    let mut config =
        projector::config::Config::parse(&text, "test.toml", dir).expect("test config parses");
    if !extra.contains("compile_cache_dir") {
        config.engine.compile_cache_dir = Some(root().join("target/test-compile-cache"));
    }
    projector::app::App::open(config).expect("runtime opens")
}

/// A test plugin's component (`target/plugins` or `target/test-plugins`):
/// its bytes and its version id.
pub fn component(name: &str) -> (Vec<u8>, String) {
    let bytes = std::fs::read(plugin_wasm(name)).unwrap_or_else(|e| panic!("{name}.wasm: {e}"));
    let id = projector_deploy::content_id(&bytes);
    (bytes, id)
}

/// Every dead letter of `app`'s store, after a commit.
pub fn dead_letters(app: &projector::app::App) -> Vec<projector_core::store::DeadLetter> {
    app.engine.commit().expect("commit");
    app.engine
        .store()
        .dead_letters()
        .collect::<Result<_, _>>()
        .expect("dead letters")
}

/// One event in the own envelope, as bytes for a record.
pub fn envelope(
    id: &str,
    ty: &str,
    key: &str,
    version: u64,
    time_ms: i64,
    payload: serde_json::Value,
) -> Vec<u8> {
    json!({"id": id, "type": ty, "source": "inbox", "key": key, "version": version, "time": time_ms, "payload": payload})
        .to_string()
        .into_bytes()
}

/// Records with offsets from `first` on, in partition 0.
pub fn records(first: u64, values: Vec<Vec<u8>>) -> Vec<projector_core::Record> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| projector_core::Record::wire(0, first + i as u64, None, value))
        .collect()
}

/// Wait until `done` holds, for at most `within`; panics naming `what`.
pub fn eventually(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A command's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The HTTP method an OpenAPI operation names (`get`, `post`...), if one.
pub fn http_method(name: &str) -> Option<reqwest::Method> {
    Some(match name {
        "get" => reqwest::Method::GET,
        "post" => reqwest::Method::POST,
        "put" => reqwest::Method::PUT,
        "delete" => reqwest::Method::DELETE,
        _ => return None,
    })
}

/// Assert that the `/metrics` of `api` exposes every metric
/// `runtime/api/src/metrics.rs` documents on a line starting `marker`
/// (``"//! | `"``, or ``"//! | (kafka) `"`` for the Kafka ones), and that
/// at least `at_least` are documented; the `/metrics` text.
pub fn assert_documented_metrics(api: &Api, marker: &str, at_least: usize) -> String {
    let doc =
        std::fs::read_to_string(root().join("runtime/api/src/metrics.rs")).expect("metrics.rs");
    let names: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix(marker))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(names.len() >= at_least, "{names:?}");
    let text = api.get_text("/metrics");
    for name in names {
        // Prometheus text names a counter family as its `_total` samples.
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {name} ")) || text.contains(&format!("# TYPE {base} ")),
            "{name} is documented but not exposed:\n{text}"
        );
    }
    text
}

/// The plugin names of a `/v1/plugins` answer, sorted.
pub fn plugin_names_of(answer: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = answer["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["plugin"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

pub mod api;
pub mod broker;
pub mod counting;
pub mod hostile;
pub mod instances;
pub mod kafka;
pub mod legacy;
pub mod process;
pub mod served;
pub mod services;
pub mod unread;

pub use api::Api;
pub use process::{Launch, Projector};
pub use served::Served;

/// What the process has used so far: minor page faults, user and kernel
/// CPU seconds (from `/proc/self/stat`), for a phase's share when
/// subtracted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Minor page faults (fresh pages mapped in, e.g. zeroed for the allocator).
    pub minor_faults: u64,
    /// CPU seconds in user space.
    pub user_s: f64,
    /// CPU seconds in the kernel.
    pub system_s: f64,
}

impl Usage {
    /// The process's usage now (zero where `/proc` does not tell).
    pub fn now() -> Usage {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The fields after the command's closing parenthesis, from `state` (3rd) on.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tick = clock_ticks() as f64;
        Usage {
            minor_faults: field(10),
            user_s: field(14) as f64 / tick,
            system_s: field(15) as f64 / tick,
        }
    }

    /// What was used since `earlier`, as one line: page faults, CPU
    /// seconds and the kernel's share of them.
    pub fn since(&self, earlier: &Usage) -> String {
        let (user, system) = (
            self.user_s - earlier.user_s,
            self.system_s - earlier.system_s,
        );
        format!(
            "{} page faults, CPU {:.2} s of which kernel {:.0} %",
            self.minor_faults.saturating_sub(earlier.minor_faults),
            user + system,
            100.0 * system / (user + system).max(1e-9)
        )
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it does not answer).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
