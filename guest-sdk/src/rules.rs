//! The version rules of a view (seed 000, challenge 4), in one place.
//!
//! Each view carries a version per event source (a version vector) and a
//! floor: the versions of the snapshot it was built from. For every event
//! touching the view, [`decide`] says whether it is applied, skipped as a
//! duplicate or as already reflected in the snapshot, dismissed (absent key
//! under lazy population), ignored (Invalid view, or stale under the ignore
//! policy), or whether it invalidates the view. [`fold_key`] runs a key's
//! events through those decisions and a plugin's `apply`, isolating failing
//! events. The host's engine and the native harness both call these, so a
//! plugin behaves the same in a unit test and in production.

use crate::{ApplyResult, Error, Outcome, Population, StalePolicy};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Whether a stored view is maintained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Maintained by events.
    Valid,
    /// Suspected out of sync: no longer maintained, repaired on read.
    Invalid,
}

/// One version per source, kept sorted by source name. Source names are
/// short and repeat on every view: kept inline, a view's copy costs no
/// allocation for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions(pub Vec<(CompactString, u64)>);

impl Versions {
    pub fn get(&self, source: &str) -> Option<u64> {
        self.0
            .binary_search_by(|(s, _)| s.as_str().cmp(source))
            .ok()
            .map(|i| self.0[i].1)
    }

    pub fn set(&mut self, source: &str, version: u64) {
        match self.0.binary_search_by(|(s, _)| s.as_str().cmp(source)) {
            Ok(i) => self.0[i].1 = version,
            Err(i) => self.0.insert(i, (source.into(), version)),
        }
    }

    /// As a JSON object, source → version.
    pub fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0
            .iter()
            .map(|(s, n)| (s.to_string(), (*n).into()))
            .collect()
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut v = Versions::default();
        for (s, n) in pairs {
            if v.get(&s).is_none_or(|old| n > old) {
                v.set(&s, n);
            }
        }
        v
    }
}

/// How many earlier applied versions a view remembers per source, besides
/// the highest: a redelivered event among them is a duplicate, not disorder.
pub const RECENT_PER_SOURCE: usize = 16;

/// Versions applied before each source's highest one, oldest first, at
/// most [`RECENT_PER_SOURCE`] per source. An event older than the view
/// whose version is here was applied already (a redelivery: a client's
/// second POST, a producer's retry); one that is not is genuinely out of
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent(pub Vec<(CompactString, u64)>);

impl Recent {
    /// Whether `version` of `source` is remembered as applied.
    pub fn contains(&self, source: &str, version: u64) -> bool {
        self.0.iter().any(|(s, v)| *v == version && s == source)
    }

    /// Remember `version` of `source`, forgetting that source's oldest
    /// beyond the window.
    fn push(&mut self, source: &str, version: u64) {
        self.0.push((source.into(), version));
        if self.0.iter().filter(|(s, _)| s == source).count() > RECENT_PER_SOURCE {
            if let Some(i) = self.0.iter().position(|(s, _)| s == source) {
                self.0.remove(i);
            }
        }
    }
}

/// A view as the rules see it: status, versions, snapshot floor, state.
///
/// `recent` is not part of its serde form: the store keeps it in its own
/// compact encoding after the view, so views written without it still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub status: Status,
    /// Highest applied version per source.
    pub versions: Versions,
    /// Versions of the snapshot the view was built from: events at or
    /// below them are already reflected in the state.
    pub floor: Versions,
    /// The plugin's encoded state; `None` once the view is Invalid.
    pub state: Option<Vec<u8>>,
    /// Earlier applied versions, to tell a redelivery from disorder.
    #[serde(skip)]
    pub recent: Recent,
}

impl View {
    /// A Valid view with no state and no versions yet.
    pub fn empty() -> Self {
        View {
            status: Status::Valid,
            versions: Versions::default(),
            floor: Versions::default(),
            state: None,
            recent: Recent::default(),
        }
    }

    /// A view built from a source-of-truth snapshot.
    pub fn from_snapshot(state: Vec<u8>, versions: Versions) -> Self {
        View {
            floor: versions.clone(),
            versions,
            state: Some(state),
            ..View::empty()
        }
    }

    /// Its status and versions without its state: what a change that
    /// replaces or drops the state starts from, with no copy of the state.
    fn without_state(&self) -> Self {
        View {
            status: self.status,
            versions: self.versions.clone(),
            floor: self.floor.clone(),
            state: None,
            recent: self.recent.clone(),
        }
    }

