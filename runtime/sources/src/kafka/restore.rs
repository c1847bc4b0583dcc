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
use projector_common::sync::Recover;
use projector_core::source::SourceHost;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records read from the end to decide whether a restore is needed.
const TAIL: i64 = 4096;

/// Views put into the store per commit while restoring.
const CHUNK: usize = 50_000;

/// Views a restore holds before it hands them to be put into the store
/// (a view changed again later is then put again).
const HANDED: usize = 100_000;

/// One changelog record as the restore reads it.
struct Change {
    key: Vec<u8>,
    position: u64,
    kind: Kind,
}

enum Kind {
    View(Option<Vec<u8>>),
    /// A view's history entry (`None`: pruned); the change's key is the
    /// entry's (`placement::history_key`).
    History(Option<Vec<u8>>),
    /// An answer recorded for replay; the change's key is its
    /// (`placement::fetched_key`).
    Fetched(Vec<u8>),
    Offsets(OffsetsValue),
    /// Not a record of this encoding: counted, skipped.
    Unknown,
}

fn change<M: Message>(m: &M) -> Change {
    let mut kind: Option<&[u8]> = None;
    let mut position = 0;
    if let Some(h) = m.headers() {
        for h in h.iter() {
            match h.key {
                header::KIND => kind = h.value,
                header::POSITION => {
                    position = h
                        .value
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                }
                _ => {}
            }
        }
    }
    let kind = match kind {
        Some(b"view") => Kind::View(m.payload().map(<[u8]>::to_vec)),
        Some(b"history") => Kind::History(m.payload().map(<[u8]>::to_vec)),
        Some(b"fetch") => m
            .payload()
            .map_or(Kind::Unknown, |p| Kind::Fetched(p.to_vec())),
        Some(b"offsets") => m
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

/// A reader of partitions of one changelog topic, each from an offset on.
struct Reader {
    consumer: Arc<BaseConsumer>,
    topic: String,
    /// The next offset each assigned partition reads (set by [`Reader::seek`]).
    next: BTreeMap<i32, i64>,
}

/// A consumer for changelog readers (no group is joined).
pub(crate) fn changelog_consumer(config: &KafkaConfig) -> anyhow::Result<Arc<BaseConsumer>> {
    let group = format!("{}.restore", config.group_id);
    let consumer: BaseConsumer = config
        .consumer_client(&[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            // An offset no longer there (retention) reads from the start.
            ("auto.offset.reset", "earliest"),
            ("fetch.max.bytes", "52428800"),
            ("max.partition.fetch.bytes", "10485760"),
        ])
        .create()?;
    Ok(Arc::new(consumer))
}

impl Reader {
    fn new(consumer: Arc<BaseConsumer>, topic: &str) -> Self {
        Reader {
            consumer,
            topic: topic.into(),
            next: BTreeMap::new(),
        }
    }

    /// A partition's (low, high) watermarks; (0, 0) when the topic is missing.
    fn watermarks(&self, partition: i32) -> (i64, i64) {
        self.consumer
            .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
            .unwrap_or((0, 0))
    }

    /// Read these partitions, each from its offset (and no other).
    fn seek(&mut self, from: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in from {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer.assign(&tpl)?;
        self.next = from.clone();
        Ok(())
    }

    /// Records of each partition in order, up to its offset in `to`
    /// (exclusive), at most `max` in all.
    fn read(
        &mut self,
        to: &BTreeMap<i32, i64>,
        max: u64,
        mut each: impl FnMut(i32, Change),
    ) -> anyhow::Result<u64> {
        // Partitions not read to their end yet.
        let mut left = to
            .iter()
            .filter(|(p, t)| self.next.get(p).is_some_and(|n| n < t))
            .count();
        let mut n = 0;
        let mut last_progress = Instant::now();
        while n < max && left > 0 {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    if m.topic() != self.topic {
                        continue;
                    }
                    let p = m.partition();
                    let (Some(next), Some(end)) = (self.next.get_mut(&p), to.get(&p)) else {
                        continue;
                    };
                    if m.offset() < *next {
                        continue;
                    }
                    if m.offset() >= *end {
                        // Past its end (compaction may have removed the
                        // records up to it): this partition is read.
                        if *next < *end {
                            *next = *end;
                            left -= 1;
                        }
                        continue;
                    }
                    *next = m.offset() + 1;
                    if *next >= *end {
                        left -= 1;
                    }
                    n += 1;
                    each(p, change(&m));
                }
                Some(Err(e)) => tracing::debug!("reading {}: {e}", self.topic),
                None => {}
            }
            if last_progress.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "reading changelog {}: no record for 30 s (at {:?}, reading to {to:?})",
                    self.topic,
                    self.next
                );
            }
        }
        Ok(n)
    }
}

