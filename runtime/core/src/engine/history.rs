//! Views as they were: with `history` set for a plugin, every commit keeps
//! each changed view's new state beside it ([`crate::store::HistoryEntry`]:
//! when, which plugin version, the offsets then), so a view can be read
//! as of a time or a position, and its changes listed. A paced sweep
//! prunes each view's history to its bounds (the newest `versions`
//! changes, none older than `ms`, the newest change of a live view always
//! kept); a deleted or expired view's history goes once its deletion is
//! older than `ms`.

use super::*;
use crate::store::{AnswerUsed, HistoryEntry, Kept};
use projector_common::sync::Recover;
use serde::{Deserialize, Serialize};

/// How much of each view's past a plugin keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryBounds {
    /// Changes kept per view, newest first (at least 1).
    pub versions: u32,
    /// Age past which a change is dropped, in ms (the newest change of a
    /// live view stays).
    pub ms: u64,
}

/// A projection's history: its bounds, where the sweep is, what it pruned.
pub(super) struct Keeping {
    pub(super) bounds: Option<HistoryBounds>,
    /// The last store key the sweep looked at (`None`: start over).
    cursor: Mutex<Option<Vec<u8>>>,
    pruned: AtomicU64,
    /// Per view changed since the last commit, the fetched answers its
    /// change used (plugins that record their fetches).
    answers: Mutex<HashMap<String, Vec<AnswerUsed>>>,
}

impl Keeping {
    pub(super) fn new(bounds: Option<HistoryBounds>) -> Self {
        Keeping {
            bounds,
            cursor: Mutex::default(),
            pruned: AtomicU64::new(0),
            answers: Mutex::default(),
        }
    }
}

/// When a view is read as of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// A time, in ms since the epoch: the last change committed then or before.
    Time(i64),
    /// A position, (source, partition, offset) each: the last change
    /// committed when no named partition was past its offset.
    Position(Vec<(String, u32, u64)>),
}

/// A view as it was after one change.
#[derive(Debug, Clone)]
pub struct Past {
    /// When the change was committed, ms since the epoch.
    pub at_ms: i64,
    /// The plugin version that made it (first 16 hex digits of its id).
    pub version: String,
    /// The namespace's next offsets then: (source, partition, next).
    pub offsets: Vec<(String, u32, u64)>,
    /// The view then; `None`: it had been deleted (or had expired).
    pub view: Option<ReadView>,
    /// The fetched answers the change was built from (plugins that record
    /// their fetches).
    pub answers: Vec<AnswerUsed>,
}

impl Projection {
    /// The history it keeps of its views (`None`: none).
    pub fn history(&self) -> Option<HistoryBounds> {
        self.keeping.bounds
    }

    /// Whether its history names the fetched answers each change used:
    /// it keeps a history, records its fetches and serves (a generation
    /// being built keeps no history).
    pub(super) fn keeps_answers(&self) -> bool {
        self.keeping.bounds.is_some() && self.code.records_fetches() && !self.is_building()
    }

    /// Add `answers` to those the next change of `key` is kept with (each
    /// answer once).
    pub(super) fn answers_used(&self, key: &str, answers: Vec<AnswerUsed>) {
        if answers.is_empty() {
            return;
        }
        let mut all = self.keeping.answers.lock().recover();
        let kept = all.entry(key.to_string()).or_default();
        for a in answers {
            if !kept.contains(&a) {
                kept.push(a);
            }
        }
    }

    /// History entries the sweep dropped since start.
    pub fn history_pruned(&self) -> u64 {
        self.keeping.pruned.load(Ordering::Relaxed)
    }
}

/// What one step of the history sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries dropped.
    pub dropped: u64,
    /// Whether every generation's sweep reached the end of its history.
    pub passed: bool,
}

