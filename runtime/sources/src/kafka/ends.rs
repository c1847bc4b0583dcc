//! Where the assigned partitions end, asked of the broker on a thread of
//! its own until the consumer's statistics say it: the lag is reported
//! from then on.
//!
//! Asked on the consumer's thread, these requests (up to 500 ms each when
//! the broker is busy serving fetches) stopped its polls: the Kafka bench
//! saw the pipeline wait 2.3 s for records while five of them timed out.

use super::config::KafkaConfig;
use super::stats::KafkaStats;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// How often the unknown ends are looked for, and how many at a time.
const EVERY: Duration = Duration::from_millis(200);
const AT_ONCE: usize = 8;
/// How long one partition's answer is waited for.
const BOUND: Duration = Duration::from_millis(500);

/// Ask for the ends of partitions whose end is not known, until `stop`.
pub(crate) fn run_ends(config: &KafkaConfig, stats: &KafkaStats, stop: &Shutdown) {
    let client: BaseConsumer = match config.client(&[]).create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("kafka: a client to learn where partitions end: {e}; lag shows once the statistics say it");
            return;
        }
    };
    while !stop.wait(EVERY) {
        learn(stats, |topic, partition| {
            client
                .fetch_watermarks(topic, partition, BOUND)
                .ok()
                .map(|(_, high)| high)
        });
    }
}

/// One round: up to `AT_ONCE` unknown ends asked of `high`.
fn learn(stats: &KafkaStats, high: impl Fn(&str, i32) -> Option<i64>) {
    let unknown: Vec<(String, i32)> = {
        let lags = stats.partitions.lock().recover();
        lags.iter()
            .filter(|(_, l)| l.end.is_none())
            .map(|(k, _)| k.clone())
            .take(AT_ONCE)
            .collect()
    };
    for (topic, partition) in unknown {
        let Some(high) = high(&topic, partition) else {
            continue;
        };
        // The partition may have left meanwhile: then nothing is set.
        if let Some(l) = stats
            .partitions
            .lock()
            .recover()
            .get_mut(&(topic, partition))
        {
            l.end = Some(l.end.map_or(high, |e| e.max(high)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::stats::PartitionLag;

    #[test]
    fn an_unknown_end_is_learned_and_a_known_one_is_not_asked_again() {
        let stats = KafkaStats::default();
        {
            let mut lags = stats.partitions.lock().recover();
            lags.insert(("t".into(), 0), PartitionLag::default());
            lags.insert(
                ("t".into(), 1),
                PartitionLag {
                    end: Some(7),
                    ..PartitionLag::default()
                },
            );
            lags.insert(("t".into(), 2), PartitionLag::default());
        }
        let asked = std::sync::Mutex::new(Vec::new());
        learn(&stats, |t, p| {
            asked.lock().recover().push((t.to_string(), p));
            (p == 0).then_some(42)
        });
        assert_eq!(
            *asked.lock().recover(),
            vec![("t".to_string(), 0), ("t".to_string(), 2)],
            "only the unknown ends are asked"
        );
        let lags = stats.partitions.lock().recover();
        assert_eq!(lags[&("t".to_string(), 0)].end, Some(42));
        assert_eq!(lags[&("t".to_string(), 1)].end, Some(7));
        assert_eq!(
            lags[&("t".to_string(), 2)].end,
            None,
            "no answer: still unknown"
        );
    }
}
