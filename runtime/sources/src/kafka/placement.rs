//! Where views live when several instances share the source: a view key's
//! partition key (a part of the key, per plugin), the producers' own
//! partitioner applied to it, and the changelog records that follow every
//! view change to `<group>.<plugin>.changelog`.
//!
//! **The rule plugin authors keep.** Every event of a view must arrive on
//! the view's partition: the events of `user:site` are keyed by `site`,
//! and the view's partition key is its `site` part. An event naming a view
//! of another partition is dead-lettered `misrouted`.
//!
//! **A changelog record** has the view key as its key and the view in its
//! changelog form as its value (`projector_core::store::changelog_value`:
//! a version byte, then the stored view); a deleted view is a tombstone.
//! Headers: `projector-kind` (`view`), `projector-position`. After a
//! commit's views of a partition comes one record with an empty key,
//! `projector-kind: offsets` and the JSON value
//! `{"v":1,"offsets":{"kafka:inbox":1234}}`: the next offset of each source
//! those views cover. A restore resumes there.

use super::config::{header, KafkaConfig, Partitioner};
use super::stats::KafkaStats;
use projector_common::sync::Recover;
use projector_core::engine::Changelog;
use projector_core::store::{changelog_value, OutboxRecord, ViewRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The offsets record's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetsValue {
    /// Its encoding's version, 1.
    pub(crate) v: u32,
    /// Next offset per source id.
    pub(crate) offsets: BTreeMap<String, u64>,
}

/// Views placed on the partitions of the source topics.
pub(crate) struct Placement {
    pub(crate) config: KafkaConfig,
    /// Partitions of the source topics (all the same).
    pub(crate) partitions: u32,
    /// The plugins whose changelog topics were made ready at start: a
    /// plugin added while running gets its changelog at the next start
    /// (its records would go to a topic that may not exist).
    pub(crate) plugins: BTreeSet<String>,
    /// Plugins already warned about.
    warned: Mutex<BTreeSet<String>>,
    /// The partitions owned now (`None`: every one, in tests).
    owned: Option<Arc<KafkaStats>>,
}

impl Placement {
    pub(crate) fn new(config: KafkaConfig, partitions: u32, plugins: BTreeSet<String>) -> Self {
        Placement {
            config,
            partitions,
            plugins,
            warned: Mutex::default(),
            owned: None,
        }
    }

    /// Owned partitions are those `stats` follows.
    pub(crate) fn owned_by(mut self, stats: Arc<KafkaStats>) -> Self {
        self.owned = Some(stats);
        self
    }

    /// Whether `plugin` has a changelog (warns once when not).
    fn logged(&self, plugin: &str) -> bool {
        if self.plugins.contains(plugin) {
            return true;
        }
        if self.warned.lock().recover().insert(plugin.to_string()) {
            tracing::warn!(
                plugin,
                "added while running: its views have no changelog until the next start \
                 (which creates {})",
                self.config.changelog_topic(plugin)
            );
        }
        false
    }

    /// The partition of a view `key` of `plugin`.
    pub(crate) fn partition_of(&self, plugin: &str, key: &str) -> u32 {
        let part = match self.config.placement.get(plugin) {
            Some(rule) => rule.of(key),
            None => key,
        };
        partition(self.config.partitioner, part.as_bytes(), self.partitions)
    }
}

impl Changelog for Placement {
    fn partition(&self, plugin: &str, key: &str) -> Option<u32> {
        Some(self.partition_of(plugin, key))
    }

    fn owns(&self, partition: u32) -> bool {
        let Some(stats) = &self.owned else {
            return true;
        };
        let topic = self.config.topics[0].clone();
        stats
            .partitions
            .lock()
            .recover()
            .contains_key(&(topic, partition as i32))
    }

    fn view(
        &self,
        plugin: &str,
        partition: u32,
        key: &str,
        view: Option<&ViewRecord>,
        position: u64,
    ) -> Option<OutboxRecord> {
        self.record(
            plugin,
            partition,
            key.as_bytes().to_vec(),
            view.map(changelog_value),
            "view",
            Some(position),
        )
    }

    fn history(
        &self,
        plugin: &str,
        partition: u32,
        key: &str,
        seq: u64,
        entry: Option<&[u8]>,
    ) -> Option<OutboxRecord> {
        let payload = entry.map(<[u8]>::to_vec);
        self.record(
            plugin,
            partition,
            history_key(key, seq),
            payload,
            "history",
            None,
        )
    }

