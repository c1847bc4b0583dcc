//! The real Apache Kafka broker of the broker tests: the one
//! `scripts/kafka.sh start` runs, named by `PROJECTOR_KAFKA_BOOTSTRAP`
//! (`scripts/test.sh` starts it and sets the variable). Here: the skip
//! when the variable is unset, names unique to a run, the admin API
//! (topics created, deleted, described, reconfigured), the records a
//! topic holds as the broker keeps them (compaction leaves gaps), a
//! store's views as a changelog carries them, and the script's `stop` and
//! `start` for a test that restarts the broker.

use crate::root;
use projector_core::engine::Engine;
use projector_core::store::changelog_value;
use projector_sources::kafka::{KafkaConfig, Partitioner};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The broker's address, or `None` (said on stderr, past the test
/// harness's capture, as `{test}: skipped: ...`) when the variable is
/// unset.
pub fn broker(test: &str) -> Option<String> {
    match std::env::var("PROJECTOR_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b.trim().to_string()),
        _ => {
            skip(
                test,
                "PROJECTOR_KAFKA_BOOTSTRAP is unset \
                 (`scripts/kafka.sh start` runs a broker and prints its address)",
            );
            None
        }
    }
}

/// Say on stderr that `test` is skipped, and why.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// `name` made unique to this run, and within it to this call (tests of
/// one binary run at once, and may ask within the same millisecond).
pub fn fresh(name: &str) -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{ms}-{call}", std::process::id())
}

/// A consumer of `topic` in `group` with changelogs, its views placed by
/// the rule [`crate::kafka::produce`] routes events by, quick to notice
/// members leave.
pub fn changelog_config(bootstrap: &str, group: &str, topic: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap, group, &[topic]);
    config.changelog = true;
    config.partitioner = Partitioner::Fnv1a;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config.properties.insert(k.into(), v.into());
    }
    config
}

/// `topic` and the topics projector creates for it in `group` with
/// changelogs of `plugins`: its retry and dead-letter topics, a changelog
/// per plugin, and the members topic. What a passing test deletes.
pub fn topics_of(bootstrap: &str, group: &str, topic: &str, plugins: &[&str]) -> Vec<String> {
    let config = changelog_config(bootstrap, group, topic);
    let mut topics = vec![
        topic.to_string(),
        format!("{topic}.{group}.retry"),
        format!("{topic}.{group}.dlq"),
    ];
    topics.extend(plugins.iter().map(|p| config.changelog_topic(p)));
    topics.push(config.members_topic());
    topics
}

/// Every view of `plugin` in `engine`'s store, by key, in its changelog
/// form: what a restore puts back, byte for byte.
pub fn changelog_views(engine: &Engine, plugin: &str) -> BTreeMap<String, Vec<u8>> {
    let projection = engine.projection(plugin).expect("a loaded plugin");
    engine
        .store()
        .views(projection.ns())
        .map(|v| {
            let (key, record) = v.expect("a view");
            (key, changelog_value(&record))
        })
        .collect()
}

/// An admin client of the broker at `bootstrap`.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)))
}

/// Create `topic` with `partitions` partitions.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in block_on(admin(bootstrap).create_topics(&[new], &options())).expect("create topics") {
        r.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
    }
}

/// Delete `topics` (a passing test leaves the broker as it found it).
pub fn delete_topics(bootstrap: &str, topics: &[&str]) {
    for r in block_on(admin(bootstrap).delete_topics(topics, &options())).expect("delete topics") {
        r.unwrap_or_else(|(name, code)| panic!("deleting {name}: {code}"));
    }
}

