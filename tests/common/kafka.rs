//! Kafka test helpers: librdkafka's mock cluster started by the test,
//! a producer of events keyed like the embedded log, readers of whole
//! topics, and a waiter for a runtime to catch up.

use projector_core::engine::Engine;
use projector_sources::kafka::source_id;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A one-broker mock cluster with `topic` of `partitions` partitions,
/// and its retry and dead-letter topics for group `views` (the mock
/// cluster does not serve CreateTopics).
pub fn cluster(topic: &str, partitions: i32) -> Cluster {
    let c = MockCluster::new(1).expect("mock cluster");
    for t in [
        topic.to_string(),
        format!("{topic}.views.retry"),
        format!("{topic}.views.dlq"),
    ] {
        c.create_topic(&t, partitions, 1).expect("create topic");
    }
    c
}

/// Produce `values` to `topic`, each to the partition of its event key
/// (as the embedded log routes), and wait for every acknowledgement.
pub fn produce(bootstrap: &str, topic: &str, partitions: u32, values: &[String]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        // Order per partition holds through retries (the tests inject
        // produce errors).
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for v in values {
        let e: serde_json::Value = serde_json::from_str(v).expect("event json");
        let key = e["key"].as_str().expect("event key").to_string();
        let p = projector_sources::log::partition_of(&key, partitions) as i32;
        loop {
            match producer.send(
                BaseRecord::<String, String>::to(topic)
                    .partition(p)
                    .key(&key)
                    .payload(v),
            ) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// The (low, high) watermarks of each partition of `topic`.
fn watermarks(bootstrap: &str, topic: &str, partitions: u32) -> Vec<(u64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..partitions as i32)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (low as u64, high as u64)
        })
        .collect()
}

/// The end offset of each partition of `topic`.
pub fn ends(bootstrap: &str, topic: &str, partitions: u32) -> Vec<u64> {
    watermarks(bootstrap, topic, partitions)
        .into_iter()
        .map(|(_, high)| high)
        .collect()
}

/// The fewest partitions (a multiple of 8, at least `at_least`, at most
/// 1024) over which librdkafka's mock cluster keeps every one of
/// `values`, routed by event key as [`produce`] routes them: the mock
/// keeps about 5 MiB per partition, so the fullest partition's records
/// (with their keys and about 60 bytes of framing each) must fit in it.
/// Events skewed onto one hot key may fit in no count: then it panics,
/// naming the hot partition's size.
pub fn mock_partitions(values: &[String], at_least: u32) -> u32 {
    const ROOM: u64 = 5 << 20;
    let sized: Vec<(String, u64)> = values
        .iter()
        .map(|v| {
            let e: serde_json::Value = serde_json::from_str(v).expect("event json");
            let key = e["key"].as_str().expect("event key").to_string();
            let bytes = (v.len() + key.len() + 60) as u64;
            (key, bytes)
        })
        .collect();
    let mut partitions = at_least.max(8).next_multiple_of(8);
    loop {
        let mut filled = vec![0u64; partitions as usize];
        for (key, bytes) in &sized {
            filled[projector_sources::log::partition_of(key, partitions) as usize] += bytes;
        }
        let fullest = filled.iter().copied().max().unwrap_or(0);
        if fullest <= ROOM {
            return partitions;
        }
        assert!(
            partitions < 1024,
            "no partition count up to 1024 keeps these events on the mock cluster: \
             the fullest partition holds {fullest} bytes of its 5 MiB"
        );
        partitions += 8;
    }
}

/// The records `topic` still holds. Past its size bound (5 MiB per
/// partition) the mock cluster drops a partition's oldest records: its
/// low watermark moves while its end still counts every record produced.
pub fn kept(bootstrap: &str, topic: &str, partitions: u32) -> u64 {
    watermarks(bootstrap, topic, partitions)
        .into_iter()
        .map(|(low, high)| high - low)
        .sum()
}

/// Wait until `engine` has applied every record up to `ends`.
pub fn wait_caught_up(engine: &Engine, topic: &str, ends: &[u64], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let source = source_id(topic);
    loop {
        let at: Vec<u64> = (0..ends.len() as u32)
            .map(|p| engine.resume_offset(&source, p).expect("offset"))
            .collect();
        if at.iter().zip(ends).all(|(a, e)| a >= e) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up after {timeout:?}: at {at:?}, ends {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One record read back, with its headers.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

/// Every record of `topic` (all partitions) present now.
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut want = 0;
    for p in 0..partitions {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        want += hi - lo;
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
            });
        }
    }
    out
}