    fn fetched(
        &self,
        plugin: &str,
        partition: u32,
        key: &[u8],
        kept: &[u8],
    ) -> Option<OutboxRecord> {
        let payload = Some(kept.to_vec());
        self.record(plugin, partition, fetched_key(key), payload, "fetch", None)
    }

    fn offsets(
        &self,
        plugin: &str,
        partition: u32,
        offsets: &[(String, u64)],
    ) -> Option<OutboxRecord> {
        let value = OffsetsValue {
            v: 1,
            offsets: offsets.iter().cloned().collect(),
        };
        let payload = Some(serde_json::to_vec(&value).ok()?);
        let position = projector_core::engine::position(offsets);
        self.record(
            plugin,
            partition,
            Vec::new(),
            payload,
            "offsets",
            Some(position),
        )
    }
}

impl Placement {
    /// A record of `plugin`'s changelog on `partition`, of `kind`, with its
    /// position when it has one (`None` when the plugin has no changelog).
    fn record(
        &self,
        plugin: &str,
        partition: u32,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        kind: &str,
        position: Option<u64>,
    ) -> Option<OutboxRecord> {
        if !self.logged(plugin) {
            return None;
        }
        let mut headers = vec![(header::KIND.into(), kind.into())];
        if let Some(p) = position {
            headers.push((header::POSITION.into(), p.to_string()));
        }
        Some(OutboxRecord {
            seq: 0,
            topic: self.config.changelog_topic(plugin),
            partition: Some(partition as i32),
            key: Some(key),
            payload,
            headers,
        })
    }
}

/// The changelog key of history entry `seq` of view `key`: the view key,
/// a zero byte, the seq (8 bytes, big-endian); unique per entry, so
/// compaction keeps every entry until the sweep's tombstone.
pub(crate) fn history_key(key: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The changelog key of a recorded answer (`key`: its service and path):
/// a zero byte first, which no view key (nor history entry's) starts with,
/// so compaction keeps one answer per path beside the views.
pub(crate) fn fetched_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The service and path of a recorded answer's changelog key.
pub(crate) fn parse_fetched_key(k: &[u8]) -> Option<&[u8]> {
    match k.split_first() {
        Some((0, key)) if !key.is_empty() => Some(key),
        _ => None,
    }
}

/// The view key and seq of a history entry's changelog key.
pub(crate) fn parse_history_key(k: &[u8]) -> Option<(&str, u64)> {
    let (key, seq) = k.split_at_checked(k.len().checked_sub(9)?)?;
    let (0, seq) = seq.split_first()? else {
        return None;
    };
    Some((
        std::str::from_utf8(key).ok()?,
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// The partition `key` goes to among `partitions` under `partitioner`.
pub fn partition(partitioner: Partitioner, key: &[u8], partitions: u32) -> u32 {
    let n = partitions.max(1);
    match partitioner {
        Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) % n,
        Partitioner::Fnv1a => crate::log::fnv1a_partition(key, n),
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::KeyPart;

    #[test]
    fn murmur2_is_the_java_clients() {
        // Kafka's UtilsTest.testMurmur2.
        for (key, want) in [
            ("21", -973_932_308_i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn fnv1a_is_the_embedded_logs() {
        for key in ["site-1", "site-22", "x"] {
            assert_eq!(
                partition(Partitioner::Fnv1a, key.as_bytes(), 7),
                crate::log::partition_of(key, 7)
            );
        }
    }

    #[test]
    fn a_view_lives_on_the_partition_of_its_key_part() {
        let mut config = KafkaConfig::new("b:1", "g", &["inbox"]);
        config.partitioner = Partitioner::Fnv1a;
        config.placement.insert(
            "inbox-unread".into(),
            KeyPart {
                separator: ":".into(),
                field: 1,
            },
        );
        let placed = Placement::new(config, 8, ["inbox-unread".to_string()].into());
        let site = crate::log::partition_of("site-3", 8);
        assert_eq!(placed.partition_of("inbox-unread", "user-9:site-3"), site);
        // Another plugin: the whole key.
        assert_eq!(
            placed.partition_of("other", "user-9:site-3"),
            crate::log::partition_of("user-9:site-3", 8)
        );
        let r = placed
            .offsets("inbox-unread", 2, &[("kafka:inbox".into(), 40)])
            .expect("a record");
        // A plugin without a changelog topic gets no records.
        assert!(placed.offsets("other", 2, &[]).is_none());
        assert_eq!(r.topic, "g.inbox-unread.changelog");
        assert_eq!(r.partition, Some(2));
        let v: OffsetsValue =
            serde_json::from_slice(r.payload.as_ref().expect("a value")).expect("offsets");
        assert_eq!(v.offsets["kafka:inbox"], 40);
    }
}