impl Engine {
    /// A seq for the changes of a commit: microseconds since the epoch,
    /// above every one given before.
    fn history_seq(&self) -> u64 {
        let now = (now_ms().max(0) as u64).saturating_mul(1000);
        let mut last = self.history_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.history_seq.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Keep, in `writer`, the new state of each of `dirty` views of `p`
    /// (when `p` keeps a history), and send each entry along the
    /// changelog when `p` serves and this instance owns the view.
    pub(super) fn keep_history(
        &self,
        writer: &mut Writer,
        pending: &Pending,
        p: &Projection,
        dirty: &[CompactString],
        views: &ViewCache,
    ) -> Result<()> {
        // Every change the answers were used for is committed now.
        let mut answers = std::mem::take(&mut *p.keeping.answers.lock().recover());
        // A generation being built keeps none: its changes are the log's
        // replayed now, not what readers saw then.
        if p.keeping.bounds.is_none() || dirty.is_empty() || p.is_building() {
            return Ok(());
        }
        let changelog = self.changelog().filter(|_| !p.is_shadow());
        let seq = self.history_seq();
        let mut offsets: Vec<(String, u32, u64)> = pending
            .offsets
            .iter()
            .filter(|((ns, _, _), _)| *ns == p.ns)
            .map(|((_, source, partition), next)| (source.clone(), *partition, *next))
            .collect();
        offsets.sort();
        let mut entry = HistoryEntry {
            at_ms: (seq / 1000) as i64,
            version: p.code.id().chars().take(16).collect(),
            offsets,
            view: None,
            answers: Vec::new(),
        };
        for key in dirty {
            entry.answers = answers.remove(key.as_str()).unwrap_or_default();
            entry.view = match views.get(key) {
                Some(Some(record)) => Some(crate::store::encode_view(record, Vec::new())),
                _ => None,
            };
            let bytes = crate::store::encode_history(&entry);
            writer.put_history_encoded(&p.ns, key, seq, &bytes);
            if let Some(record) =
                self.history_record(changelog.as_deref(), p, key, seq, Some(&bytes))
            {
                writer.outbox(record)?;
            }
        }
        Ok(())
    }

    /// The changelog record of `p`'s history entry `seq` of `key`, when
    /// this instance owns the view's partition.
    fn history_record(
        &self,
        changelog: Option<&dyn Changelog>,
        p: &Projection,
        key: &str,
        seq: u64,
        entry: Option<&[u8]>,
    ) -> Option<crate::store::OutboxRecord> {
        let c = changelog?;
        let partition = c.partition(p.name(), key)?;
        c.owns(partition)
            .then(|| c.history(p.name(), partition, key, seq, entry))
            .flatten()
    }

    /// `plugin`'s view of `key` as it was at `at`, rendered at `now_ms` by
    /// the version that made it when it is loaded (else by the serving
    /// one); `None` when no change of it is kept from then or before.
    /// Fails when the plugin keeps no history.
    pub fn view_as_of(
        &self,
        plugin: &str,
        key: &str,
        at: &AsOf,
        now_ms: i64,
    ) -> Result<Option<Past>> {
        let serving = self.kept_history(plugin)?;
        self.commit()?;
        // The serving generation's history, then (for times before it
        // joined the live path) that of the generation kept beside it.
        let mut generations = vec![serving.clone()];
        generations.extend(self.shadows(plugin));
        for p in generations {
            if let Some(past) = self.as_of_in(&p, key, at, now_ms)? {
                return Ok(Some(past));
            }
        }
        Ok(None)
    }

    /// [`Engine::view_as_of`] in generation `p`.
    fn as_of_in(
        &self,
        p: &Arc<Projection>,
        key: &str,
        at: &AsOf,
        now_ms: i64,
    ) -> Result<Option<Past>> {
        let found = match at {
            AsOf::Time(ms) => {
                let seq = (ms.max(&0).saturating_add(1) as u64).saturating_mul(1000) - 1;
                self.store.history_at(&p.ns, key, seq, |_| true)?
            }
            AsOf::Position(position) => {
                let fits = |e: &HistoryEntry| {
                    position.iter().all(|(source, partition, offset)| {
                        e.offsets
                            .iter()
                            .find(|(s, p, _)| s == source && p == partition)
                            .is_none_or(|(_, _, next)| next <= offset)
                    })
                };
                self.store.history_at(&p.ns, key, u64::MAX, fits)?
            }
        };
        found.map(|(_, e)| self.past(p, key, e, now_ms)).transpose()
    }

    /// Every change of `plugin`'s view of `key` kept now, oldest first,
    /// each rendered at `now_ms` (see [`Engine::view_as_of`]).
    pub fn view_history(&self, plugin: &str, key: &str, now_ms: i64) -> Result<Vec<Past>> {
        let p = self.kept_history(plugin)?;
        self.commit()?;
        self.store
            .history(&p.ns, key)?
            .into_iter()
            .map(|(_, e)| self.past(&p, key, e, now_ms))
            .collect()
    }

    /// The serving generation of `plugin`, when it keeps a history.
    fn kept_history(&self, plugin: &str) -> Result<Arc<Projection>> {
        let p = self.projection(plugin)?;
        if p.keeping.bounds.is_none() {
            return Err(Error::NoHistory(plugin.into()));
        }
        Ok(p)
    }

    /// A kept change, rendered by the generation of the version that made
    /// it when one is loaded, else by `serving`.
    fn past(
        &self,
        serving: &Arc<Projection>,
        key: &str,
        e: HistoryEntry,
        now_ms: i64,
    ) -> Result<Past> {
        let record = e.record()?;
        let maker = self
            .all()
            .into_iter()
            .find(|g| g.name() == serving.name() && g.code.id().starts_with(&e.version))
            .unwrap_or_else(|| serving.clone());
        let view = match record {
            None => None,
            Some(r) => {
                let body = match (&r.view.status, &r.view.state) {
                    (Status::Valid, Some(state)) => {
                        Some(maker.render_uncached(key, state, now_ms)?)
                    }
                    _ => None,
                };
                Some(ReadView {
                    status: r.view.status,
                    versions: r.view.versions,
                    updated_ms: r.updated_ms,
                    body,
                })
            }
        };
        Ok(Past {
            at_ms: e.at_ms,
            version: e.version,
            offsets: e.offsets,
            view,
            answers: e.answers,
        })
    }

    /// One step of the history sweep: in each generation that keeps a
    /// history, look at up to `page` entries from where its last step
    /// stopped and drop those past its bounds at `now_ms`.
    pub(crate) fn sweep_history(&self, now_ms: i64, page: usize) -> Result<Pruned> {
        let page = page.max(2);
        let mut out = Pruned {
            dropped: 0,
            passed: true,
        };
        for p in self.all() {
            let Some(bounds) = p.keeping.bounds else {
                continue;
            };
            let after = p.keeping.cursor.lock().recover().clone();
            let mut entries = self.store.history_page(&p.ns, after.as_deref(), page)?;
            let full = entries.len() == page;
            // A view's entries may go on past the page: its last one waits
            // for the next step, which starts at its first.
            if full {
                let last = entries.last().map(|e| e.key.clone());
                let whole: Vec<_> = entries
                    .iter()
                    .filter(|e| Some(&e.key) != last.as_ref())
                    .cloned()
                    .collect();
                if !whole.is_empty() {
                    entries = whole;
                }
            }
            let next = match entries.last() {
                Some(e) if full => Some(e.store_key.clone()),
                _ => None,
            };
            out.passed &= next.is_none();
            *p.keeping.cursor.lock().recover() = next;
            let mut drop = Vec::new();
            let mut i = 0;
            while i < entries.len() {
                let key = &entries[i].key;
                let n = entries[i..].iter().take_while(|e| &e.key == key).count();
                drop.extend(prunable(&entries[i..i + n], bounds, now_ms));
                i += n;
            }
            if drop.is_empty() {
                continue;
            }
            let changelog = self.changelog().filter(|_| !p.is_shadow());
            let mut pending = self.write.lock().recover();
            let writer = pending.writer.get_or_insert_with(|| self.store.writer());
            for (key, seq) in &drop {
                writer.remove_history(&p.ns, key, *seq);
                // A tombstone, so the compacted changelog forgets it too.
                if let Some(r) = self.history_record(changelog.as_deref(), &p, key, *seq, None) {
                    writer.outbox(r)?;
                }
            }
            self.commit_locked(&mut pending)?;
            p.keeping
                .pruned
                .fetch_add(drop.len() as u64, Ordering::Relaxed);
            out.dropped += drop.len() as u64;
        }
        Ok(out)
    }
}

/// Which of one view's entries (oldest first: store key, view key, seq,
/// committed at, deleted) its bounds drop at `now_ms`: beyond the newest
/// `versions`, or older than `ms`; the newest of a live view stays, and a
/// deleted view's all go once the deletion is older than `ms`.
fn prunable(entries: &[Kept], bounds: HistoryBounds, now_ms: i64) -> Vec<(String, u64)> {
    let old = |at: i64| now_ms.saturating_sub(at) > bounds.ms as i64;
    let keep = bounds.versions.max(1) as usize;
    let n = entries.len();
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| match *i + 1 == n {
            true => e.deleted && old(e.at_ms),
            false => n - i > keep || old(e.at_ms),
        })
        .map(|(_, e)| (e.key.clone(), e.seq))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(of: &[(i64, bool)]) -> Vec<Kept> {
        of.iter()
            .enumerate()
            .map(|(i, (at, deleted))| Kept {
                store_key: Vec::new(),
                key: "k".into(),
                seq: i as u64,
                at_ms: *at,
                deleted: *deleted,
            })
            .collect()
    }

    fn seqs(dropped: Vec<(String, u64)>) -> Vec<u64> {
        dropped.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn a_views_history_is_pruned_to_its_bounds() {
        let b = HistoryBounds {
            versions: 3,
            ms: 1000,
        };
        // Five recent changes: the two oldest beyond three versions.
        let recent = entries(&[
            (9000, false),
            (9100, false),
            (9200, false),
            (9300, false),
            (9400, false),
        ]);
        assert_eq!(seqs(prunable(&recent, b, 9500)), [0, 1]);
        // Old changes go, but the newest of a live view stays.
        let aged = entries(&[(1000, false), (2000, false), (9000, false)]);
        assert_eq!(seqs(prunable(&aged, b, 9500)), [0, 1]);
        let all_old = entries(&[(1000, false), (2000, false)]);
        assert_eq!(seqs(prunable(&all_old, b, 9500)), [0]);
        // A deleted view: kept while its deletion is recent, then all of it.
        let deleted = entries(&[(8800, false), (9000, true)]);
        assert_eq!(seqs(prunable(&deleted, b, 9500)), [] as [u64; 0]);
        assert_eq!(seqs(prunable(&deleted, b, 10_500)), [0, 1]);
    }
}