/// One plugin's changelog partition followed into the store as it grows,
/// by a standby; a restore of that partition goes on from where it was.
pub(crate) struct Follower {
    plugin: String,
    partition: i32,
    reader: Reader,
    fold: Fold,
    /// The changelog's end when last read.
    high: i64,
}

impl Follower {
    /// A follower of `plugin`'s changelog `partition` from its start.
    pub(crate) fn new(config: &KafkaConfig, plugin: &str, partition: i32) -> anyhow::Result<Self> {
        let mut reader = Reader::new(changelog_consumer(config)?, &config.changelog_topic(plugin));
        let (low, _) = reader.watermarks(partition);
        reader.seek(&[(partition, low)].into())?;
        Ok(Follower {
            plugin: plugin.into(),
            partition,
            reader,
            fold: Fold::default(),
            high: low,
        })
    }

    /// Read up to `max` records, to the end seen now, and put into the
    /// store what offsets records closed; (records read, views put).
    pub(crate) fn step(&mut self, host: &dyn SourceHost, max: u64) -> anyhow::Result<(u64, u64)> {
        let (_, high) = self.reader.watermarks(self.partition);
        self.high = self.high.max(high);
        let to: BTreeMap<i32, i64> = [(self.partition, high)].into();
        let fold = &mut self.fold;
        let mut records = 0;
        let mut views = 0;
        while self
            .reader
            .next
            .get(&self.partition)
            .is_some_and(|n| *n < high)
            && records < max
        {
            let want = (max - records).min(CHUNK as u64);
            records += self.reader.read(&to, want, |_, c| fold.take(c))?;
            if fold.ready.len() >= CHUNK || fold.kept() >= CHUNK {
                views += fold.flush(host, &self.plugin, self.partition)?;
            }
        }
        views += fold.flush(host, &self.plugin, self.partition)?;
        Ok((records, views))
    }

    /// Changelog records not read yet, as of the end last seen.
    pub(crate) fn behind(&self) -> i64 {
        let next = self.reader.next.get(&self.partition).copied();
        (self.high - next.unwrap_or(self.high)).max(0)
    }
}

/// Followers by (plugin, partition), shared by the standby thread and the
/// restores of the consumer's thread.
pub(crate) type Followers = std::sync::Mutex<HashMap<(String, i32), Follower>>;