    /// Record `version` of `source` as applied: it becomes the source's
    /// highest, and the one it replaces is remembered in `recent`.
    pub fn applied(&mut self, source: &str, version: u64) {
        match self.versions.get(source) {
            Some(old) if old < version => self.recent.push(source, old),
            Some(_) => return,
            None => {}
        }
        self.versions.set(source, version);
    }
}

/// What the rules decide for one event against one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Apply,
    /// Same version as the last applied one from this source, or one of
    /// the earlier applied ones the view remembers (a redelivery).
    Duplicate,
    /// At or below the snapshot the view was built from.
    BelowSnapshot,
    /// Older than the view, under the ignore policy.
    Stale,
    /// No view, under lazy population.
    Dismissed,
    /// The view is Invalid and not maintained.
    Ignored,
    /// Older than the view, under the invalidate policy.
    Invalidate,
}

/// Decide what one event (`source`, `version`) does to `view`.
pub fn decide(
    view: Option<&View>,
    population: Population,
    policy: StalePolicy,
    source: &str,
    version: u64,
) -> Decision {
    let Some(view) = view else {
        return match population {
            Population::Lazy => Decision::Dismissed,
            Population::Eager => Decision::Apply,
        };
    };
    if view.status == Status::Invalid {
        return Decision::Ignored;
    }
    if view.floor.get(source).is_some_and(|floor| version <= floor) {
        return Decision::BelowSnapshot;
    }
    match view.versions.get(source) {
        Some(v) if v == version => Decision::Duplicate,
        Some(_) if view.recent.contains(source, version) => Decision::Duplicate,
        Some(v) if v > version => match policy {
            StalePolicy::Invalidate => Decision::Invalidate,
            StalePolicy::Ignore => Decision::Stale,
        },
        _ => Decision::Apply,
    }
}

/// What happened to one event of a key's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<E> {
    Applied,
    Skipped(Decision),
    /// This event made the view Invalid (stale, or the plugin said so).
    Invalidated,
    /// The plugin failed this event: it goes to retry or dead letter.
    Failed(E),
}

/// The part of an event the rules read.
pub trait Versioned {
    fn source(&self) -> &str;
    fn version(&self) -> u64;
}

impl Versioned for crate::Event {
    fn source(&self) -> &str {
        &self.source
    }
    fn version(&self) -> u64 {
        self.version
    }
}

impl<T: Versioned + ?Sized> Versioned for &T {
    fn source(&self) -> &str {
        (**self).source()
    }
    fn version(&self) -> u64 {
        (**self).version()
    }
}

/// A failure while calling the plugin, as `fold_key` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The plugin reported an error for one event.
    Plugin(Error),
    /// The call itself failed (trap, deadline, memory limit, bad output).
    Host(E),
}

