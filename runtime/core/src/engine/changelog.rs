//! The changelog: where each view lives among a source's partitions, the
//! records that carry every committed view change to a topic beside the
//! source (through the spool, in the commit's own atomic batch), and the
//! restore of a partition's views from such a topic.
//!
//! The engine knows no topic: a [`Changelog`] (the Kafka source's) names
//! each view's partition and makes the records; the engine hands it what
//! each commit changed, per serving plugin and partition, followed by the
//! source offsets that partition's views now cover.

use super::*;
use projector_common::sync::Recover;

/// Where a plugin's views live among the partitions of the source, and
/// the records that follow them to a changelog.
pub trait Changelog: Send + Sync {
    /// The partition `key` of `plugin` lives on: the partition its events
    /// arrive on. `None`: the plugin's views are not placed.
    fn partition(&self, plugin: &str, key: &str) -> Option<u32>;

    /// Whether this instance owns `partition` now: only its owner writes
    /// its changelog (a standby's or a former owner's records would
    /// overwrite the owner's once the topic is compacted).
    fn owns(&self, partition: u32) -> bool;

    /// The record of one view change (`None`: the view was deleted) of
    /// `plugin`'s `partition`, made by a commit that leaves that partition
    /// at `position` (see [`Changelog::offsets`]). `None`: no changelog.
    fn view(
        &self,
        plugin: &str,
        partition: u32,
        key: &str,
        view: Option<&ViewRecord>,
        position: u64,
    ) -> Option<OutboxRecord>;

    /// The record of one kept change of a view's history (`entry`: its
    /// stored form; `None`: the sweep dropped it), so a restore brings the
    /// history back too. `None`: no changelog, or none for histories.
    fn history(
        &self,
        plugin: &str,
        partition: u32,
        key: &str,
        seq: u64,
        entry: Option<&[u8]>,
    ) -> Option<OutboxRecord> {
        let _ = (plugin, partition, key, seq, entry);
        None
    }

    /// The record of an answer `plugin` recorded for replay (`key`: its
    /// service and path; `kept`: its stored form) while events of
    /// `partition` were applied, so the partition's restore brings it
    /// back. `None`: no changelog, or none for recorded answers.
    fn fetched(
        &self,
        plugin: &str,
        partition: u32,
        key: &[u8],
        kept: &[u8],
    ) -> Option<OutboxRecord> {
        let _ = (plugin, partition, key, kept);
        None
    }

    /// The record that closes a commit's changes of `plugin`'s
    /// `partition`: the next source offset of each source there.
    fn offsets(
        &self,
        plugin: &str,
        partition: u32,
        offsets: &[(String, u64)],
    ) -> Option<OutboxRecord>;
}

/// One number that grows with a partition's offsets: their sum. A restore
/// takes a change only when its position is not below one already taken,
/// so a change sent late by a former owner never overwrites a newer one.
pub fn position(offsets: &[(String, u64)]) -> u64 {
    offsets.iter().map(|(_, o)| *o).sum()
}

impl Pending {
    /// The next offsets of namespace `ns`, by partition, sorted by source.
    fn by_partition(&self, ns: &str) -> BTreeMap<u32, Vec<(String, u64)>> {
        let mut out: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
        for ((n, source, partition), next) in &self.offsets {
            if n == ns {
                out.entry(*partition)
                    .or_default()
                    .push((source.clone(), *next));
            }
        }
        for list in out.values_mut() {
            list.sort();
        }
        out
    }
}

impl Engine {
    /// Send every committed view change along `changelog` from now on.
    pub fn set_changelog(&self, changelog: Option<Arc<dyn Changelog>>) {
        *self.changelog.write().recover() = changelog;
    }

    /// The partition `key` of `plugin` lives on, when views are placed.
    pub fn partition_of(&self, plugin: &str, key: &str) -> Option<u32> {
        self.changelog
            .read()
            .recover()
            .as_ref()
            .and_then(|c| c.partition(plugin, key))
    }

    /// The changelog, when a source set one.
    pub(super) fn changelog(&self) -> Option<Arc<dyn Changelog>> {
        self.changelog.read().recover().clone()
    }

    /// Spool the changelog records of `p`'s changes `dirty` (taken from its
    /// view cache) and of its offsets that moved since the last commit.
    pub(super) fn spool_changes(
        &self,
        changelog: &dyn Changelog,
        pending: &mut Pending,
        writer: &mut Writer,
        p: &Projection,
        dirty: &[CompactString],
        views: &ViewCache,
    ) -> Result<()> {
        let name = p.name();
        let offsets = pending.by_partition(&p.ns);
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        for key in dirty {
            let Some(partition) = changelog.partition(name, key) else {
                continue;
            };
            if !changelog.owns(partition) {
                continue;
            }
            let at = offsets.get(&partition).map_or(0, |o| position(o));
            let view = match views.get(key) {
                Some(v) => v.as_deref(),
                None => unreachable!("a dirty key stays in the view cache until committed"),
            };
            if let Some(record) = changelog.view(name, partition, key, view, at) {
                writer.outbox(record)?;
                touched.insert(partition);
            }
        }
        for (partition, list) in offsets {
            if !changelog.owns(partition) {
                continue;
            }
            let k = (p.ns.clone(), partition);
            let moved = pending.marked.get(&k) != Some(&list);
            if !moved && !touched.contains(&partition) {
                continue;
            }
            if let Some(record) = changelog.offsets(name, partition, &list) {
                writer.outbox(record)?;
                pending.marked.insert(k, list);
            }
        }
        Ok(())
    }