/// Restore `partitions` of every loaded plugin whose changelog is ahead
/// of the store: a partition a standby followed goes on from where the
/// standby was; the others are read all at once, by one consumer.
pub(crate) fn restore_partitions(
    host: &dyn SourceHost,
    config: &KafkaConfig,
    partitions: &BTreeSet<i32>,
    stats: &KafkaStats,
    followers: &Followers,
) -> anyhow::Result<()> {
    let consumer = changelog_consumer(config)?;
    for name in host.plugins() {
        let started = Instant::now();
        let mut done: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
        for partition in partitions {
            let taken = followers
                .lock()
                .recover()
                .remove(&(name.clone(), *partition));
            if let Some(mut f) = taken {
                let (records, views) = f.step(host, u64::MAX)?;
                done.insert(*partition, (records, views));
            }
        }
        let rest: BTreeSet<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !done.contains_key(p))
            .collect();
        let mut reader = Reader::new(consumer.clone(), &config.changelog_topic(&name));
        let behind = behind(host, &mut reader, &name, &rest)?;
        if !behind.is_empty() {
            tracing::info!(plugin = name, partitions = ?behind.keys().collect::<Vec<_>>(), "restoring from the changelog");
            for (partition, counts) in restore_all(host, &mut reader, &name, &behind, stats)? {
                done.insert(partition, counts);
            }
        }
        let secs = started.elapsed();
        if done.is_empty() {
            continue;
        }
        let (mut records, mut views) = (0, 0);
        for (partition, (r, v)) in &done {
            records += r;
            views += v;
            let mut per = stats.restored.lock().recover();
            let e = per.entry(*partition).or_default();
            e.0 += r;
            e.1 += v;
            e.2 += secs.as_millis() as u64;
        }
        stats
            .restores
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        stats.restore_records.fetch_add(records, Ordering::Relaxed);
        stats.restore_views.fetch_add(views, Ordering::Relaxed);
        stats
            .restore_ms
            .fetch_add(secs.as_millis() as u64, Ordering::Relaxed);
        tracing::info!(
            plugin = name,
            partitions = ?done.keys().collect::<Vec<_>>(),
            records,
            views,
            seconds = secs.as_secs_f64(),
            "restored from the changelog"
        );
    }
    Ok(())
}

/// Which of `partitions` of `plugin`'s changelog are ahead of the store,
/// by their newest offsets record (read from their tails), with their
/// (low, high) watermarks.
fn behind(
    host: &dyn SourceHost,
    reader: &mut Reader,
    plugin: &str,
    partitions: &BTreeSet<i32>,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let marks: BTreeMap<i32, (i64, i64)> = partitions
        .iter()
        .map(|p| (*p, reader.watermarks(*p)))
        .filter(|(_, (low, high))| high > low)
        .collect();
    let from: BTreeMap<i32, i64> = marks
        .iter()
        .map(|(p, (low, high))| (*p, (*low).max(high - TAIL)))
        .collect();
    let to: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
    reader.seek(&from)?;
    let mut newest: BTreeMap<i32, (u64, OffsetsValue)> = BTreeMap::new();
    reader.read(&to, u64::MAX, |p, c| {
        if let Kind::Offsets(v) = c.kind {
            if newest.get(&p).is_none_or(|(at, _)| c.position >= *at) {
                newest.insert(p, (c.position, v));
            }
        }
    })?;
    let mut out = BTreeMap::new();
    for (p, (low, high)) in marks {
        let have: HashMap<String, u64> = host
            .partition_offsets(plugin, p as u32)?
            .into_iter()
            .collect();
        let ahead = match newest.get(&p) {
            Some((_, v)) => v
                .offsets
                .iter()
                .any(|(s, o)| have.get(s).copied().unwrap_or(0) < *o),
            // No offsets record in the tail: only a whole read can tell.
            None => from[&p] > low,
        };
        if ahead {
            out.insert(p, (low, high));
        }
    }
    Ok(out)
}

