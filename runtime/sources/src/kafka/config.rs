//! `[source.kafka]`, topic names, and the headers of retry and
//! dead-letter records.

use rdkafka::config::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[source.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to connect to, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Consumer group; also names the retry and dead-letter topics.
    pub group_id: String,
    /// Topics consumed (at least one).
    pub topics: Vec<String>,
    /// Records waiting per partition before it is paused.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_records: usize,
    /// Passed to librdkafka as they are (consumer and producer).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Run as one of several instances: every view lives on the partition
    /// of its events (a key elsewhere is dead-lettered `misrouted`), every
    /// view change is produced to the plugin's changelog topic, a newly
    /// assigned partition is restored from it, and reads are routed to the
    /// partition's owner.
    #[serde(default)]
    pub changelog: bool,
    /// The changelog topic of each plugin: `{group}` and `{plugin}` are
    /// replaced (default `{group}.{plugin}.changelog`).
    #[serde(default = "default_changelog_topic")]
    pub changelog_topic: String,
    /// Where instances publish who they are and what they own (default
    /// `{group}.members`, one partition).
    #[serde(default = "default_members_topic")]
    pub members_topic: String,
    /// How the producers of the source topics choose a record's partition
    /// from its key: `murmur2` (the Java client's default, and
    /// librdkafka's `murmur2_random`) or `fnv1a` (projector's embedded
    /// log). Views are placed by the same rule.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// How many other instances follow each partition from its
    /// changelogs, ready to take it over: the next ones after its owner
    /// in the order of their ids. With one fewer than the instances,
    /// every takeover is a standby's.
    #[serde(default)]
    pub standby_replicas: u32,
    /// This instance's static member id in the group (`group.instance.id`,
    /// KIP-345): restarted within the session timeout, it gets its
    /// partitions back without a rebalance. Unique per instance; keep it
    /// across restarts. None: a dynamic member (each start rebalances).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The base URL other instances forward reads to (default: the API's
    /// listen address, as `http://host:port`).
    #[serde(default)]
    pub advertised_url: Option<String>,
    /// Per plugin: which part of a view key is its partition key (set from
    /// `[plugins.NAME] partition_by`; default: the whole key).
    #[serde(skip)]
    pub placement: BTreeMap<String, KeyPart>,
}

/// How producers choose a record's partition from its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioner {
    /// `murmur2(key) & 0x7fffffff % partitions`: the Java client's.
    #[default]
    Murmur2,
    /// FNV-1a of the key modulo the partitions: the embedded log's.
    Fnv1a,
}

/// The part of a view key that is its partition key: the `field`-th
/// (from 0) piece of the key split at `separator`. For the inbox's
/// `user:site`, keyed by site: `{ separator = ":", field = 1 }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPart {
    /// Where the key is split.
    pub separator: String,
    /// Which piece, from 0.
    pub field: usize,
}

impl KeyPart {
    /// The partition key within `key`; the whole key when it has fewer pieces.
    pub fn of<'k>(&self, key: &'k str) -> &'k str {
        if self.separator.is_empty() {
            return key;
        }
        key.split(self.separator.as_str())
            .nth(self.field)
            .unwrap_or(key)
    }
}

fn default_max_buffered() -> usize {
    16_384
}

fn default_changelog_topic() -> String {
    "{group}.{plugin}.changelog".into()
}

fn default_members_topic() -> String {
    "{group}.members".into()
}

impl KafkaConfig {
    /// A config for `bootstrap` with the defaults.
    pub fn new(bootstrap: &str, group: &str, topics: &[&str]) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap.into(),
            group_id: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            max_buffered_records: default_max_buffered(),
            properties: BTreeMap::new(),
            changelog: false,
            changelog_topic: default_changelog_topic(),
            members_topic: default_members_topic(),
            partitioner: Partitioner::default(),
            standby_replicas: 0,
            instance_id: None,
            advertised_url: None,
            placement: BTreeMap::new(),
        }
    }

    /// Check the values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err("bootstrap_servers: expected host:port[,host:port...]".into());
        }
        if self.group_id.trim().is_empty() {
            return Err("group_id: expected a consumer group name".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err("topics: expected at least one topic name".into());
        }
        if self.max_buffered_records < 2 {
            return Err("max_buffered_records: expected at least 2".into());
        }
        if !self.changelog_topic.contains("{plugin}") {
            return Err(format!(
                "changelog_topic: expected a name with {{plugin}} in it, got {:?}",
                self.changelog_topic
            ));
        }
        if let Some(s) = self.properties.get("partition.assignment.strategy") {
            let fine =
                s.trim() == "range" || (self.topics.len() == 1 && s.trim() == "cooperative-sticky");
            if !fine {
                return Err(format!(
                    "properties.\"partition.assignment.strategy\": expected \"range\"{}, got {s:?}: \
                     an instance must get the same partitions of every source topic, which \
                     the views' placement needs, and only range keeps several topics together",
                    if self.topics.len() == 1 { " or \"cooperative-sticky\"" } else { "" }
                ));
            }
        }
        if let Some(id) = &self.instance_id {
            let fine = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if id.is_empty() || id.len() > 249 || !id.chars().all(fine) {
                return Err(format!(
                    "instance_id: expected 1 to 249 of a-z, A-Z, 0-9, '.', '_', '-', got {id:?}"
                ));
            }
        }
        if self.standby_replicas > 0 && !self.changelog {
            return Err(
                "standby_replicas: standbys follow changelogs; set changelog = true".into(),
            );
        }
        Ok(())
    }

    /// The group's assignor: incremental (`cooperative-sticky`) for one
    /// source topic; `range` for several, the one that gives a member the
    /// same partitions of each (a `properties` entry overrides it).
    pub(crate) fn assignor(&self) -> &'static str {
        match self.topics.len() {
            1 => "cooperative-sticky",
            _ => "range",
        }
    }

    /// A consumer's client: [`KafkaConfig::client`] with what every
    /// consumer here sets first. Past its queue bound librdkafka postpones
    /// a partition's next fetch by `fetch.queue.backoff.ms`, 1 s by
    /// default, although each consumer here drains its queue in
    /// milliseconds: the source's consumer waited 0.7 s for records in the
    /// Kafka bench, the changelog's reader made a restore 1.6× as long.
    pub(crate) fn consumer_client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut all = vec![("fetch.queue.backoff.ms", "20")];
        all.extend_from_slice(defaults);
        self.client(&all)
    }

    pub(crate) fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The retry topic of `topic`: `<topic>.<group_id>.retry`.
    pub(crate) fn retry_topic(&self, topic: &str) -> String {
        format!("{topic}.{}.retry", self.group_id)
    }

    /// The changelog topic of `plugin`.
    pub fn changelog_topic(&self, plugin: &str) -> String {
        self.changelog_topic
            .replace("{group}", &self.group_id)
            .replace("{plugin}", plugin)
    }

    /// The topic instances publish their membership to.
    pub fn members_topic(&self) -> String {
        self.members_topic.replace("{group}", &self.group_id)
    }

    /// The dead-letter topic of `topic`: `<topic>.<group_id>.dlq`.
    pub(crate) fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}.{}.dlq", self.group_id)
    }
}

