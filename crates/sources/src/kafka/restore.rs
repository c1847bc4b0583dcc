//! Restore on assignment: a partition newly assigned whose changelog is
//! ahead of the store gets its views from the changelog, and its offsets
//! from the changelog's last offsets record, before the source resumes
//! there (not from the beginning).
//!
//! The changelog is read from its start (the mock cluster and a topic not
//! yet compacted hold every record; a compacted one holds the last per
//! key): per key the record of the highest position wins, a change counts
//! only once an offsets record at or past its position follows it (what
//! a commit had not finished sending is left out), and the views are as of
//! the highest offsets record. A change a former owner sends late carries
//! an older position than the newer owner's, so it never overwrites one.

use super::config::{header, KafkaConfig};
use super::placement::OffsetsValue;
use super::stats::KafkaStats;
use projector_core::engine::Engine;
use projector_core::store::{changelog_view, ViewRecord};
use projector_host::sync::Recover;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Records read from the end to decide whether a restore is needed.
const TAIL: i64 = 10_000;

/// Views put into the store per commit while restoring.
const CHUNK: usize = 50_000;

/// What one restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Changelog records read.
    pub records: u64,
    /// Views put or deleted.
    pub views: u64,
    /// The offsets the partition resumes from.
    pub offsets: Vec<(String, u64)>,
}

/// One changelog record as the restore reads it.
struct Change {
    key: Vec<u8>,
    position: u64,
    kind: Kind,
}

enum Kind {
    View(Option<Vec<u8>>),
    Offsets(OffsetsValue),
    /// Not a record of this encoding: counted, skipped.
    Unknown,
}

fn change<M: Message>(m: &M) -> Change {
    let mut kind = None;
    let mut position = 0;
    if let Some(h) = m.headers() {
        for h in h.iter() {
            let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            match h.key {
                header::KIND => kind = Some(v.into_owned()),
                header::POSITION => position = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let kind = match kind.as_deref() {
        Some("view") => Kind::View(m.payload().map(<[u8]>::to_vec)),
        Some("offsets") => m
            .payload()
            .and_then(|p| serde_json::from_slice::<OffsetsValue>(p).ok())
            .filter(|v| v.v == 1)
            .map_or(Kind::Unknown, Kind::Offsets),
        _ => Kind::Unknown,
    };
    Change {
        key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
        position,
        kind,
    }
}

/// A reader of one changelog partition, assigned from an offset on.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    partition: i32,
    /// The next offset it reads (set by [`Reader::seek`]).
    next: i64,
}

impl Reader {
    fn new(config: &KafkaConfig, topic: &str, partition: i32) -> anyhow::Result<Self> {
        let group = format!("{}.restore", config.group_id);
        let consumer: BaseConsumer = config
            .client(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.max.bytes", "52428800"),
                ("max.partition.fetch.bytes", "10485760"),
            ])
            .create()?;
        Ok(Reader {
            consumer,
            topic: topic.into(),
            partition,
            next: -1,
        })
    }

    /// The partition's (low, high) watermarks; (0, 0) when the topic is missing.
    fn watermarks(&self) -> (i64, i64) {
        self.consumer
            .fetch_watermarks(&self.topic, self.partition, Duration::from_secs(10))
            .unwrap_or((0, 0))
    }

    /// Read from `offset` on.
    fn seek(&mut self, offset: i64) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        self.next = offset;
        Ok(())
    }

    /// Records in order up to `to` (exclusive), at most `max` of them.
    fn read(&mut self, to: i64, max: u64, mut each: impl FnMut(Change)) -> anyhow::Result<u64> {
        let mut n = 0;
        let mut last_progress = Instant::now();
        while self.next < to && n < max {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    if m.offset() < self.next {
                        continue;
                    }
                    self.next = m.offset() + 1;
                    n += 1;
                    each(change(&m));
                }
                Some(Err(e)) => tracing::debug!("reading {}: {e}", self.topic),
                None => {}
            }
            if last_progress.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "reading changelog {}/{}: no record for 30 s at offset {} of {to}",
                    self.topic,
                    self.partition,
                    self.next
                );
            }
        }
        Ok(n)
    }
}

/// One plugin's changelog partition followed into the store: by a
/// restore, to its end, or by a standby, as it grows. A restore of a
/// partition a standby followed goes on from where the standby was.
pub(crate) struct Follower {
    plugin: String,
    partition: i32,
    reader: Reader,
    fold: Fold,
}

impl Follower {
    /// A follower of `plugin`'s changelog `partition` from its start.
    pub(crate) fn new(config: &KafkaConfig, plugin: &str, partition: i32) -> anyhow::Result<Self> {
        let mut reader = Reader::new(config, &config.changelog_topic(plugin), partition)?;
        let (low, _) = reader.watermarks();
        reader.seek(low)?;
        Ok(Follower {
            plugin: plugin.into(),
            partition,
            reader,
            fold: Fold::default(),
        })
    }