/// Fold `events` (one key's, in order) into `view`.
///
/// `apply(state, indexes)` runs the plugin over the events at `indexes`.
/// When a call fails as a whole (a trap), the run is retried one event at a
/// time so that only the failing event fails. Returns the new view (`None`:
/// absent; borrowed: unchanged) and a verdict per event. The view is read,
/// not copied: a change that replaces its state never copies the old one.
pub fn fold_key<'v, T: Versioned, E>(
    view: Option<&'v View>,
    population: Population,
    policy: StalePolicy,
    events: &[T],
    mut apply: impl FnMut(Option<&[u8]>, &[usize]) -> Result<ApplyResult, E>,
) -> (Option<Cow<'v, View>>, Vec<Verdict<CallError<E>>>) {
    let mut view = view.map(Cow::Borrowed);
    let mut verdicts: Vec<Option<Verdict<CallError<E>>>> = events.iter().map(|_| None).collect();
    let mut next = 0;
    let mut one_at_a_time = false;
    'outer: while next < events.len() {
        let Plan {
            run,
            invalidate_at,
            end: j,
        } = plan(
            view.as_deref(),
            population,
            policy,
            events,
            next,
            one_at_a_time,
            |j, skip| verdicts[j] = Some(Verdict::Skipped(skip)),
        );
        if !run.is_empty() {
            let state = view.as_deref().and_then(|v| v.state.as_deref());
            let result = match apply(state, &run) {
                Ok(r) => r,
                Err(e) if run.len() == 1 => {
                    verdicts[run[0]] = Some(Verdict::Failed(CallError::Host(e)));
                    next = run[0] + 1;
                    continue;
                }
                Err(_) => {
                    one_at_a_time = true;
                    continue;
                }
            };
            let applied = (result.applied as usize).min(run.len());
            for &i in &run[..applied] {
                verdicts[i] = Some(Verdict::Applied);
            }
            let keeps_state = matches!(result.outcome, Outcome::Skip);
            let mut v = match view.take() {
                Some(Cow::Owned(v)) => v,
                Some(Cow::Borrowed(v)) if keeps_state => v.clone(),
                Some(Cow::Borrowed(v)) => v.without_state(),
                None => View::empty(),
            };
            for &i in &run[..applied] {
                v.applied(events[i].source(), events[i].version());
            }
            view = match result.outcome {
                Outcome::Put(state) => Some(Cow::Owned(View {
                    state: Some(state),
                    ..v
                })),
                // A view with no state yet (eager, nothing changed) stays absent.
                Outcome::Skip if v.state.is_some() => Some(Cow::Owned(v)),
                Outcome::Skip | Outcome::Delete => None,
                Outcome::Invalidate => {
                    if let Some(&last) = run[..applied].last() {
                        verdicts[last] = Some(Verdict::Invalidated);
                    }
                    view = Some(Cow::Owned(View {
                        status: Status::Invalid,
                        state: None,
                        ..v
                    }));
                    break 'outer;
                }
            };
            if applied < run.len() {
                let failed = run[applied];
                let error = result
                    .error
                    .unwrap_or_else(|| Error::internal("apply stopped early without an error"));
                verdicts[failed] = Some(Verdict::Failed(CallError::Plugin(error)));
                next = failed + 1;
                continue;
            }
        }
        match invalidate_at {
            Some(j) => {
                verdicts[j] = Some(Verdict::Invalidated);
                let v = view.take().map_or_else(View::empty, |v| v.without_state());
                view = Some(Cow::Owned(View {
                    status: Status::Invalid,
                    state: None,
                    ..v
                }));
                break;
            }
            None => next = j,
        }
    }
    let verdicts = verdicts
        .into_iter()
        .map(|v| v.unwrap_or(Verdict::Skipped(Decision::Ignored)))
        .collect();
    (view, verdicts)
}

/// The next run of a key's events to apply together, from `next` on.
struct Plan {
    /// Events decided `Apply` against versions advanced provisionally.
    run: Vec<usize>,
    /// The event that invalidates the view, where planning stopped.
    invalidate_at: Option<usize>,
    /// Where planning stopped.
    end: usize,
}

fn plan<T: Versioned>(
    view: Option<&View>,
    population: Population,
    policy: StalePolicy,
    events: &[T],
    next: usize,
    one_at_a_time: bool,
    mut skipped: impl FnMut(usize, Decision),
) -> Plan {
    // Versions only: the plan never needs the state.
    let mut provisional = view.map(View::without_state);
    let mut run = Vec::new();
    let mut j = next;
    while j < events.len() {
        let e = &events[j];
        match decide(
            provisional.as_ref(),
            population,
            policy,
            e.source(),
            e.version(),
        ) {
            Decision::Apply => {
                let p = provisional.get_or_insert_with(View::empty);
                p.applied(e.source(), e.version());
                run.push(j);
                if one_at_a_time {
                    j += 1;
                    break;
                }
            }
            Decision::Invalidate => {
                return Plan {
                    run,
                    invalidate_at: Some(j),
                    end: j,
                }
            }
            skip => skipped(j, skip),
        }
        j += 1;
    }
    Plan {
        run,
        invalidate_at: None,
        end: j,
    }
}