/// Read `partitions` of `plugin`'s changelog whole, at once, folding each
/// into the store; (records read, views put) per partition.
fn restore_all(
    host: &dyn SourceHost,
    reader: &mut Reader,
    plugin: &str,
    partitions: &BTreeMap<i32, (i64, i64)>,
    stats: &KafkaStats,
) -> anyhow::Result<BTreeMap<i32, (u64, u64)>> {
    let from: BTreeMap<i32, i64> = partitions.iter().map(|(p, (l, _))| (*p, *l)).collect();
    let to: BTreeMap<i32, i64> = partitions.iter().map(|(p, (_, h))| (*p, *h)).collect();
    let total: i64 = partitions.values().map(|(l, h)| h - l).sum();
    reader.seek(&from)?;
    let mut folds: BTreeMap<i32, Fold> = partitions.keys().map(|p| (*p, Fold::default())).collect();
    let mut counts: BTreeMap<i32, (u64, u64)> = partitions.keys().map(|p| (*p, (0, 0))).collect();
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut read = 0u64;
    // Reading and putting overlap: this thread reads and folds, another
    // puts what is ready into the store; the offsets go in once every
    // view is in.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Ready>>(2);
        let putter = std::thread::Builder::new()
            .name("projector-restore".into())
            .spawn_scoped(scope, move || -> anyhow::Result<()> {
                for chunk in rx {
                    put_views(host, plugin, chunk.into_iter())?;
                }
                Ok(())
            })?;
        // Hand what is ready over; false once the putting thread is gone.
        let hand_over =
            |folds: &mut BTreeMap<i32, Fold>, counts: &mut BTreeMap<i32, (u64, u64)>| -> bool {
                let mut chunk = Vec::new();
                for (p, f) in folds.iter_mut() {
                    counts.entry(*p).or_default().1 += f.ready.len() as u64;
                    chunk.extend(f.ready.drain());
                }
                chunk.is_empty() || tx.send(chunk).is_ok()
            };
        let mut handed = true;
        loop {
            let n = reader.read(&to, CHUNK as u64, |p, c| {
                if let (Some(f), Some(k)) = (folds.get_mut(&p), counts.get_mut(&p)) {
                    f.take(c);
                    k.0 += 1;
                }
            })?;
            read += n;
            *stats.restore_progress.lock().recover() = Some((read, total as u64));
            if folds.values().map(Fold::kept).sum::<usize>() >= HANDED {
                for f in folds.values_mut() {
                    f.put_kept(host, plugin)?;
                }
            }
            if folds.values().map(|f| f.ready.len()).sum::<usize>() >= HANDED {
                handed = hand_over(&mut folds, &mut counts);
                if !handed {
                    break;
                }
            }
            if shown.elapsed() >= Duration::from_secs(2) {
                shown = Instant::now();
                let rate = read as f64 / started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    plugin,
                    "restoring: {:.0}% of {total} changelog records, {rate:.0} records/s, about {:.0} s left",
                    100.0 * read as f64 / total.max(1) as f64,
                    (total as f64 - read as f64).max(0.0) / rate.max(1.0)
                );
            }
            if n == 0 {
                break;
            }
        }
        if handed {
            hand_over(&mut folds, &mut counts);
        }
        drop(tx);
        putter
            .join()
            .map_err(|_| anyhow::anyhow!("the restore's putting thread panicked"))??;
        Ok(())
    })?;
    *stats.restore_progress.lock().recover() = None;
    for f in folds.values_mut() {
        f.put_kept(host, plugin)?;
    }
    let offsets: Vec<(u32, Vec<(String, u64)>)> = folds
        .iter_mut()
        .filter_map(|(p, f)| Some((*p as u32, f.unsaved_offsets()?)))
        .collect();
    if !offsets.is_empty() {
        host.restored(plugin, &offsets)?;
    }
    Ok(counts)
}

/// A view ready to be put: its key and changelog form (`None`: deleted).
type Ready = (Vec<u8>, Option<Vec<u8>>);