    /// Read up to `max` records, to the end seen now, and put into the
    /// store what offsets records closed; (records read, views put).
    pub(crate) fn step(&mut self, engine: &Engine, max: u64) -> anyhow::Result<(u64, u64)> {
        let (_, high) = self.reader.watermarks();
        let fold = &mut self.fold;
        let mut records = 0;
        let mut views = 0;
        while self.reader.next < high && records < max {
            let want = (max - records).min(CHUNK as u64);
            records += self.reader.read(high, want, |c| fold.take(c))?;
            if fold.ready.len() >= CHUNK {
                views += fold.flush(engine, &self.plugin, self.partition)?;
            }
        }
        views += fold.flush(engine, &self.plugin, self.partition)?;
        Ok((records, views))
    }

    /// Whether it has read the changelog to its end as seen now.
    fn at_end(&self) -> bool {
        self.reader.next >= self.reader.watermarks().1
    }
}

/// Followers by (plugin, partition), shared by the standby thread and the
/// restores of the consumer's thread.
pub(crate) type Followers = std::sync::Mutex<HashMap<(String, i32), Follower>>;

/// Restore `partition` of every loaded plugin whose changelog is ahead of
/// the store (going on from a standby's follower where there is one).
pub(crate) fn restore_partition(
    engine: &Engine,
    config: &KafkaConfig,
    partition: i32,
    stats: &KafkaStats,
    followers: &Followers,
) -> anyhow::Result<Vec<(String, Restored)>> {
    let mut out = Vec::new();
    for p in engine.projections() {
        let name = p.name().to_string();
        let started = Instant::now();
        let standby = followers
            .lock()
            .recover()
            .remove(&(name.clone(), partition));
        let follower = match standby {
            Some(f) => Some(f),
            None if behind(engine, config, &name, partition)? => {
                Some(Follower::new(config, &name, partition)?)
            }
            None => None,
        };
        let Some(mut follower) = follower else {
            continue;
        };
        let from_standby = follower.fold.offsets.is_some();
        tracing::info!(
            plugin = name,
            partition,
            from_standby,
            "restoring from the changelog"
        );
        let mut r = Restored::default();
        while !follower.at_end() {
            let (records, views) = follower.step(engine, u64::MAX)?;
            r.records += records;
            r.views += views;
        }
        r.offsets = engine.partition_offsets(&name, partition as u32)?;
        let secs = started.elapsed();
        stats.restores.fetch_add(1, Ordering::Relaxed);
        stats
            .restore_records
            .fetch_add(r.records, Ordering::Relaxed);
        stats.restore_views.fetch_add(r.views, Ordering::Relaxed);
        stats
            .restore_ms
            .fetch_add(secs.as_millis() as u64, Ordering::Relaxed);
        {
            let mut per = stats.restored.lock().recover();
            let e = per.entry(partition).or_default();
            e.0 += r.records;
            e.1 += r.views;
            e.2 += secs.as_millis() as u64;
        }
        tracing::info!(
            plugin = name,
            partition,
            records = r.records,
            views = r.views,
            seconds = secs.as_secs_f64(),
            offsets = ?r.offsets,
            from_standby,
            "restored from the changelog"
        );
        out.push((name, r));
    }
    Ok(out)
}

/// Whether `plugin`'s changelog of `partition` is ahead of the store, by
/// its newest offsets record (read from its tail).
fn behind(
    engine: &Engine,
    config: &KafkaConfig,
    plugin: &str,
    partition: i32,
) -> anyhow::Result<bool> {
    let mut reader = Reader::new(config, &config.changelog_topic(plugin), partition)?;
    let (low, high) = reader.watermarks();
    if high <= low {
        return Ok(false);
    }
    let have: HashMap<String, u64> = engine
        .partition_offsets(plugin, partition as u32)?
        .into_iter()
        .collect();
    let tail_from = low.max(high - TAIL);
    reader.seek(tail_from)?;
    let mut newest: Option<(u64, OffsetsValue)> = None;
    reader.read(high, u64::MAX, |c| {
        if let Kind::Offsets(v) = c.kind {
            if newest.as_ref().is_none_or(|(p, _)| c.position >= *p) {
                newest = Some((c.position, v));
            }
        }
    })?;
    Ok(match newest {
        Some((_, v)) => v
            .offsets
            .iter()
            .any(|(s, o)| have.get(s).copied().unwrap_or(0) < *o),
        // No offsets record in the tail: only a whole read can tell.
        None => tail_from > low,
    })
}

