//! What the runtime asks of the brokers at start: how many partitions
//! each source topic has, and the retry and dead-letter topics created.

use super::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many partitions each source topic has.
pub(crate) fn topic_partitions(config: &KafkaConfig) -> anyhow::Result<HashMap<String, i32>> {
    let consumer: BaseConsumer = config.client(&[]).create()?;
    let mut out = HashMap::new();
    for topic in &config.topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len() as i32)
                })
                .filter(|n| *n > 0);
            if let Some(n) = found {
                out.insert(topic.clone(), n);
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "source.kafka: topic {topic:?} not found on {} (is the broker up and the topic created?)",
                    config.bootstrap_servers
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(out)
}

/// Create the retry and dead-letter topics of every source topic that
/// lack them, with its partition count.
pub(crate) fn create_failure_topics(
    config: &KafkaConfig,
    partitions: &HashMap<String, i32>,
) -> anyhow::Result<()> {
    let wanted: Vec<Wanted> = partitions
        .iter()
        .flat_map(|(t, n)| {
            [
                (config.retry_topic(t), *n, false),
                (config.dead_letter_topic(t), *n, false),
            ]
        })
        .collect();
    create_topics(config, &wanted, "the retry and dead-letter topics")
}

/// A topic wanted: name, partitions, compacted.
pub(crate) type Wanted = (String, i32, bool);

/// Create the topics of `wanted` that are missing. A broker that refuses
/// (or does not offer CreateTopics) gets a warning naming `what`: the
/// operator creates them, or the broker creates them on first use.
pub(crate) fn create_topics(
    config: &KafkaConfig,
    wanted: &[Wanted],
    what: &str,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let probe: BaseConsumer = config.client(&[]).create()?;
    let exists = |name: &str| {
        probe
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .is_some_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
    };
    let missing: Vec<&Wanted> = wanted.iter().filter(|(name, _, _)| !exists(name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.client(&[]).create()?;
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|(name, n, compact)| {
            let t = NewTopic::new(name, *n, TopicReplication::Fixed(-1));
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    match rt.block_on(admin.create_topics(&topics, &opts)) {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => tracing::warn!("creating topic {name}: {code}"),
                }
            }
        }
        Err(e) => {
            let list: Vec<String> = missing
                .iter()
                .map(|(n, p, c)| {
                    format!(
                        "{n} ({p} partitions{})",
                        if *c { ", compacted" } else { "" }
                    )
                })
                .collect();
            tracing::warn!(
                topics = ?list,
                "could not create {what} ({e}); create them as listed"
            )
        }
    }
    Ok(())
}