/// The engine's source id for a topic.
pub fn source_id(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// Headers of retry and dead-letter records.
pub mod header {
    /// The plugin that failed the event (absent on a decode error's dead letter).
    pub const PLUGIN: &str = "projector-plugin";
    /// Attempts made so far, the first delivery included.
    pub const ATTEMPT: &str = "projector-attempt";
    /// The last attempt's error message.
    pub const ERROR: &str = "projector-error";
    /// Dead letters: a short, stable reason (`trap`, `out-of-time`, ...).
    pub const REASON: &str = "projector-reason";
    /// Dead letters: the stage that failed, `decode`, `keys` or `apply`.
    pub const STAGE: &str = "projector-stage";
    /// The view key that failed, where there is one.
    pub const KEY: &str = "projector-view-key";
    /// The topic the record was first read from.
    pub const TOPIC: &str = "projector-original-topic";
    /// The record's partition in that topic.
    pub const PARTITION: &str = "projector-original-partition";
    /// The record's offset in that partition.
    pub const OFFSET: &str = "projector-original-offset";
    /// Retries: not processed before this time, in ms since the epoch.
    pub const NOT_BEFORE: &str = "projector-not-before-ms";
    /// `event`: the payload is the decoded event as JSON; `raw`: the
    /// original record's bytes (it could not be decoded).
    pub const PAYLOAD: &str = "projector-payload";
    /// Changelogs: `view` (a view's change; no value: deleted) or
    /// `offsets` (the source offsets the partition's views now cover).
    pub const KIND: &str = "projector-kind";
    /// Changelogs: the commit's position in its partition, the sum of the
    /// next offsets of its sources (grows with every commit).
    pub const POSITION: &str = "projector-position";
    /// Every record the spool sends: `<store's spool id>/<sequence>`, so
    /// that a restart finds what it sent before a kill and does not send
    /// it again.
    pub const SPOOL: &str = "projector-spool";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_fetches_again_soon_after_its_queue_drains_unless_the_properties_say_otherwise() {
        let mut c = KafkaConfig::new("127.0.0.1:9092", "g", &["t"]);
        let consumer = c.consumer_client(&[("group.id", "x")]);
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(consumer.get("group.id"), Some("x"));
        assert_eq!(
            c.client(&[]).get("fetch.queue.backoff.ms"),
            None,
            "not a producer's"
        );
        c.properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        assert_eq!(
            c.consumer_client(&[]).get("fetch.queue.backoff.ms"),
            Some("500"),
            "the configured properties win"
        );
    }

    #[test]
    fn an_instance_id_is_a_plain_name() {
        let mut c = KafkaConfig::new("127.0.0.1:9092", "g", &["t"]);
        for good in ["a", "projector-1", "host.example_2"] {
            c.instance_id = Some(good.into());
            assert_eq!(c.validate(), Ok(()), "{good}");
        }
        for bad in ["", "a b", "é", &"x".repeat(250)] {
            c.instance_id = Some(bad.to_string());
            let e = c.validate().expect_err(bad);
            assert!(e.starts_with("instance_id:"), "{e}");
        }
    }

    #[test]
    fn an_assignor_must_keep_the_source_topics_together() {
        let mut c = KafkaConfig::new("127.0.0.1:9092", "g", &["t"]);
        assert_eq!(c.assignor(), "cooperative-sticky");
        for fine in ["range", "cooperative-sticky"] {
            c.properties
                .insert("partition.assignment.strategy".into(), fine.into());
            assert_eq!(c.validate(), Ok(()), "{fine}");
        }
        c.properties
            .insert("partition.assignment.strategy".into(), "roundrobin".into());
        assert!(c.validate().is_err());
        let mut two = KafkaConfig::new("127.0.0.1:9092", "g", &["t", "u"]);
        assert_eq!(two.assignor(), "range");
        two.properties.insert(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        );
        let e = two.validate().expect_err("sticky over two topics");
        assert!(e.contains("same partitions of every source topic"), "{e}");
    }
}