    /// After a switch of generations the changelog holds the previous
    /// one's views: spool every view of `to` (now serving) and a
    /// tombstone for each view only `from` has, then each partition's
    /// offsets, so a restore brings back the serving generation's views.
    /// Pages of 4096 views, each its own commit.
    pub(super) fn spool_generation(
        &self,
        changelog: &dyn Changelog,
        pending: &mut Pending,
        from: &Projection,
        to: &Projection,
    ) -> Result<u64> {
        let name = to.name();
        let offsets = pending.by_partition(&to.ns);
        let at = |partition: u32| offsets.get(&partition).map_or(0, |o| position(o));
        let mut spooled = 0;
        for (ns, deleted) in [(&to.ns, false), (&from.ns, true)] {
            let mut after: Option<String> = None;
            loop {
                let page = self.store.views_page(ns, after.as_deref(), 4096)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                let mut writer = self.store.writer();
                for (key, view) in &page {
                    if deleted && self.store.view(&to.ns, key)?.is_some() {
                        continue;
                    }
                    let Some(partition) = changelog.partition(name, key) else {
                        continue;
                    };
                    if !changelog.owns(partition) {
                        continue;
                    }
                    let view = (!deleted).then_some(view);
                    if let Some(r) = changelog.view(name, partition, key, view, at(partition)) {
                        writer.outbox(r)?;
                        spooled += 1;
                    }
                }
                self.store.commit(writer)?;
            }
        }
        let mut writer = self.store.writer();
        for (partition, list) in offsets {
            if !changelog.owns(partition) {
                continue;
            }
            if let Some(r) = changelog.offsets(name, partition, &list) {
                writer.outbox(r)?;
            }
            pending.marked.insert((to.ns.clone(), partition), list);
        }
        self.store.commit(writer)?;
        Ok(spooled)
    }

    /// Put `plugin`'s views restored from its changelog into the store,
    /// each in its changelog form (`None`: deleted), in one atomic commit,
    /// dropping what the caches held of them. Call [`Engine::restored`]
    /// once every view of a partition is in.
    pub fn restore_views(&self, plugin: &str, views: &[(&str, Option<&[u8]>)]) -> Result<()> {
        let p = self.projection(plugin)?;
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        let mut writer = self.store.writer();
        for (key, value) in views {
            writer.put_changelog_view(&p.ns, key, *value)?;
        }
        self.store.commit(writer)?;
        {
            let mut cache = p.views.write().recover();
            for (key, _) in views {
                cache.remove(key);
            }
        }
        let mut rendered = p.rendered.write().recover();
        for (key, _) in views {
            if let Some((state, answer)) = rendered.entries.remove(*key) {
                rendered.bytes -= key.len() + state.len() + answer.get().len();
            }
        }
        Ok(())
    }

    /// Put `plugin`'s history entries restored from its changelog into
    /// the store (`None`: pruned), in one atomic commit.
    pub fn restore_history(
        &self,
        plugin: &str,
        entries: &[(&str, u64, Option<&[u8]>)],
    ) -> Result<()> {
        let p = self.projection(plugin)?;
        let mut writer = self.store.writer();
        for (key, seq, value) in entries {
            match value {
                Some(bytes) => writer.put_history_encoded(&p.ns, key, *seq, bytes),
                None => writer.remove_history(&p.ns, key, *seq),
            }
        }
        self.store.commit(writer)?;
        Ok(())
    }

    /// `plugin`'s views of each partition are restored up to its offsets
    /// (the next offset of each source), in one atomic commit: its offsets
    /// move there, and so does the decode check's where it was behind, so
    /// the source resumes from them and not from the beginning.
    pub fn restored(&self, plugin: &str, partitions: &[(u32, Vec<(String, u64)>)]) -> Result<()> {
        let p = self.projection(plugin)?;
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        let mut writer = self.store.writer();
        for (partition, offsets) in partitions {
            for (source, next) in offsets {
                writer.set_offset(&p.ns, source, *partition, *next);
                let decoded = pending.offset(&self.store, DECODE_NS, source, *partition)?;
                if decoded < *next {
                    writer.set_offset(DECODE_NS, source, *partition, *next);
                    pending
                        .offsets
                        .insert((DECODE_NS.into(), source.clone(), *partition), *next);
                }
            }
        }
        self.store.commit(writer)?;
        let mut applied = self.applied.write().recover();
        for (partition, offsets) in partitions {
            for (source, next) in offsets {
                let k = (p.ns.clone(), source.clone(), *partition);
                pending.offsets.insert(k.clone(), *next);
                applied.insert(k, *next);
            }
            let mut list = offsets.clone();
            list.sort();
            pending.marked.insert((p.ns.clone(), *partition), list);
        }
        drop(applied);
        self.progress.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The next offset `plugin`'s views of `partition` cover in each
    /// source it has offsets for.
    pub fn partition_offsets(&self, plugin: &str, partition: u32) -> Result<Vec<(String, u64)>> {
        let p = self.projection(plugin)?;
        let pending = self.write.lock().recover();
        let mut out: BTreeMap<String, u64> = self
            .store
            .offsets(&p.ns)?
            .into_iter()
            .filter(|(_, part, _)| *part == partition)
            .map(|(s, _, o)| (s, o))
            .collect();
        for ((ns, source, part), next) in &pending.offsets {
            if *ns == p.ns && *part == partition {
                out.insert(source.clone(), *next);
            }
        }
        Ok(out.into_iter().collect())
    }
}
