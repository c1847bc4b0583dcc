//! Membership: every instance publishes who it is, where its API answers
//! and which partitions it owns and restores, keyed by its id, to the
//! group's members topic (`{group}.members`, one partition; compacted on
//! a real broker), every second and at once after a rebalance; it leaves
//! a last record when it stops. Every instance reads the topic from its
//! start and keeps the newest record of each, so each knows the owner of
//! every partition and routes a read there ([`Router`]).
//!
//! A member that has not published for [`LIVE_MS`] is taken for gone (a
//! SIGKILLed instance), so its partitions are unavailable, and reads of
//! them are answered 503 with `Retry-After`, until the group has
//! reassigned them and the new owner has published.

use super::config::KafkaConfig;
use super::placement::Placement;
use super::states::{self, PartitionState};
use super::stats::KafkaStats;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::now_ms;
use projector_core::source::{Owner, Router};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// A member not heard from for this long is taken for gone.
pub(crate) const LIVE_MS: i64 = 6_000;

/// How often a member publishes.
const EVERY: Duration = Duration::from_millis(1000);

/// One instance as it published itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) instance: String,
    /// Base URL of its API; `None` until it listens.
    pub(crate) url: Option<String>,
    pub(crate) owned: Vec<u32>,
    pub(crate) restoring: Vec<u32>,
    pub(crate) standby: Vec<u32>,
    pub(crate) at_ms: i64,
    /// Its last record: it stopped.
    #[serde(default)]
    pub(crate) left: bool,
    /// Each partition it owns, restores or stands by for, with its lag.
    #[serde(default)]
    pub(crate) states: BTreeMap<u32, PartitionState>,
}

/// The membership of the group, as this instance sees it.
pub(crate) struct Members {
    pub(crate) me: String,
    config: KafkaConfig,
    placement: Arc<Placement>,
    stats: Arc<KafkaStats>,
    url: OnceLock<String>,
    table: RwLock<BTreeMap<String, Member>>,
    /// Publish at once (set after a rebalance).
    pub(crate) dirty: AtomicBool,
    /// Partitions followed as a standby (from their changelogs), with
    /// the changelog records not read yet (`None` until first read).
    pub(crate) standby: Mutex<BTreeMap<u32, Option<i64>>>,
    /// The members topic has been read up to where it ended at start:
    /// the table knows the others.
    pub(crate) loaded: AtomicBool,
}

