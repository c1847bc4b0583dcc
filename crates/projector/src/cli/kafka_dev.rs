//! `projector kafka-dev`: librdkafka's mock cluster in this process.

use super::signals::{spawn_signal_handler, stop_signals};
use projector_host::shutdown::Shutdown;

pub(crate) fn run(topics: &[String], group: &str, brokers: i32) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(brokers)
        .map_err(|e| anyhow::anyhow!("starting the mock cluster: {e}"))?;
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