/// The changelog folded as it is read: the views closed by an offsets
/// record wait in `ready` to be put into the store with that record's
/// offsets.
#[derive(Default)]
struct Fold {
    /// Per key, the position of the change taken last.
    positions: FxHashMap<Vec<u8>, u64>,
    /// Changes taken, not yet in the store (their changelog form).
    ready: FxHashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Changes not yet followed by an offsets record at their position.
    waiting: Vec<(Vec<u8>, u64, Option<Vec<u8>>)>,
    /// The newest offsets record: its position and value.
    offsets: Option<(u64, OffsetsValue)>,
    /// The newest offsets record is not in the store yet.
    unsaved: bool,
    /// History entries read, not yet in the store (each entry's own key;
    /// `None`: pruned).
    history: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Recorded answers read, not yet in the store (each one's own key).
    fetched: Vec<(Vec<u8>, Vec<u8>)>,
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
                    match self.positions.get_mut(&key) {
                        Some(p) if *p > position => continue,
                        Some(p) => *p = position,
                        None => {
                            self.positions.insert(key.clone(), position);
                        }
                    }
                    self.ready.insert(key, value);
                }
                self.waiting = rest;
                if self.offsets.as_ref().is_none_or(|(p, _)| at >= *p) {
                    self.offsets = Some((at, v));
                    self.unsaved = true;
                }
            }
            // Entries are written once and never change: each is taken
            // as it comes (a pruned one's tombstone after it).
            Kind::History(value) => self.history.push((c.key, value)),
            // The restore keeps the newer of two answers for a path.
            Kind::Fetched(value) => self.fetched.push((c.key, value)),
            Kind::Unknown => {}
        }
    }

    /// History entries and recorded answers read, not yet in the store.
    fn kept(&self) -> usize {
        self.history.len() + self.fetched.len()
    }

    /// Put the history entries and recorded answers read into the store.
    fn put_kept(&mut self, host: &dyn SourceHost, plugin: &str) -> anyhow::Result<()> {
        for chunk in self.history.chunks(CHUNK) {
            let entries: Vec<(&str, u64, Option<&[u8]>)> = chunk
                .iter()
                .filter_map(|(k, v)| {
                    let (key, seq) = super::placement::parse_history_key(k)?;
                    Some((key, seq, v.as_deref()))
                })
                .collect();
            host.restore_history(plugin, &entries)?;
        }
        self.history.clear();
        for chunk in self.fetched.chunks(CHUNK) {
            let entries: Vec<(&[u8], &[u8])> = chunk
                .iter()
                .filter_map(|(k, v)| Some((super::placement::parse_fetched_key(k)?, v.as_slice())))
                .collect();
            host.restore_fetched(plugin, &entries)?;
        }
        self.fetched.clear();
        Ok(())
    }

    /// The newest offsets, when not in the store yet (marked saved).
    fn unsaved_offsets(&mut self) -> Option<Vec<(String, u64)>> {
        let (true, Some((_, v))) = (self.unsaved, &self.offsets) else {
            return None;
        };
        self.unsaved = false;
        Some(v.offsets.iter().map(|(s, o)| (s.clone(), *o)).collect())
    }

    /// Put the ready views and the newest offsets into the store; the
    /// views put.
    fn flush(
        &mut self,
        host: &dyn SourceHost,
        plugin: &str,
        partition: i32,
    ) -> anyhow::Result<u64> {
        let count = put_views(host, plugin, self.ready.drain())?;
        self.put_kept(host, plugin)?;
        if let Some(offsets) = self.unsaved_offsets() {
            host.restored(plugin, &[(partition as u32, offsets)])?;
        }
        Ok(count)
    }
}

