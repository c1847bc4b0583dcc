//! `projector kafka-dev`: librdkafka's mock cluster in this process.

use super::signals::{spawn_signal_handler, stop_signals};
use projector_common::shutdown::Shutdown;

pub(crate) fn run(
    topics: &[String],
    group: &str,
    brokers: i32,
    changelog: &[String],
) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(brokers)
        .map_err(|e| anyhow::anyhow!("starting the mock cluster: {e}"))?;
    let mut first_partitions = None;
    for spec in topics {
        let (name, partitions) = match spec.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| anyhow::anyhow!("--topics {spec}: expected name:partitions"))?,
            ),
            None => (spec.as_str(), 4),
        };
        first_partitions.get_or_insert(partitions);
        for t in [
            name.to_string(),
            format!("{name}.{group}.retry"),
            format!("{name}.{group}.dlq"),
        ] {
            cluster
                .create_topic(&t, partitions, 1)
                .map_err(|e| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    if !changelog.is_empty() {
        let mut extra: Vec<(String, i32)> = changelog
            .iter()
            .map(|p| {
                (
                    format!("{group}.{p}.changelog"),
                    first_partitions.unwrap_or(4),
                )
            })
            .collect();
        extra.push((format!("{group}.members"), 1));
        // The mock cluster never compacts: a restore takes the last record
        // per key itself.
        for (t, n) in extra {
            cluster
                .create_topic(&t, n, 1)
                .map_err(|e| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    let stop = Shutdown::new();
    let signals = spawn_signal_handler(stop.clone())?;
    println!("{}", cluster.bootstrap_servers());
    eprintln!(
        "mock Kafka cluster up (in memory, {brokers} broker(s)); topics: {}; group {group:?}\n\
         [source.kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\
         Ctrl-C stops it (and loses its data).",
        topics.join(", "),
        cluster.bootstrap_servers()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    while !stop.wait(std::time::Duration::from_secs(1)) {}
    stop_signals(&stop, signals);
    Ok(())
}
