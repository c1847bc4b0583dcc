//! Several `projector run` instances on Kafka, as separate processes on
//! loopback, for the tests of instances and rebalances: where they run,
//! how each is started, read and asked for its routing table.

use crate::{plugins_dir, rendered, Api, Launch, Projector};
use std::path::Path;
use std::time::Duration;

/// Partitions of the source topic.
pub const PARTITIONS: u32 = 12;

/// Where the instances run: the broker, the source topic, the group.
pub struct Kafka {
    /// Brokers.
    pub bootstrap: String,
    /// The source topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
}

impl Kafka {
    /// Produce `events` to the source topic, each to its key's partition.
    pub fn produce(&self, events: &[String]) {
        crate::kafka::produce(&self.bootstrap, &self.topic, PARTITIONS, events);
    }
}

/// A `projector run` instance: its process, and its API with a
/// timeout of 20 s a request.
pub struct Instance {
    /// Its process.
    pub run: Projector,
    /// Its API.
    pub api: Api,
}

impl Instance {
    /// Start instance `n` in `dir` (its own store `data-n`).
    pub fn start(dir: &Path, kafka: &Kafka, n: usize) -> Instance {
        Instance::start_with(dir, kafka, n, "")
    }

    /// Start instance `n` with more `[source.kafka]` settings.
    pub fn start_with(dir: &Path, kafka: &Kafka, n: usize, more: &str) -> Instance {
        Instance::start_full(dir, kafka, n, more, "")
    }

    /// Start instance `n` with more `[source.kafka]` settings and more
    /// `[plugins.inbox-unread]` ones.
    pub fn start_full(dir: &Path, kafka: &Kafka, n: usize, more: &str, plugin: &str) -> Instance {
        let Kafka {
            bootstrap,
            topic,
            group,
        } = kafka;
        let config = dir.join(format!("instance-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data-{n}\"\nplugins_dir = \"plugins\"\n\
                 [engine]\ncommit_interval_ms = 200\ncompile_cache_dir = \"compiled\"\nwatch_plugins = false\n\
                 [plugins.inbox-unread]\npopulation = \"eager\"\nsettings = {{ max_unread = 1000000 }}\n\
                 partition_by = {{ separator = \":\", field = 1 }}\n{plugin}\n\
                 [source.kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\n\
                 changelog = true\npartitioner = \"fnv1a\"\n{more}\n\
                 properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n"
            ),
        )
        .expect("config");
        let run = Launch::run(&config)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .within(Duration::from_secs(120))
            .start();
        let api = Api::with_timeout(run.base.clone(), Duration::from_secs(20));
        Instance { run, api }
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        self.run.sigkill();
    }

    /// A counter or gauge of its `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.api.try_get_text("/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with("_total "))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl std::ops::Deref for Instance {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The rows of an inbox answer.
pub type Rows = Vec<(String, i64)>;

/// What an instance answers for `key`: HTTP status, the view's rows when
/// 200, and the instance that answered when it was forwarded.
pub fn read(api: &Api, key: &str) -> (u16, Option<Rows>, Option<String>) {
    let Ok(a) = api.try_get(&format!("/v1/views/inbox-unread/{key}")) else {
        return (0, None, None);
    };
    let by = a
        .headers
        .get("x-projector-instance")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rows = (a.status == 200).then(|| rendered(&a.body["answer"]));
    (a.status, rows, by)
}

/// `GET /v1/admin/instances` of an instance.
pub fn table(api: &Api) -> serde_json::Value {
    api.try_get("/v1/admin/instances")
        .ok()
        .map(|a| a.body)
        .filter(serde_json::Value::is_object)
        .expect("instances")
}

/// The partition of an inbox view `user:site`: its site's.
pub fn partition_of(key: &str) -> u32 {
    let site = key.split(':').nth(1).expect("user:site");
    projector_sources::log::partition_of(site, PARTITIONS)
}

/// `projector kafka-dev` with the inbox topic and its changelog, in
/// `dir` (with the inbox plugin); the process and where the instances run.
pub fn kafka_dev(dir: &Path) -> (Projector, Kafka) {
    plugins_dir(dir, &["inbox-unread"]);
    let topics = format!("inbox:{PARTITIONS}");
    let broker = Projector::kafka_dev(
        dir,
        &[
            "--topics",
            &topics,
            "--group",
            "views",
            "--changelog",
            "inbox-unread",
        ],
    );
    let kafka = Kafka {
        bootstrap: broker.announced().to_string(),
        topic: "inbox".into(),
        group: "views".into(),
    };
    (broker, kafka)
}

/// Run `scenario` on the Apache Kafka broker named by
/// `PROJECTOR_KAFKA_BOOTSTRAP` (skipped when unset; `test` names the
/// test in what it says): a fresh source topic created by the test, the
/// other topics by projector, all deleted once the scenario passed.
pub fn on_apache_kafka(test: &str, scenario: impl FnOnce(&Path, &Kafka)) {
    use crate::broker::{broker, create_topic, delete_topics, fresh, topics_of};
    let Some(bootstrap) = broker(test) else {
        return;
    };
    let kafka = Kafka {
        bootstrap,
        topic: fresh("inbox"),
        group: fresh("views"),
    };
    create_topic(&kafka.bootstrap, &kafka.topic, PARTITIONS as i32);
    let dir = tempfile::tempdir().expect("tempdir");
    plugins_dir(dir.path(), &["inbox-unread"]);
    scenario(dir.path(), &kafka);
    let topics = topics_of(
        &kafka.bootstrap,
        &kafka.group,
        &kafka.topic,
        &["inbox-unread"],
    );
    delete_topics(
        &kafka.bootstrap,
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}