/// Put views in their changelog form into the store, in commits of
/// [`CHUNK`]; how many.
fn put_views(
    host: &dyn SourceHost,
    plugin: &str,
    views: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
) -> anyhow::Result<u64> {
    let mut count = 0;
    let mut chunk: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(CHUNK);
    let mut put = |chunk: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>| -> anyhow::Result<()> {
        let refs: Vec<(&str, Option<&[u8]>)> = chunk
            .iter()
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, v.as_deref())))
            .collect();
        host.restore_views(plugin, &refs)?;
        count += refs.len() as u64;
        chunk.clear();
        Ok(())
    };
    for view in views {
        chunk.push(view);
        if chunk.len() == CHUNK {
            put(&mut chunk)?;
        }
    }
    if !chunk.is_empty() {
        put(&mut chunk)?;
    }
    Ok(count)
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

    #[test]
    fn a_flush_puts_the_ready_views_and_the_newest_offsets_into_the_host_once() {
        let host = crate::fake::FakeHost::new(&["inbox"], &[]);
        let mut f = Fold::default();
        for c in [
            view("a", 10, "a1"),
            view("b", 10, "b1"),
            offsets(10),
            view("c", 30, "c3"),
        ] {
            f.take(c);
        }
        assert_eq!(f.flush(host.as_ref(), "inbox", 2).expect("flush"), 2);
        // Nothing new: a second flush puts nothing and records no offsets again.
        assert_eq!(f.flush(host.as_ref(), "inbox", 2).expect("flush"), 0);
        let held = host.held.lock().recover();
        let views: Vec<(&str, &[u8])> = held
            .views
            .iter()
            .map(|((_, k), v)| (k.as_str(), v.as_deref().expect("a value")))
            .collect();
        assert_eq!(views, [("a", &b"a1"[..]), ("b", &b"b1"[..])]);
        assert_eq!(held.restore_calls, [2], "one put for the two views");
        assert_eq!(
            held.restored.get(&("inbox".to_string(), 2)),
            Some(&vec![("kafka:t".to_string(), 10)]),
            "the offsets record, on the view partition"
        );
    }

    #[test]
    fn history_entries_and_their_tombstones_go_into_the_host_as_read() {
        use crate::kafka::placement::history_key;
        let host = crate::fake::FakeHost::new(&["inbox"], &[]);
        let mut f = Fold::default();
        let entry = |key: &str, seq: u64, value: Option<&str>| Change {
            key: history_key(key, seq),
            position: 0,
            kind: Kind::History(value.map(|v| v.as_bytes().to_vec())),
        };
        for c in [
            entry("u:s", 1, Some("e1")),
            entry("u:s", 2, Some("e2")),
            // The sweep pruned the first.
            entry("u:s", 1, None),
        ] {
            f.take(c);
        }
        f.flush(host.as_ref(), "inbox", 0).expect("flush");
        let held = host.held.lock().recover();
        let kept: Vec<(&str, u64, Option<&[u8]>)> = held
            .history
            .iter()
            .map(|((_, k, seq), v)| (k.as_str(), *seq, v.as_deref()))
            .collect();
        assert_eq!(kept, [("u:s", 1, None), ("u:s", 2, Some(&b"e2"[..]))]);
    }

    #[test]
    fn recorded_answers_go_into_the_host_by_service_and_path() {
        use crate::kafka::placement::fetched_key;
        let host = crate::fake::FakeHost::new(&["subscriptions"], &[]);
        let mut f = Fold::default();
        let answer = |key: &[u8], value: &str| Change {
            key: fetched_key(key),
            position: 0,
            kind: Kind::Fetched(value.as_bytes().to_vec()),
        };
        f.take(answer(b"billing\0/billing/a1", "v1"));
        f.take(answer(b"domains\0/domains/a1", "v2"));
        // A key that is not a recorded answer's is skipped.
        f.take(Change {
            key: b"u1:a1".to_vec(),
            position: 0,
            kind: Kind::Fetched(b"odd".to_vec()),
        });
        assert_eq!(f.kept(), 3);
        f.flush(host.as_ref(), "subscriptions", 0).expect("flush");
        assert_eq!(f.kept(), 0);
        let held = host.held.lock().recover();
        let kept: Vec<(&[u8], &[u8])> = held
            .fetched
            .iter()
            .map(|((_, k), v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            kept,
            [
                (&b"billing\0/billing/a1"[..], &b"v1"[..]),
                (&b"domains\0/domains/a1"[..], &b"v2"[..])
            ]
        );
    }

    #[test]
    fn views_go_into_the_host_in_chunks() {
        let host = crate::fake::FakeHost::new(&["inbox"], &[]);
        let views = (0..CHUNK + 3).map(|i| (format!("k{i}").into_bytes(), None));
        assert_eq!(
            put_views(host.as_ref(), "inbox", views).expect("put"),
            (CHUNK + 3) as u64
        );
        assert_eq!(host.held.lock().recover().restore_calls, [CHUNK, 3]);
    }
}
