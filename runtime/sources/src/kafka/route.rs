//! Failures to topics: delayed retries and dead letters of Kafka records
//! go to the retry and dead-letter topics of their source topic, and a
//! retry record comes back as a retry entry.

use super::config::{header, source_id, KafkaConfig};
use projector_core::engine::FailureRoute;
use projector_core::store::{DeadLetter, OutboxRecord, RetryEntry};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;

/// Routes the failures of Kafka records to the retry and dead-letter
/// topics of their source topic.
pub(crate) struct FailureTopics {
    pub(crate) config: KafkaConfig,
    /// Partitions of each source topic (its retry and dead-letter topics
    /// have as many).
    pub(crate) partitions: HashMap<String, i32>,
}

impl FailureTopics {
    fn topic_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_prefix("kafka:")
            .filter(|t| self.partitions.contains_key(*t))
    }

    fn partition(&self, topic: &str, partition: u32) -> Option<i32> {
        let n = self.partitions.get(topic).copied().unwrap_or(1).max(1);
        Some(partition as i32 % n)
    }
}

impl FailureRoute for FailureTopics {
    fn retry(&self, e: &RetryEntry) -> Option<OutboxRecord> {
        let topic = self.topic_of(&e.source)?;
        Some(OutboxRecord {
            seq: 0,
            topic: self.config.retry_topic(topic),
            partition: self.partition(topic, e.partition),
            key: Some(e.event.key.clone().into_bytes()),
            payload: Some(serde_json::to_vec(&e.event).ok()?),
            headers: vec![
                (header::PLUGIN.into(), e.plugin.clone()),
                (header::ATTEMPT.into(), e.attempt.to_string()),
                (header::ERROR.into(), e.error.clone()),
                (header::KEY.into(), e.key.clone()),
                (header::TOPIC.into(), topic.into()),
                (header::PARTITION.into(), e.partition.to_string()),
                (header::OFFSET.into(), e.offset.to_string()),
                (header::NOT_BEFORE.into(), e.not_before_ms.to_string()),
                (header::PAYLOAD.into(), "event".into()),
            ],
        })
    }

    fn dead_letter(&self, d: &DeadLetter) -> Option<OutboxRecord> {
        let topic = self.topic_of(&d.source)?;
        let (payload, kind) = match (&d.event, &d.raw) {
            (Some(e), _) => (serde_json::to_vec(e).ok()?, "event"),
            (None, Some(raw)) => (raw.clone().into_bytes(), "raw"),
            (None, None) => (Vec::new(), "raw"),
        };
        let attempt = d
            .error
            .strip_prefix("plugin ")
            .and_then(|s| s.split_once(": after "))
            .and_then(|(_, s)| s.split_once(' '))
            .and_then(|(n, _)| n.parse::<u32>().ok())
            .unwrap_or(1);
        let mut headers = vec![
            (header::STAGE.into(), d.stage.clone()),
            (header::REASON.into(), d.reason.clone()),
            (header::ATTEMPT.into(), attempt.to_string()),
            (header::ERROR.into(), d.error.clone()),
            (header::TOPIC.into(), topic.into()),
            (header::PARTITION.into(), d.partition.to_string()),
            (header::OFFSET.into(), d.offset.to_string()),
            (header::PAYLOAD.into(), kind.into()),
        ];
        if let Some(p) = &d.plugin {
            headers.push((header::PLUGIN.into(), p.clone()));
        }
        if let Some(k) = &d.key {
            headers.push((header::KEY.into(), k.clone()));
        }
        Some(OutboxRecord {
            seq: 0,
            topic: self.config.dead_letter_topic(topic),
            partition: self.partition(topic, d.partition),
            key: d.event.as_ref().map(|e| e.key.clone().into_bytes()),
            payload: Some(payload),
            headers,
        })
    }
}

/// The value of header `name` of a message, as text.
pub(crate) fn header_of<'a, M: Message>(m: &'a M, name: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A retry record back into a retry entry.
pub(crate) fn retry_entry<M: Message>(m: &M) -> Result<RetryEntry, String> {
    let h = |name: &str| header_of(m, name).ok_or_else(|| format!("header {name} is missing"));
    let num = |name: &str| -> Result<i64, String> {
        h(name)?
            .parse::<i64>()
            .map_err(|e| format!("header {name}: {e}"))
    };
    let event = serde_json::from_slice(m.payload().unwrap_or_default())
        .map_err(|e| format!("payload: {e}"))?;
    Ok(RetryEntry {
        seq: 0,
        plugin: h(header::PLUGIN)?.into(),
        key: h(header::KEY)?.into(),
        attempt: num(header::ATTEMPT)? as u32,
        error: h(header::ERROR)?.into(),
        source: source_id(h(header::TOPIC)?),
        partition: num(header::PARTITION)? as u32,
        offset: num(header::OFFSET)? as u64,
        event,
        not_before_ms: num(header::NOT_BEFORE)?,
    })
}
