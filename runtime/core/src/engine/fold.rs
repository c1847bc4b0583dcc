//! The batch fold: records decoded once, routed to view keys by the
//! plugin, grouped by key and folded through the version rules and
//! `batch.apply`.

use super::group::Groups;
use super::*;
use crate::store::AnswerUsed;
use projector_common::sync::Recover;

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records in the batch.
    pub records: u64,
    /// Records whose envelope did not decode, dead-lettered once (not again on a replay).
    pub decode_errors: u64,
    /// Per projection name.
    pub counters: Vec<(String, Counters)>,
    /// The engine committed at the end of the batch (its interval had
    /// passed): this batch and everything before it is durable.
    pub committed: bool,
}

impl BatchSummary {
    /// Counts summed over every projection.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for (_, c) in &self.counters {
            t.add(c);
        }
        t
    }
}

/// A decoded batch of one (source, partition).
pub(super) struct BatchIn<'a> {
    pub(super) source: &'a str,
    pub(super) partition: u32,
    pub(super) records: &'a [Record],
    pub(super) decoded: &'a [Result<Event, DecodeError>],
    pub(super) route: Route<'a>,
    /// Where views live, when placed: a key elsewhere is misrouted.
    pub(super) placed: Option<&'a dyn Changelog>,
}

/// One projection's share of one batch.
pub(super) struct BatchCtx<'a> {
    pub(super) projection: &'a Projection,
    pub(super) store: &'a Store,
    pub(super) source: &'a str,
    pub(super) partition: u32,
    /// Which delivery of these events this is (1: the first).
    pub(super) attempt: u32,
    /// A retry runs its event for the key that failed only.
    pub(super) only_key: Option<&'a str>,
    pub(super) retry: &'a RetryConfig,
    pub(super) route: Route<'a>,
    /// Where views live, when placed: an event whose key lives on another
    /// partition than the one it arrived on is dead-lettered `misrouted`.
    pub(super) placed: Option<&'a dyn Changelog>,
    /// A live run its breaker watches: each key's failures are counted as
    /// it is folded, and once the breaker opens the other keys are left
    /// and the run is abandoned (nothing of it is written).
    pub(super) watch: bool,
}

/// One key's result: its new view (if it changed) and its failures.
pub(super) struct KeyResult<'e, 'k> {
    pub(super) key: &'k str,
    pub(super) change: Option<Option<ViewRecord>>,
    pub(super) counters: Counters,
    pub(super) failures: Vec<Failure<'e>>,
    /// The fetched answers its calls used, when the projection keeps them
    /// in its history ([`Projection::keeps_answers`]).
    pub(super) answers: Vec<AnswerUsed>,
}

/// An event that failed for a key: (event, offset, error, transient).
pub(super) type Failure<'e> = (&'e Event, u64, plugin::Error, bool);

/// What the verdicts on one key's events add up to.
struct Tally<'e> {
    counters: Counters,
    failures: Vec<Failure<'e>>,
    /// An event applied to or invalidated the view.
    changed: bool,
    /// The view's update time: the latest applied event's, or the one it had.
    latest: i64,
}

impl<'e> Tally<'e> {
    /// Nothing counted yet of `received` events, for a view last updated
    /// at `updated_ms`.
    fn new(received: usize, updated_ms: i64) -> Self {
        Tally {
            counters: Counters {
                received: received as u64,
                ..Default::default()
            },
            failures: Vec::new(),
            changed: false,
            latest: updated_ms,
        }
    }

