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
}

fn default_max_buffered() -> usize {
    16_384
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
        Ok(())
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
}
