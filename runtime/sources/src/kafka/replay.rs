//! The owned partitions of the source topics read again from their
//! earliest records: what a shadow generation is rebuilt from.

use super::config::{source_id, KafkaConfig};
use super::stats::KafkaStats;
use projector_common::sync::Recover;
use projector_core::source::Replay;
use projector_core::Record;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The source topics read from their earliest records, for shadow
/// rebuilds: the partitions this instance owns, read with a consumer of
/// its own (no group).
pub struct KafkaRetained {
    stats: Arc<KafkaStats>,
    consumer: Mutex<BaseConsumer>,
}

impl KafkaRetained {
    /// A reader with a consumer of its own, assigned by hand and never
    /// joined (librdkafka requires a group id only).
    pub(crate) fn new(config: &KafkaConfig, stats: Arc<KafkaStats>) -> anyhow::Result<Self> {
        let group = format!("{}.shadow", config.group_id);
        Ok(KafkaRetained {
            stats,
            consumer: Mutex::new(
                config
                    .consumer_client(&[("group.id", &group), ("enable.auto.commit", "false")])
                    .create()?,
            ),
        })
    }

    fn owned(&self) -> Vec<(String, i32)> {
        self.stats
            .partitions
            .lock()
            .recover()
            .keys()
            .filter(|(t, _)| self.stats.topics.contains(t))
            .cloned()
            .collect()
    }
}

impl Replay for KafkaRetained {
    fn partitions(&self) -> Vec<(String, u32)> {
        self.owned()
            .into_iter()
            .map(|(t, p)| (source_id(&t), p as u32))
            .collect()
    }

    fn complete(&self) -> bool {
        let consumer = self.consumer.lock().recover();
        self.owned().iter().all(|(t, p)| {
            consumer
                .fetch_watermarks(t, *p, Duration::from_secs(10))
                .is_ok_and(|(low, _)| low == 0)
        })
    }

    fn read(
        &self,
        source: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        let topic = source
            .strip_prefix("kafka:")
            .ok_or_else(|| anyhow::anyhow!("{source} is not a Kafka source"))?;
        let consumer = self.consumer.lock().recover();
        let (_, high) =
            consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(10))?;
        let mut out = Vec::new();
        if from as i64 >= high {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from as i64))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < max && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.offset() < from as i64 {
                        continue;
                    }
                    out.push(Record::wire(
                        partition,
                        m.offset() as u64,
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    ));
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        let _ = consumer.unassign();
        Ok(out)
    }
}