    /// Count the `verdicts` of the plugin named `name` on the events of
    /// `events` at `indexes`.
    fn count(
        &mut self,
        indexes: &[usize],
        events: &[(u64, &'e Event)],
        verdicts: Vec<Verdict<CallError<plugin::Error>>>,
        name: &str,
    ) {
        for (&i, verdict) in indexes.iter().zip(verdicts) {
            let (offset, event) = events[i];
            match verdict {
                Verdict::Applied => {
                    self.counters.applied += 1;
                    self.latest = self.latest.max(event.time_ms);
                    self.changed = true;
                }
                Verdict::Invalidated => {
                    self.counters.invalidated += 1;
                    self.changed = true;
                }
                Verdict::Skipped(Decision::Apply | Decision::Invalidate) => {
                    unreachable!("fold_key never skips with an apply or invalidate decision")
                }
                Verdict::Skipped(_) => self.counters.skipped += 1,
                Verdict::Failed(e) => {
                    self.counters.dead_lettered += 1;
                    let (error, transient) = match e {
                        CallError::Host(e) => (e, false),
                        CallError::Plugin(e) => (
                            plugin::Error::Guest {
                                plugin: name.into(),
                                message: e.to_string(),
                            },
                            e.kind == projector_guest::ErrorKind::Transient,
                        ),
                    };
                    self.failures.push((event, offset, error, transient));
                }
            }
        }
    }
}

impl<'a> BatchCtx<'a> {
    /// Fold `events` into the projection's views and route its failures;
    /// the counts, or `None` when its breaker opened during the run (the
    /// run is abandoned: its events are replayed once the plugin is back).
    pub(super) fn run(
        &self,
        events: &[(u64, &Event)],
        workers: usize,
        writer: &mut Writer,
    ) -> Result<Option<Counters>> {
        let code = &self.projection.code;
        let mut counters = Counters::default();
        let mut session = code.session();
        // A generation being built replays: its fetches take the live
        // path's recorded answers first.
        let replay = self.projection.is_building();
        session.replaying(replay);
        let refs: Vec<&Event> = events.iter().map(|(_, e)| *e).collect();
        let batch = EventBatch::new(&refs);
        // What the plugin names ahead is fetched at once, for every worker.
        let ahead = session.prefetch(&batch);
        let routed = self.route(session.as_mut(), &batch);

        // Group by key, keeping each key's events in offset order.
        let mut key_errors = Vec::new();
        let mut pairs = Vec::with_capacity(routed.len());
        for (i, keys) in routed.iter().enumerate() {
            match keys {
                Ok(keys) => pairs.extend(
                    keys.iter()
                        .filter(|k| self.only_key.is_none_or(|only| only == k.as_str()))
                        .map(|k| (i, k.as_str())),
                ),
                Err(e) => key_errors.push((i, e)),
            }
        }
        let groups = Groups::new(pairs);

        let results: Vec<KeyResult> = if workers == 1 || groups.len() < 64 {
            self.fold_keys(session.as_mut(), &groups, 0..groups.len(), events, &batch)?
        } else {
            // This thread folds the first share in the session that holds
            // the batch already; each other worker hands its own session
            // only the events its keys need.
            let chunk = groups.len().div_ceil(workers);
            let (groups, ahead) = (&groups, &ahead);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (chunk..groups.len())
                    .step_by(chunk)
                    .map(|start| {
                        let range = start..(start + chunk).min(groups.len());
                        scope.spawn(move || {
                            let (used, local) = groups.share(range);
                            let mine: Vec<(u64, &Event)> =
                                used.iter().map(|&i| events[i]).collect();
                            let refs: Vec<&Event> = mine.iter().map(|(_, e)| *e).collect();
                            let batch = EventBatch::new(&refs);
                            let all = 0..local.len();
                            let mut session = code.session();
                            session.replaying(replay);
                            session.fetched_ahead(ahead.clone());
                            self.fold_keys(session.as_mut(), &local, all, &mine, &batch)
                        })
                    })
                    .collect();
                let mut all = self.fold_keys(session.as_mut(), groups, 0..chunk, events, &batch)?;
                all.reserve(groups.len() - all.len());
                for h in handles {
                    all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
                }
                Ok::<_, Error>(all)
            })?
        };

        if self.watch && self.projection.breaker.is_paused() {
            return Ok(None);
        }
        for (i, e) in key_errors {
            counters.received += 1;
            counters.dead_lettered += 1;
            self.dead_letter(writer, "keys", None, events[i].1, events[i].0, e)?;
        }
        for r in results {
            counters.add(&r.counters);
            if let Some(change) = r.change {
                self.projection.answers_used(r.key, r.answers);
                self.projection.set_view(r.key, change);
            }
            for (event, offset, error, transient) in r.failures {
                self.projection.failed(&error);
                // A service it fetches from is down (its breaker open): the
                // event waits without using up an attempt, so an outage
                // dead-letters nothing.
                let outage = transient && self.projection.code.services_down();
                if transient && (self.attempt <= self.retry.attempts || outage) {
                    counters.dead_lettered -= 1;
                    self.projection.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = self.retry.delay_ms(self.attempt);
                    let attempt = match outage {
                        true => self.attempt,
                        false => self.attempt + 1,
                    };
                    tracing::info!(
                        plugin = self.projection.name(),
                        offset,
                        key = r.key,
                        attempt = self.attempt,
                        delay_ms = delay,
                        "{error}; retrying later"
                    );
                    queue_retry(
                        writer,
                        self.route,
                        RetryEntry {
                            seq: 0,
                            plugin: self.projection.name().into(),
                            key: r.key.to_string(),
                            attempt,
                            error: error.to_string(),
                            source: self.source.into(),
                            partition: self.partition,
                            offset,
                            event: event.clone(),
                            not_before_ms: now_ms() + delay as i64,
                        },
                    )?;
                    continue;
                }
                let error = match self.attempt {
                    1 => error,
                    n => plugin::Error::Guest {
                        plugin: self.projection.name().into(),
                        message: format!("after {n} attempts: {error}"),
                    },
                };
                self.dead_letter(writer, "apply", Some(r.key), event, offset, &error)?;
            }
        }
        Ok(Some(counters))
    }