impl Members {
    pub(crate) fn new(
        config: &KafkaConfig,
        placement: Arc<Placement>,
        stats: Arc<KafkaStats>,
    ) -> Self {
        // A static member keeps its name across restarts.
        let me = config.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{:x}",
                std::process::id(),
                now_ms() as u64 ^ (u64::from(std::process::id()) << 40)
            )
        });
        Members {
            me,
            config: config.clone(),
            placement,
            stats,
            url: config
                .advertised_url
                .clone()
                .map_or_else(OnceLock::new, |u| {
                    let l = OnceLock::new();
                    let _ = l.set(u);
                    l
                }),
            table: RwLock::default(),
            dirty: AtomicBool::new(true),
            standby: Mutex::default(),
            loaded: AtomicBool::new(false),
        }
    }

    /// The source's config.
    pub(crate) fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The partitions this instance stands by for (none without
    /// `standby_replicas`): those whose owner is followed by this instance
    /// among the `standby_replicas` next live instances ordered by id.
    pub(crate) fn standby_for(&self) -> BTreeSet<u32> {
        let mut ids: Vec<String> = self.live().into_iter().map(|m| m.instance).collect();
        ids.sort();
        let owners = self
            .owners()
            .into_iter()
            .map(|(p, owner)| (p, owner.instance));
        standing(&ids, &self.me, self.config.standby_replicas, owners)
            .difference(&self.owned().into_iter().collect())
            .copied()
            .collect()
    }

    /// Whether `partition` is being restored or is owned here (checked by
    /// the standby under the followers' lock, which a restore takes
    /// after marking its partitions restoring).
    pub(crate) fn claimed(&self, partition: u32) -> bool {
        self.stats
            .restoring
            .lock()
            .recover()
            .contains(&(partition as i32))
            || self.owned().contains(&partition)
    }

    /// Partitions no live instance owns now.
    pub(crate) fn orphaned(&self) -> BTreeSet<u32> {
        let owners = self.owners();
        (0..self.placement.partitions)
            .filter(|p| !owners.contains_key(p))
            .collect()
    }

    /// Owned partitions now (of the first source topic: the others are
    /// assigned alike).
    fn owned(&self) -> Vec<u32> {
        let topic = &self.config.topics[0];
        self.stats
            .partitions
            .lock()
            .recover()
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p as u32)
            .collect()
    }

    fn me_now(&self, left: bool) -> Member {
        let standby = self.standby.lock().recover().clone();
        Member {
            instance: self.me.clone(),
            url: self.url.get().cloned(),
            owned: if left { Vec::new() } else { self.owned() },
            restoring: self.restoring(),
            standby: standby.keys().copied().collect(),
            at_ms: now_ms(),
            left,
            states: match left {
                true => BTreeMap::new(),
                false => states::local(&self.stats, &self.config.topics[0], &standby),
            },
        }
    }

    /// Publish and read the members topic until `stop`; a last record
    /// says this instance left.
    pub(crate) fn run(&self, stop: &Shutdown) -> anyhow::Result<()> {
        let topic = self.config.members_topic();
        let producer: BaseProducer = self
            .config
            .client(&[("linger.ms", "0"), ("message.timeout.ms", "5000")])
            .create()?;
        let group = format!("{}.members.{}", self.config.group_id, self.me);
        let consumer: BaseConsumer = self
            .config
            .consumer_client(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
            ])
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        // Where the topic ends now: the table is loaded once read that far.
        let end = match consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5)) {
            Ok((_, high)) => high,
            Err(e) => {
                tracing::warn!("the end of the members topic {topic}: {e}");
                0
            }
        };
        if end <= 0 {
            self.loaded.store(true, Ordering::Relaxed);
        }
        let publish = |left: bool| {
            let me = self.me_now(left);
            if let Ok(value) = serde_json::to_vec(&me) {
                let r = BaseRecord::<str, Vec<u8>>::to(&topic)
                    .partition(0)
                    .key(self.me.as_str())
                    .payload(&value);
                if let Err((e, _)) = producer.send(r) {
                    tracing::debug!("publishing membership: {e}");
                }
            }
            // Known at once here, whatever the broker does.
            self.table.write().recover().insert(me.instance.clone(), me);
        };
        let mut last = std::time::Instant::now() - EVERY;
        while !stop.is_stopped() {
            if last.elapsed() >= EVERY || self.dirty.swap(false, Ordering::Relaxed) {
                last = std::time::Instant::now();
                publish(false);
            }
            producer.poll(Duration::ZERO);
            while let Some(m) = consumer.poll(Duration::from_millis(50)) {
                match m {
                    Ok(m) => {
                        if m.offset() + 1 >= end {
                            self.loaded.store(true, Ordering::Relaxed);
                        }
                        let Some(member) = m
                            .payload()
                            .and_then(|p| serde_json::from_slice::<Member>(p).ok())
                        else {
                            continue;
                        };
                        if member.instance == self.me {
                            continue;
                        }
                        let mut table = self.table.write().recover();
                        let newer = table
                            .get(&member.instance)
                            .is_none_or(|old| old.at_ms <= member.at_ms);
                        if newer {
                            table.insert(member.instance.clone(), member);
                        }
                    }
                    Err(e) => {
                        tracing::debug!("reading membership: {e}");
                        break;
                    }
                }
            }
        }
        publish(true);
        let _ = producer.flush(Duration::from_secs(2));
        let _ = consumer.unassign();
        Ok(())
    }

    /// Live members (this one included), newest first per partition.
    fn live(&self) -> Vec<Member> {
        let now = now_ms();
        let mut out: Vec<Member> = self
            .table
            .read()
            .recover()
            .values()
            .filter(|m| !m.left && (m.instance == self.me || now - m.at_ms <= LIVE_MS))
            .cloned()
            .collect();
        out.sort_by_key(|m| std::cmp::Reverse(m.at_ms));
        out
    }

    /// The owner of each partition, by the newest claims.
    fn owners(&self) -> BTreeMap<u32, Member> {
        let mut out = BTreeMap::new();
        for m in self.live() {
            for p in &m.owned {
                out.entry(*p).or_insert_with(|| m.clone());
            }
        }
        out
    }
}

impl Members {
    /// Each partition as the fleet sees it: its owner and the owner's
    /// state of it (lag, caught up, restore progress), and its standbys
    /// with their changelog lag.
    fn by_partition(&self) -> Vec<serde_json::Value> {
        let live = self.live();
        let owners = self.owners();
        (0..self.placement.partitions)
            .map(|p| {
                let owner = owners.get(&p);
                let at_owner = owner.and_then(|m| m.states.get(&p));
                let standbys: Vec<_> = live
                    .iter()
                    .filter(|m| m.standby.contains(&p))
                    .map(|m| {
                        let s = m.states.get(&p);
                        json!({
                            "instance": m.instance,
                            "lag": s.and_then(|s| s.lag),
                            "caught_up": s.is_some_and(|s| s.caught_up),
                        })
                    })
                    .collect();
                let state = match (owner, at_owner) {
                    (None, _) => json!("unowned"),
                    (Some(m), None) if m.restoring.contains(&p) => json!("restoring"),
                    (Some(_), None) => json!("owned"),
                    (Some(_), Some(s)) => json!(s.state),
                };
                json!({
                    "partition": p,
                    "owner": owner.map(|m| &m.instance),
                    "state": state,
                    "lag": at_owner.and_then(|s| s.lag),
                    "caught_up": at_owner.is_some_and(|s| s.caught_up),
                    "restore": at_owner.and_then(|s| s.restore)
                        .map(|(read, total)| json!({"read": read, "total": total})),
                    "standbys": standbys,
                })
            })
            .collect()
    }
}

