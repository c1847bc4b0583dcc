//! Spooled records the broker already holds. The spool removes a record
//! once the broker acknowledged it, but that removal becomes durable only
//! with the store's next flush: a kill in between leaves acknowledged
//! records in the spool, which a plain restart would send again. Every
//! record the spool sends names its store and sequence number
//! ([`header::SPOOL`]); at start the spool reads back the end of each
//! partition it still has records for, and drops those found there.

use super::config::{header, KafkaConfig};
use projector_core::source::Spool;
use projector_core::store::OutboxRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Records read back per step, from a partition's end toward its start.
const STEP: i64 = 1000;
/// Records read back per partition, at most.
const MAX_SCAN: i64 = 100_000;

/// The value of [`header::SPOOL`] for record `seq` of spool `id`.
pub(crate) fn spool_header(id: &str, seq: u64) -> String {
    format!("{id}/{seq}")
}

/// The records in `store`'s spool that the broker already holds: for
/// each (topic, partition) they go to, the partition is read back from
/// its end until a record of this spool older than the oldest pending one
/// shows (or [`MAX_SCAN`] records).
pub(crate) fn already_delivered(
    spool: &dyn Spool,
    config: &KafkaConfig,
    id: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut oldest: BTreeMap<(String, i32), u64> = BTreeMap::new();
    let mut wanted: HashSet<u64> = HashSet::new();
    let mut after = None;
    loop {
        let page: Vec<OutboxRecord> = spool.read(after, &HashSet::new(), 10_000)?;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        for r in page {
            if let Some(p) = r.partition {
                oldest.entry((r.topic, p)).or_insert(r.seq);
                wanted.insert(r.seq);
            }
        }
        after = Some(last);
    }
    if oldest.is_empty() {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer = config
        .consumer_client(&[
            ("group.id", &format!("{}.spool", config.group_id)),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
    let mut found = Vec::new();
    for ((topic, partition), lowest) in oldest {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        let mut end = high;
        while end > low && high - end < MAX_SCAN {
            let start = (end - STEP).max(low);
            let seqs = ours(&consumer, &topic, partition, start, end, id)?;
            found.extend(seqs.iter().filter(|s| wanted.contains(s)));
            if seqs.iter().any(|s| *s < lowest) {
                break;
            }
            end = start;
        }
    }
    let _ = consumer.unassign();
    Ok(found)
}

/// The sequence numbers of spool `id`'s records in `start..end` of a
/// partition.
fn ours(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    id: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let prefix = format!("{id}/");
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut at = start;
    while at < end {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic}/{partition} back from {start}: stuck at {at}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at = m.offset() + 1;
                let Some(headers) = m.headers() else {
                    continue;
                };
                for h in headers.iter() {
                    let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    if let (header::SPOOL, Some(v)) = (h.key, value) {
                        if let Some(seq) = v.strip_prefix(&prefix).and_then(|s| s.parse().ok()) {
                            seqs.push(seq);
                        }
                    }
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(seqs)
}