    /// The keys of every event; a failed batch call is retried event by
    /// event so only the failing event fails.
    pub(super) fn route(
        &self,
        session: &mut dyn Session,
        batch: &EventBatch,
    ) -> Vec<Result<Vec<String>, plugin::Error>> {
        let code = &self.projection.code;
        let check =
            |r: Result<Vec<String>, plugin::GuestError>| -> Result<Vec<String>, plugin::Error> {
                let mut keys = r.map_err(|e| plugin::Error::Guest {
                    plugin: code.name().into(),
                    message: format!("keys: {e}"),
                })?;
                let limits = code.limits();
                if keys.len() > limits.max_keys_per_event {
                    return Err(plugin::Error::BadOutput {
                        plugin: code.name().into(),
                        message: format!(
                            "{} keys for one event, over the limit of {}",
                            keys.len(),
                            limits.max_keys_per_event
                        ),
                    });
                }
                for k in &keys {
                    check_key(k, limits).map_err(|e| plugin::Error::BadOutput {
                        plugin: code.name().into(),
                        message: e.to_string(),
                    })?;
                    self.check_placed(k)?;
                }
                keys.sort_unstable();
                keys.dedup();
                Ok(keys)
            };
        const CHUNK: usize = 1024;
        let events = batch.events();
        let mut out = Vec::with_capacity(events.len());
        for (n, chunk) in events.chunks(CHUNK).enumerate() {
            match session.batch_keys(batch, n * CHUNK, chunk.len()) {
                Ok(answers) => out.extend(answers.into_iter().map(check)),
                Err(_) => {
                    for e in chunk {
                        out.push(match session.keys(std::slice::from_ref(e)) {
                            Ok(mut one) => check(one.pop().unwrap_or_else(|| Ok(Vec::new()))),
                            Err(err) => Err(err),
                        });
                    }
                }
            }
        }
        out
    }

