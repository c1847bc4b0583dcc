//! The retry topics' reader: a consumer outside the group that reads
//! partition p of each retry topic exactly while this instance owns
//! partition p of its source topic, so a retry is applied where its view
//! lives. The group itself balances only the source topic, which lets it
//! use an incremental assignor; Kafka's assignors do not keep two topics'
//! same partitions together.
//!
//! Its offsets are the store's (`@retry` namespace), as before; what it
//! commits to Kafka (under `<group>.retry-reader`) only informs lag tools.

use super::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// The consumer of the retry partitions this instance follows.
pub(crate) struct RetryReader {
    pub(crate) consumer: BaseConsumer,
}

impl RetryReader {
    pub(crate) fn new(config: &KafkaConfig) -> KafkaResult<Self> {
        let group = format!("{}.retry-reader", config.group_id);
        let consumer: BaseConsumer = config
            .consumer_client(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ])
            .create()?;
        Ok(RetryReader { consumer })
    }

    /// Read `topic`'s `partition` from `offset` on.
    pub(crate) fn follow(&self, topic: &str, partition: i32, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
        if let Err(e) = self.consumer.incremental_assign(&tpl) {
            tracing::error!("reading retry partition {topic}/{partition}: {e}");
        }
    }

    /// Stop reading `parts`.
    pub(crate) fn stop(&self, parts: &[(String, i32)]) {
        if parts.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in parts {
            let _ = tpl.add_partition(topic, *partition);
        }
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            tracing::warn!("leaving retry partitions {parts:?}: {e}");
        }
    }

    /// Tell Kafka where the retry partitions are (informative).
    pub(crate) fn commit(&self, offsets: &TopicPartitionList) {
        if offsets.count() > 0 {
            if let Err(e) = self.consumer.commit(offsets, CommitMode::Async) {
                tracing::debug!("commit of the retry partitions to Kafka: {e}");
            }
        }
    }
}