/// Every config of `topic` that has a value, as the broker describes it.
pub fn topic_config(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let configs =
        block_on(admin(bootstrap).describe_configs(&[ResourceSpecifier::Topic(topic)], &options()))
            .expect("describe configs");
    let described = configs
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| panic!("{topic}: not described (does the topic exist?)"));
    described
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// Set `topic`'s configs to `set`. The admin API's AlterConfigs replaces
/// every config set on the topic, so `set` names all that should stay
/// (`cleanup.policy` of a compacted topic too).
pub fn set_topic_config(bootstrap: &str, topic: &str, set: &[(&str, &str)]) {
    let alter = set.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |a, (k, v)| a.set(k, v),
    );
    for r in block_on(admin(bootstrap).alter_configs(&[alter], &options())).expect("alter configs")
    {
        r.unwrap_or_else(|(what, code)| panic!("altering {what:?}: {code}"));
    }
}

/// What the broker says of a topic: partitions, and `cleanup.policy`.
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    pub partitions: usize,
    pub cleanup_policy: String,
}

/// `topic`'s partitions and `cleanup.policy`.
pub fn describe(bootstrap: &str, topic: &str) -> Described {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    let cleanup_policy = topic_config(bootstrap, topic)
        .remove("cleanup.policy")
        .unwrap_or_else(|| panic!("{topic}: no cleanup.policy"));
    Described {
        partitions,
        cleanup_policy,
    }
}

/// One record a topic holds, its key and value as bytes.
#[derive(Debug, Clone)]
pub struct Held {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every record `topic`'s partitions hold now, each partition read from
/// its start to its end offset, in offset order. Unlike
/// [`crate::kafka::read_all`], which counts on `end - start` records, it
/// stops at the end offset: a compacted partition holds fewer records
/// than its offsets span.
pub fn held(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Held> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "held")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    // Per partition, the offset the next record must reach for it to be
    // read to its end.
    let mut to: BTreeMap<i32, i64> = BTreeMap::new();
    for p in 0..partitions {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            to.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    while to
        .iter()
        .any(|(p, end)| next.get(p).is_none_or(|n| n < end))
    {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end within 30 s: at {next:?}, ends {to:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        let p = m.partition();
        if to.get(&p).is_none_or(|end| m.offset() >= *end) {
            continue;
        }
        next.insert(p, m.offset() + 1);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Held {
            partition: p,
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// An event of `event_type` for `key`.
pub fn event(id: &str, event_type: &str, key: &str) -> String {
    json!({"id": id, "type": event_type, "source": "test", "key": key,
           "version": 1, "time": 1_000, "payload": {}})
    .to_string()
}

/// Wait until `done`, or fail naming `what`.
pub fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `scripts/kafka.sh <command>`: its stdout, trimmed; fails the test
/// with its stderr when it fails.
fn kafka_sh(command: &str) -> String {
    let out = Command::new(root().join("scripts/kafka.sh"))
        .arg(command)
        .output()
        .expect("scripts/kafka.sh");
    assert!(
        out.status.success(),
        "scripts/kafka.sh {command}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the broker at `bootstrap` is the one `scripts/kafka.sh` runs
/// (and can stop and start); a broker of one's own is not.
pub fn scripted(bootstrap: &str) -> bool {
    Command::new(root().join("scripts/kafka.sh"))
        .arg("status")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!("running at {bootstrap} "))
        })
}

/// The broker stopped by `scripts/kafka.sh stop`. [`Stopped::start`]
/// starts it again (same address, same data); a test that fails before
/// that starts it on drop, so that the tests after it find it running.
pub struct Stopped {
    bootstrap: String,
    started: bool,
}

impl Stopped {
    /// Stop the broker at `bootstrap` (SIGTERM: a controlled shutdown).
    pub fn stop(bootstrap: &str) -> Stopped {
        let stopped = Stopped {
            bootstrap: bootstrap.to_string(),
            started: false,
        };
        assert_eq!(kafka_sh("stop"), "kafka: stopped");
        stopped
    }

    /// Start it again, and check that it listens where it did.
    pub fn start(mut self) {
        self.started = true;
        assert_eq!(kafka_sh("start"), self.bootstrap, "the broker moved");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            let _ = Command::new(root().join("scripts/kafka.sh"))
                .arg("start")
                .status();
        }
    }
}