/// The changelog folded as it is read: the views closed by an offsets
/// record wait in `ready` to be put into the store with that record's
/// offsets.
#[derive(Default)]
struct Fold {
    /// Per key, the position of the change taken last.
    positions: HashMap<Vec<u8>, u64>,
    /// Changes taken, not yet in the store.
    ready: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Changes not yet followed by an offsets record at their position.
    waiting: Vec<(Vec<u8>, u64, Option<Vec<u8>>)>,
    /// The newest offsets record: its position and value.
    offsets: Option<(u64, OffsetsValue)>,
    /// The newest offsets record is not in the store yet.
    unsaved: bool,
}

impl Fold {
    fn take(&mut self, c: Change) {
        match c.kind {
            Kind::View(value) => self.waiting.push((c.key, c.position, value)),
            Kind::Offsets(v) => {
                let at = c.position;
                let mut rest = Vec::new();
                for (key, position, value) in self.waiting.drain(..) {
                    if position > at {
                        rest.push((key, position, value));
                        continue;
                    }
                    let newer = self.positions.get(&key).is_none_or(|p| *p <= position);
                    if newer {
                        self.positions.insert(key.clone(), position);
                        self.ready.insert(key, value);
                    }
                }
                self.waiting = rest;
                if self.offsets.as_ref().is_none_or(|(p, _)| at >= *p) {
                    self.offsets = Some((at, v));
                    self.unsaved = true;
                }
            }
            Kind::Unknown => {}
        }
    }

    /// Put the ready views and the newest offsets into the store; the
    /// views put.
    fn flush(&mut self, engine: &Engine, plugin: &str, partition: i32) -> anyhow::Result<u64> {
        let mut count = 0;
        let mut views: Vec<(String, Option<ViewRecord>)> =
            Vec::with_capacity(self.ready.len().min(CHUNK));
        for (key, value) in self.ready.drain() {
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            let view = match value {
                Some(bytes) => Some(changelog_view(&bytes)?),
                None => None,
            };
            views.push((key, view));
            if views.len() == CHUNK {
                engine.restore_views(plugin, &views)?;
                count += views.len() as u64;
                views.clear();
            }
        }
        if !views.is_empty() {
            engine.restore_views(plugin, &views)?;
            count += views.len() as u64;
        }
        if let (true, Some((_, v))) = (self.unsaved, &self.offsets) {
            let offsets: Vec<(String, u64)> =
                v.offsets.iter().map(|(s, o)| (s.clone(), *o)).collect();
            engine.restored(plugin, partition as u32, &offsets)?;
            self.unsaved = false;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: &str, position: u64, value: &str) -> Change {
        Change {
            key: key.as_bytes().to_vec(),
            position,
            kind: Kind::View(Some(value.as_bytes().to_vec())),
        }
    }

    fn offsets(position: u64) -> Change {
        Change {
            key: Vec::new(),
            position,
            kind: Kind::Offsets(OffsetsValue {
                v: 1,
                offsets: [("kafka:t".to_string(), position)].into(),
            }),
        }
    }

    fn fold(changes: Vec<Change>) -> (Vec<(String, String)>, Option<u64>) {
        let mut f = Fold::default();
        for c in changes {
            f.take(c);
        }
        let mut views: Vec<(String, String)> = f
            .ready
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).expect("utf8"),
                    String::from_utf8(v.expect("a value")).expect("utf8"),
                )
            })
            .collect();
        views.sort();
        (views, f.offsets.map(|(p, _)| p))
    }

    #[test]
    fn the_last_change_per_key_up_to_the_newest_offsets_wins() {
        let (views, at) = fold(vec![
            view("a", 10, "a1"),
            view("b", 10, "b1"),
            offsets(10),
            view("a", 20, "a2"),
            offsets(20),
            // A commit whose offsets record never came: left out.
            view("b", 30, "b3"),
        ]);
        assert_eq!(
            views,
            [("a".into(), "a2".into()), ("b".into(), "b1".into())]
        );
        assert_eq!(at, Some(20));
    }

    #[test]
    fn a_former_owners_late_change_does_not_overwrite_a_newer_one() {
        let (views, at) = fold(vec![
            view("a", 20, "new"),
            offsets(20),
            // A former owner's spool sends an older commit late.
            view("a", 15, "old"),
            offsets(15),
        ]);
        assert_eq!(views, [("a".into(), "new".into())]);
        assert_eq!(at, Some(20));
    }

    #[test]
    fn compacted_away_offsets_records_do_not_lose_changes() {
        // Compaction kept "a"'s change at 10 but not the offsets record at 10.
        let (views, at) = fold(vec![view("a", 10, "a1"), view("b", 40, "b"), offsets(40)]);
        assert_eq!(views, [("a".into(), "a1".into()), ("b".into(), "b".into())]);
        assert_eq!(at, Some(40));
    }
}