/// Which of `owners`' partitions `me` stands by for: those whose owner is
/// followed by `me` among the `replicas` next of `ids` (sorted, live,
/// `me` among them) after it.
fn standing(
    ids: &[String],
    me: &str,
    replicas: u32,
    owners: impl Iterator<Item = (u32, String)>,
) -> BTreeSet<u32> {
    let replicas = (replicas as usize).min(ids.len().saturating_sub(1));
    owners
        .filter(|(_, owner)| {
            let Some(i) = ids.iter().position(|id| id == owner) else {
                return false;
            };
            (1..=replicas).any(|j| ids[(i + j) % ids.len()] == me)
        })
        .map(|(p, _)| p)
        .collect()
}

impl Router for Members {
    fn instance(&self) -> String {
        self.me.clone()
    }

    fn owner(&self, plugin: &str, key: &str, stale_ok: bool) -> Owner {
        let p = self.placement.partition_of(plugin, key);
        if self.stats.restoring.lock().recover().contains(&(p as i32)) {
            return Owner::Unavailable {
                reason: "restoring",
                message: format!("partition {p} is being restored from the changelog here"),
            };
        }
        if self.owned().contains(&p) {
            return Owner::Local;
        }
        if stale_ok && self.standby.lock().recover().contains_key(&p) {
            return Owner::Standby;
        }
        match self.owners().remove(&p) {
            Some(m) if m.instance != self.me && m.restoring.contains(&p) => Owner::Unavailable {
                reason: "restoring",
                message: format!(
                    "partition {p} is being restored from the changelog by instance {}",
                    m.instance
                ),
            },
            Some(Member {
                instance,
                url: Some(url),
                ..
            }) if instance != self.me => Owner::Remote { instance, url },
            _ => Owner::Unavailable {
                reason: "rebalancing",
                message: format!("no live instance owns partition {p} now (a rebalance?)"),
            },
        }
    }

    fn table(&self) -> serde_json::Value {
        let members: Vec<_> = self
            .live()
            .into_iter()
            .map(|m| {
                json!({
                    "instance": m.instance,
                    "url": m.url,
                    "me": m.instance == self.me,
                    "owned": m.owned,
                    "restoring": m.restoring,
                    "standby": m.standby,
                    "seen_ms_ago": (now_ms() - m.at_ms).max(0),
                })
            })
            .collect();
        let by_partition = self.by_partition();
        let routes: BTreeMap<String, String> = self
            .owners()
            .into_iter()
            .map(|(p, m)| (p.to_string(), m.instance))
            .collect();
        json!({
            "instance": self.me,
            "partitions": self.placement.partitions,
            "members": members,
            "routes": routes,
            "by_partition": by_partition,
        })
    }

    fn restoring(&self) -> Vec<u32> {
        self.stats
            .restoring
            .lock()
            .recover()
            .iter()
            .map(|p| *p as u32)
            .collect()
    }

    fn advertise(&self, url: &str) {
        if self.url.set(url.to_string()).is_ok() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::standing;

    fn owners<'a>(of: &'a [(u32, &'a str)]) -> impl Iterator<Item = (u32, String)> + 'a {
        of.iter().map(|(p, o)| (*p, o.to_string()))
    }

    #[test]
    fn each_partition_is_stood_by_for_by_the_next_instances_after_its_owner() {
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let of = [(0, "a"), (1, "b"), (2, "c"), (3, "a")];
        // One standby: the next instance after the owner, around the ring.
        assert_eq!(standing(&ids, "b", 1, owners(&of)), [0, 3].into());
        assert_eq!(standing(&ids, "a", 1, owners(&of)), [2].into());
        // Two of three: every instance stands by for every partition it
        // does not own, so any takeover is a standby's.
        assert_eq!(standing(&ids, "b", 2, owners(&of)), [0, 2, 3].into());
        // More replicas than other instances: as many as there are.
        assert_eq!(standing(&ids, "c", 5, owners(&of)), [0, 1, 3].into());
        // None asked, or alone.
        assert!(standing(&ids, "b", 0, owners(&of)).is_empty());
        assert!(standing(&["a".into()], "a", 1, owners(&of)).is_empty());
        // An owner not among the live instances has no standby by this rule.
        assert!(standing(&ids, "a", 2, owners(&[(7, "gone")])).is_empty());
    }
}
