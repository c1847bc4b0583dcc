//! Each partition's state as an instance publishes it with its
//! membership: owned (caught up or behind by its lag), restoring (with the
//! restore's progress), paused by backpressure, or followed as a standby
//! (with the changelog records it has not read yet); and the fleet's view
//! of one partition made of every member's (the instances table).

use super::stats::KafkaStats;
use projector_common::sync::Recover;
use projector_core::source::CAUGHT_UP_RECORDS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an instance does with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Owned and processed.
    Owned,
    /// Owned, paused because its queue is full.
    Paused,
    /// Assigned, its views being restored from the changelog (reads of it
    /// answer 503 meanwhile).
    Restoring,
    /// Followed from its changelog, for a takeover and stale reads.
    Standby,
}

/// One partition at one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionState {
    pub(crate) state: State,
    /// Owned: source records not applied yet; standby: changelog records
    /// not read yet; `None` while not known (never reported as 0).
    pub(crate) lag: Option<i64>,
    /// The lag is known and at most [`CAUGHT_UP_RECORDS`].
    pub(crate) caught_up: bool,
    /// Restoring: changelog records read, and to read, by the restore
    /// under way (when it is this partition's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) restore: Option<(u64, u64)>,
}

impl PartitionState {
    fn new(state: State, lag: Option<i64>) -> Self {
        PartitionState {
            state,
            lag,
            caught_up: state != State::Restoring && lag.is_some_and(|l| l <= CAUGHT_UP_RECORDS),
            restore: None,
        }
    }
}

/// This instance's partitions of `topic` (the first source topic; the
/// others are assigned alike), and those it stands by for with their
/// changelog lag.
pub(crate) fn local(
    stats: &KafkaStats,
    topic: &str,
    standby: &BTreeMap<u32, Option<i64>>,
) -> BTreeMap<u32, PartitionState> {
    let mut out = BTreeMap::new();
    for (p, behind) in standby {
        out.insert(*p, PartitionState::new(State::Standby, *behind));
    }
    for ((t, p), l) in stats.partitions.lock().recover().iter() {
        if t == topic {
            let state = if l.paused {
                State::Paused
            } else {
                State::Owned
            };
            out.insert(*p as u32, PartitionState::new(state, l.lag()));
        }
    }
    let progress = *stats.restore_progress.lock().recover();
    for p in stats.restoring.lock().recover().iter() {
        let mut s = PartitionState::new(State::Restoring, None);
        s.restore = progress;
        out.insert(*p as u32, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::PartitionLag;

    #[test]
    fn a_partition_is_caught_up_only_once_its_lag_is_known_and_small() {
        let stats = KafkaStats {
            topics: vec!["t".into()],
            ..KafkaStats::default()
        };
        let lag = |end: Option<i64>, next: i64, paused: bool| PartitionLag {
            end,
            seen: next,
            next,
            paused,
        };
        stats.partitions.lock().recover().extend([
            (("t".to_string(), 0), lag(None, 50, false)),
            (("t".to_string(), 1), lag(Some(100), 90, false)),
            (("t".to_string(), 2), lag(Some(100_000), 10, true)),
            (("u".to_string(), 3), lag(Some(100), 100, false)),
        ]);
        stats.restoring.lock().recover().insert(4);
        *stats.restore_progress.lock().recover() = Some((10, 40));
        let standby = BTreeMap::from([(5, Some(3)), (6, None)]);
        let states = local(&stats, "t", &standby);
        let shown: Vec<(u32, State, Option<i64>, bool)> = states
            .iter()
            .map(|(p, s)| (*p, s.state, s.lag, s.caught_up))
            .collect();
        assert_eq!(
            shown,
            [
                (0, State::Owned, None, false),
                (1, State::Owned, Some(10), true),
                (2, State::Paused, Some(99_990), false),
                (4, State::Restoring, None, false),
                (5, State::Standby, Some(3), true),
                (6, State::Standby, None, false),
            ]
        );
        assert_eq!(states[&4].restore, Some((10, 40)));
        // Published as JSON the others read.
        let json = serde_json::to_value(&states[&4]).expect("json");
        assert_eq!(json["state"], "restoring");
        assert_eq!(json["restore"], serde_json::json!([10, 40]));
    }
}