    /// Fail a key that lives on another partition than the batch's: its
    /// view would be kept by two owners.
    fn check_placed(&self, key: &str) -> Result<(), plugin::Error> {
        let Some(placed) = self.placed else {
            return Ok(());
        };
        match placed.partition(self.projection.name(), key) {
            Some(p) if p != self.partition => Err(plugin::Error::Misrouted {
                plugin: self.projection.name().into(),
                message: format!(
                    "view key {key:?} lives on partition {p}, and the event arrived on partition {}",
                    self.partition
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Fold the events of the groups in `range`: the first `apply` of
    /// every key goes to the plugin in one call for them all; the rest (a
    /// key's later runs, or everything when that call failed as a whole)
    /// key by key.
    pub(super) fn fold_keys<'e, 'k>(
        &self,
        session: &mut dyn Session,
        groups: &Groups<'k>,
        range: std::ops::Range<usize>,
        events: &[(u64, &'e Event)],
        batch: &EventBatch<'_>,
    ) -> Result<Vec<KeyResult<'e, 'k>>> {
        let p = self.projection;
        let policy = p.code.info().stale_policy;
        let first_group = range.start;
        // Each key's events, in order, side by side as the groups hold
        // their indexes: key `n`'s are `flat[groups.span(first_group, n)]`.
        let flat: Vec<&'e Event> = groups
            .members_of(range.clone())
            .iter()
            .map(|&i| events[i].1)
            .collect();
        let mine = |n: usize| &flat[groups.span(first_group, n)];
        // A view that expired before its key's first event here is gone:
        // the events start a new one.
        let befores: Vec<Option<Arc<ViewRecord>>> = range
            .clone()
            .map(|n| {
                let at = mine(n).first().map_or(0, |e| e.time_ms);
                Ok(p.view(self.store, groups.key(n))?
                    .filter(|r| at == 0 || !p.expiry.is_expired(r, at)))
            })
            .collect::<Result<_>>()?;
        // The history of a plugin that records its fetches names the
        // answers each change used: its keys go to the plugin one by one,
        // so each call's answers are one key's.
        let attribute = p.keeps_answers();
        if attribute {
            session.answers_used();
        }
        let mut runs = Vec::new();
        let mut run_of = vec![None; range.len()];
        let keys = range.clone().zip(&befores).enumerate();
        for (j, (n, before)) in keys.filter(|_| !attribute) {
            let indexes = groups.members(n);
            let first = rules::first_run(
                before.as_ref().map(|r| &r.view),
                p.population,
                policy,
                mine(n),
            );
            if !first.is_empty() {
                run_of[j] = Some(runs.len());
                runs.push(plugin::KeyRun {
                    key: groups.key(n),
                    state: before.as_ref().and_then(|r| r.view.state.as_deref()),
                    events: first.iter().map(|&i| indexes[i] as u32).collect(),
                });
            }
        }
        let mut answers: Vec<Option<ApplyResult>> = if runs.is_empty() {
            Vec::new()
        } else {
            match session.apply_batch(batch, &runs) {
                Ok(answers) => answers.into_iter().map(Some).collect(),
                Err(e) => {
                    tracing::debug!(plugin = p.name(), "{e}; applying key by key");
                    runs.iter().map(|_| None).collect()
                }
            }
        };
        drop(runs);
        range
            .zip(befores)
            .zip(run_of)
            .map(|((n, before), run)| {
                let first = run.and_then(|r| answers[r].take());
                let (key, indexes) = (groups.key(n), groups.members(n));
                let mut r = self.fold(session, key, indexes, events, mine(n), before, first)?;
                if attribute {
                    r.answers = session.answers_used();
                }
                Ok(r)
            })
            .collect()
    }

    /// Fold one key's events (`mine`: those of `events` at `indexes`);
    /// `first` is the answer to its first `apply` when it was made ahead.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fold<'e, 'k>(
        &self,
        session: &mut dyn Session,
        key: &'k str,
        indexes: &[usize],
        events: &[(u64, &'e Event)],
        mine: &[&'e Event],
        before: Option<Arc<ViewRecord>>,
        mut first: Option<ApplyResult>,
    ) -> Result<KeyResult<'e, 'k>> {
        let p = self.projection;
        // Its breaker opened on an earlier key: the run is abandoned.
        if self.watch && p.breaker.is_paused() {
            return Ok(KeyResult {
                key,
                change: None,
                counters: Counters::default(),
                failures: Vec::new(),
                answers: Vec::new(),
            });
        }
        let existed = before.is_some();
        let updated_ms = before.as_ref().map_or(0, |r| r.updated_ms);
        let (view, verdicts) = rules::fold_key(
            before.as_deref().map(|r| &r.view),
            p.population,
            p.code.info().stale_policy,
            mine,
            |state, run| {
                let batch: Vec<&Event> = run.iter().map(|&i| mine[i]).collect();
                self.apply_run(session, key, state, &batch, first.take())
            },
        );
        let mut tally = Tally::new(mine.len(), updated_ms);
        tally.count(indexes, events, verdicts, p.code.name());
        if self.watch {
            self.watch_breaker(mine.len(), &tally.failures);
        }
        let change = match (tally.changed, view) {
            (false, _) => None,
            (true, Some(view)) => Some(Some(ViewRecord {
                view: view.into_owned(),
                updated_ms: tally.latest,
            })),
            (true, None) => existed.then_some(None),
        };
        Ok(KeyResult {
            key,
            change,
            counters: tally.counters,
            failures: tally.failures,
            answers: Vec::new(),
        })
    }

    /// One `apply` of a run of `key`'s events (`first`: its answer when it
    /// was made ahead). A transient failure of the run's first event is
    /// tried again at once, a few times, before it goes to the delayed
    /// retries; a state put is checked against the plugin's limits.
    fn apply_run(
        &self,
        session: &mut dyn Session,
        key: &str,
        state: Option<&[u8]>,
        batch: &[&Event],
        first: Option<ApplyResult>,
    ) -> Result<ApplyResult, plugin::Error> {
        let mut r = match first {
            Some(r) => r,
            None => session.apply(key, state, batch)?,
        };
        let mut n = 0;
        while r.applied == 0
            && n < self.retry.blocking
            && r.error
                .as_ref()
                .is_some_and(|e| e.kind == projector_guest::ErrorKind::Transient)
        {
            n += 1;
            std::thread::sleep(self.retry.blocking_delay(n));
            r = session.apply(key, state, batch)?;
        }
        if let Outcome::Put(s) = &r.outcome {
            check_state(&self.projection.code, s)?;
        }
        Ok(r)
    }

    /// Count a key's `received` events and `failures` in the plugin's
    /// breaker; warn when that opens it.
    fn watch_breaker(&self, received: usize, failures: &[Failure<'_>]) {
        let p = self.projection;
        let last = failures.last().map(|(_, _, e, _)| e.to_string());
        let opened = p.breaker.record(
            now_ms(),
            received as u64,
            failures.len() as u64,
            last.as_deref().unwrap_or_default(),
        );
        if opened {
            tracing::warn!(
                plugin = p.name(),
                reason = ?p.breaker.state(),
                "breaker open: the plugin is paused, its events wait in the source"
            );
        }
    }

    pub(super) fn dead_letter(
        &self,
        writer: &mut Writer,
        stage: &str,
        key: Option<&str>,
        event: &Event,
        offset: u64,
        error: &plugin::Error,
    ) -> Result<()> {
        tracing::warn!(
            plugin = self.projection.name(),
            stage,
            offset,
            key,
            reason = error.reason(),
            "{error}"
        );
        record_dead_letter(
            writer,
            self.route,
            DeadLetter {
                seq: 0,
                plugin: Some(self.projection.name().to_string()),
                version: Some(self.projection.code().id().to_string()),
                stage: stage.into(),
                reason: error.reason().into(),
                error: error.to_string(),
                source: self.source.into(),
                partition: self.partition,
                offset,
                key: key.map(str::to_string),
                event: Some(event.clone()),
                raw: None,
                at_ms: now_ms(),
            },
        )?;
        Ok(())
    }
}

impl Engine {
    /// Process one batch of records of one partition, in offset order.
    pub fn process(
        &self,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<BatchSummary> {
        let Some(last) = records.last() else {
            return Ok(BatchSummary::default());
        };
        let next = last.offset + 1;
        let mut pending = self.write.lock().recover();
        let pending = &mut *pending;
        pending.healthy()?;
        let decoded: Vec<Result<Event, DecodeError>> =
            records.iter().map(|r| r.decode(self.format)).collect();
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let mut summary = BatchSummary {
            records: records.len() as u64,
            ..Default::default()
        };

        let route = self.route();
        let changelog = self.changelog();
        let decoded_from = pending.offset(&self.store, DECODE_NS, source, partition)?;
        for (r, d) in records.iter().zip(&decoded) {
            if let (Err(e), true) = (d, r.offset >= decoded_from) {
                summary.decode_errors += 1;
                record_dead_letter(
                    &mut writer,
                    route.as_deref(),
                    DeadLetter {
                        seq: 0,
                        plugin: None,
                        version: None,
                        stage: "decode".into(),
                        reason: "decode".into(),
                        error: e.to_string(),
                        source: source.into(),
                        partition,
                        offset: r.offset,
                        key: None,
                        event: None,
                        raw: Some(r.raw_text()),
                        at_ms: now_ms(),
                    },
                )?;
            }
        }
        writer.set_offset(DECODE_NS, source, partition, next);
        pending
            .offsets
            .insert((DECODE_NS.to_string(), source.to_string(), partition), next);

        let breakers = self.breakers_on.load(Ordering::Relaxed);
        for p in self.all().iter().filter(|p| !p.is_building()) {
            // A paused plugin's offsets stay where they are: it replays
            // from them once a probe passes.
            if breakers && !p.is_shadow() && p.breaker.is_paused() {
                continue;
            }
            if p.is_shadow()
                && self.lacks(
                    pending,
                    p,
                    source,
                    partition,
                    records[0].offset,
                    decoded_from,
                )?
            {
                continue;
            }
            let batch = BatchIn {
                source,
                partition,
                records,
                decoded: &decoded,
                route: route.as_deref(),
                placed: changelog.as_deref(),
            };
            let delta = self.apply_batch(pending, &mut writer, p, &batch)?;
            if !p.is_shadow() {
                summary.counters.push((p.name().to_string(), delta));
            }
        }
        pending.writer = Some(writer);
        // Past the memory budget's share for views, commit now so the
        // caches can turn over.
        summary.committed = if self.caches_full() {
            self.commit_locked(pending)?;
            true
        } else {
            self.commit_due(pending)?
        };
        {
            let mut applied = self.applied.write().recover();
            for p in self.all() {
                let k = (p.ns.clone(), source.to_string(), partition);
                if let Some(o) = pending.offsets.get(&k) {
                    applied.insert(k, *o);
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
        Ok(summary)
    }

    /// One projection's share of a batch: its events from its own next
    /// offset on, its offset, audit and counters; the change of counters.
    pub(super) fn apply_batch(
        &self,
        pending: &mut Pending,
        writer: &mut Writer,
        p: &Arc<Projection>,
        b: &BatchIn,
    ) -> Result<Counters> {
        let (source, partition) = (b.source, b.partition);
        let Some(next) = b.records.last().map(|r| r.offset + 1) else {
            return Ok(Counters::default());
        };
        let from = pending.offset(&self.store, &p.ns, source, partition)?;
        let events: Vec<(u64, &Event)> = b
            .records
            .iter()
            .zip(b.decoded)
            .filter(|(r, _)| r.offset >= from)
            .filter_map(|(r, d)| d.as_ref().ok().map(|e| (r.offset, e)))
            .collect();
        let mut delta = Counters::default();
        if !events.is_empty() {
            let ctx = BatchCtx {
                projection: p,
                store: &self.store,
                source,
                partition,
                attempt: 1,
                only_key: None,
                retry: &p.retry,
                route: b.route,
                placed: b.placed,
                watch: self.breakers_on.load(Ordering::Relaxed)
                    && !p.is_shadow()
                    && !p.breaker.is_paused(),
            };
            match ctx.run(&events, self.workers, writer)? {
                Some(d) => delta = d,
                // Its breaker opened: its offset stays before this batch.
                None => return Ok(Counters::default()),
            }
            self.spool_fetched(writer, p, partition)?;
        }
        if next > from {
            let first = from.max(b.records[0].offset);
            pending.audit(writer, &p.ns, p.code.id(), source, partition, first, next);
            writer.set_offset(&p.ns, source, partition, next);
            pending
                .offsets
                .insert((p.ns.clone(), source.to_string(), partition), next);
        }
        let total = {
            let mut c = p.counters.lock().recover();
            c.add(&delta);
            *c
        };
        writer.set_counters(&p.ns, &total);
        Ok(delta)
    }
}