/// The events of the first `apply` call [`fold_key`] makes for `events`
/// against `view` (empty: it makes none). A host may make that call ahead,
/// for many keys at once, and hand each answer back to `fold_key`.
pub fn first_run<T: Versioned>(
    view: Option<&View>,
    population: Population,
    policy: StalePolicy,
    events: &[T],
) -> Vec<usize> {
    plan(view, population, policy, events, 0, false, |_, _| {}).run
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ev(&'static str, u64);
    impl Versioned for Ev {
        fn source(&self) -> &str {
            self.0
        }
        fn version(&self) -> u64 {
            self.1
        }
    }

    fn put_all(_: Option<&[u8]>, run: &[usize]) -> Result<ApplyResult, ()> {
        Ok(ApplyResult {
            outcome: Outcome::Put(vec![run.len() as u8]),
            applied: run.len() as u32,
            error: None,
        })
    }

    /// `first_run` names exactly the events of `fold_key`'s first call, so
    /// a host that makes that call ahead changes nothing.
    #[test]
    fn first_run_is_the_first_call() {
        let snapshot = View::from_snapshot(vec![1], Versions(vec![("a".into(), 4)]));
        let invalid = View {
            status: Status::Invalid,
            ..snapshot.clone()
        };
        let streams: [&[Ev]; 5] = [
            &[Ev("a", 1), Ev("a", 1), Ev("b", 7), Ev("a", 3), Ev("a", 2)],
            &[Ev("a", 5), Ev("a", 4), Ev("a", 6)],
            &[Ev("a", 2), Ev("a", 3), Ev("b", 1)],
            &[Ev("a", 9), Ev("a", 9), Ev("a", 8), Ev("a", 10)],
            &[],
        ];
        for view in [None, Some(&snapshot), Some(&invalid)] {
            for population in [Population::Eager, Population::Lazy] {
                for policy in [StalePolicy::Invalidate, StalePolicy::Ignore] {
                    for events in streams {
                        let planned = first_run(view, population, policy, events);
                        let mut calls: Vec<Vec<usize>> = Vec::new();
                        fold_key(view, population, policy, events, |s, run| {
                            calls.push(run.to_vec());
                            put_all(s, run)
                        });
                        assert_eq!(
                            planned,
                            calls.first().cloned().unwrap_or_default(),
                            "{view:?} {population:?} {policy:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn duplicate_and_stale_follow_the_policy() {
        let events = [Ev("a", 1), Ev("a", 1), Ev("b", 7), Ev("a", 3), Ev("a", 2)];
        let (view, verdicts) = fold_key(
            None,
            Population::Eager,
            StalePolicy::Ignore,
            &events,
            put_all,
        );
        let view = view.expect("eager creates the view");
        assert_eq!(view.versions.get("a"), Some(3));
        assert_eq!(view.versions.get("b"), Some(7));
        assert_eq!(verdicts[1], Verdict::Skipped(Decision::Duplicate));
        assert_eq!(verdicts[4], Verdict::Skipped(Decision::Stale));

        let (view, verdicts) = fold_key(
            None,
            Population::Eager,
            StalePolicy::Invalidate,
            &events,
            put_all,
        );
        let view = view.expect("view");
        assert_eq!(view.status, Status::Invalid);
        assert_eq!(view.state, None);
        assert_eq!(verdicts[4], Verdict::Invalidated);
    }

    #[test]
    fn lazy_dismisses_and_snapshot_floor_skips() {
        let events = [Ev("a", 5)];
        let (view, verdicts) = fold_key(
            None,
            Population::Lazy,
            StalePolicy::Invalidate,
            &events,
            put_all,
        );
        assert_eq!(view, None);
        assert_eq!(verdicts[0], Verdict::Skipped(Decision::Dismissed));

        let snap = View::from_snapshot(vec![9], Versions::from_pairs([("a".to_string(), 10)]));
        let (view, verdicts) = fold_key(
            Some(&snap),
            Population::Lazy,
            StalePolicy::Invalidate,
            &events,
            put_all,
        );
        assert!(matches!(view, Some(Cow::Borrowed(v)) if *v == snap));
        assert_eq!(verdicts[0], Verdict::Skipped(Decision::BelowSnapshot));
    }

    #[test]
    fn a_failing_call_is_isolated_to_its_event() {
        let events = [Ev("a", 1), Ev("a", 2), Ev("a", 3)];
        let calls = std::cell::Cell::new(0);
        let (view, verdicts) = fold_key(
            None,
            Population::Eager,
            StalePolicy::Invalidate,
            &events,
            |_, run| {
                calls.set(calls.get() + 1);
                if run.contains(&1) {
                    Err("trap")
                } else {
                    put_all(None, run).map_err(|_| "never")
                }
            },
        );
        assert_eq!(verdicts[0], Verdict::Applied);
        assert_eq!(verdicts[1], Verdict::Failed(CallError::Host("trap")));
        assert_eq!(verdicts[2], Verdict::Applied);
        assert_eq!(view.expect("view").versions.get("a"), Some(3));
    }

    /// A plugin that invalidates a view leaves it with no state, whether
    /// the state was the stored one or one put earlier in the same fold.
    #[test]
    fn an_invalidate_outcome_drops_the_state() {
        let stored = View::from_snapshot(vec![1, 2, 3], Versions::default());
        let events = [Ev("a", 1), Ev("a", 2), Ev("a", 3)];
        for one_call in [true, false] {
            let mut calls = 0;
            let (view, verdicts) = fold_key(
                Some(&stored),
                Population::Eager,
                StalePolicy::Invalidate,
                &events,
                |_, run| {
                    calls += 1;
                    // Put the first event and fail the second, then
                    // invalidate with the third (or invalidate at once).
                    let invalidate = one_call || calls > 1;
                    Ok::<_, ()>(ApplyResult {
                        outcome: if invalidate {
                            Outcome::Invalidate
                        } else {
                            Outcome::Put(vec![9])
                        },
                        applied: if invalidate { run.len() as u32 } else { 1 },
                        error: if invalidate {
                            None
                        } else {
                            Some(Error::transient("stop after one"))
                        },
                    })
                },
            );
            let view = view.expect("view");
            assert_eq!(view.status, Status::Invalid);
            assert_eq!(view.state, None, "one call: {one_call}");
            assert_eq!(
                stored.state.as_deref(),
                Some(&[1, 2, 3][..]),
                "read, not changed"
            );
            assert!(verdicts.contains(&Verdict::Invalidated), "{verdicts:?}");
        }
    }

    fn run(
        view: Option<View>,
        policy: StalePolicy,
        events: &[Ev],
    ) -> (Option<View>, Vec<Verdict<CallError<()>>>) {
        let (view, verdicts) = fold_key(view.as_ref(), Population::Eager, policy, events, put_all);
        (view.map(Cow::into_owned), verdicts)
    }

    /// An event redelivered after newer ones (a client's second POST, a
    /// producer's retry) is a duplicate; one never applied is disorder.
    #[test]
    fn a_redelivered_older_event_is_a_duplicate_a_missed_one_is_disorder() {
        let first: Vec<Ev> = (1..=5).map(|n| Ev("a", n * 10)).collect();
        let (view, _) = run(None, StalePolicy::Invalidate, &first);
        let view = view.expect("view");

        // The same events again, in one batch and one by one.
        let (again, verdicts) = run(Some(view.clone()), StalePolicy::Invalidate, &first);
        assert_eq!(again.as_ref(), Some(&view), "a redelivery changes nothing");
        assert!(verdicts
            .iter()
            .all(|v| *v == Verdict::Skipped(Decision::Duplicate)));
        for e in &first {
            let (again, verdicts) =
                run(Some(view.clone()), StalePolicy::Invalidate, &[Ev("a", e.1)]);
            assert_eq!(again.as_ref(), Some(&view));
            assert_eq!(verdicts, vec![Verdict::Skipped(Decision::Duplicate)]);
        }

        // A version that was never applied still invalidates.
        let (after, verdicts) = run(Some(view.clone()), StalePolicy::Invalidate, &[Ev("a", 25)]);
        assert_eq!(verdicts, vec![Verdict::Invalidated]);
        assert_eq!(after.expect("view").status, Status::Invalid);
        let (_, verdicts) = run(Some(view.clone()), StalePolicy::Ignore, &[Ev("a", 25)]);
        assert_eq!(verdicts, vec![Verdict::Skipped(Decision::Stale)]);

        // Within one batch: applied, then redelivered after a newer one.
        let (_, verdicts) = run(
            None,
            StalePolicy::Invalidate,
            &[Ev("a", 1), Ev("a", 2), Ev("a", 1)],
        );
        assert_eq!(verdicts[2], Verdict::Skipped(Decision::Duplicate));
    }

    /// The window is bounded per source: past it, an old redelivery can no
    /// longer be told from disorder and invalidates (the safe side).
    #[test]
    fn the_window_is_bounded_per_source() {
        let n = RECENT_PER_SOURCE as u64 + 2;
        let mut events: Vec<Ev> = (1..=n).map(|v| Ev("a", v)).collect();
        events.push(Ev("b", 1));
        let (view, _) = run(None, StalePolicy::Invalidate, &events);
        let view = view.expect("view");
        assert_eq!(view.recent.0.len(), RECENT_PER_SOURCE);
        let (_, verdicts) = run(Some(view.clone()), StalePolicy::Invalidate, &[Ev("a", 2)]);
        assert_eq!(verdicts, vec![Verdict::Skipped(Decision::Duplicate)]);
        let (_, verdicts) = run(Some(view), StalePolicy::Invalidate, &[Ev("a", 1)]);
        assert_eq!(verdicts, vec![Verdict::Invalidated]);
    }
}
