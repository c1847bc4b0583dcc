//! What crosses into the guest: events and key runs packed into one
//! text with spans, and the WIT results back into the SDK's types.

use super::*;

pub(super) fn to_wit(e: &Event) -> wit::Event<'_> {
    wit::Event {
        id: &e.id,
        event_type: &e.event_type,
        source: &e.source,
        key: &e.key,
        version: e.version,
        time_ms: e.time_ms,
        payload: &e.payload,
    }
}

/// The span of `len` items from `start`; every position of a packed call
/// fits a `u32` (the WIT span's), checked up front by [`fits`].
pub(super) fn span(start: usize, len: usize) -> wit::Span {
    wit::Span {
        start: start as u32,
        len: len as u32,
    }
}

/// Refuse a packed call whose parts do not fit the WIT span's `u32`.
pub(super) fn fits(what: &str, size: usize) -> Result<(), String> {
    match u32::try_from(size) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{what} of {size} items, over the {} one call can pass",
            u32::MAX
        )),
    }
}

/// `events` as one text holding all their strings, and each event with
/// the spans of its strings in that text (the WIT `packed-events`).
pub(super) fn pack(events: &[&Event]) -> Result<(String, Vec<wit::PackedEvent>), String> {
    let size: usize = events
        .iter()
        .map(|e| e.id.len() + e.event_type.len() + e.source.len() + e.key.len() + e.payload.len())
        .sum();
    fits("a batch's text", size)?;
    let mut text = String::with_capacity(size);
    let mut put = |s: &str| {
        let at = span(text.len(), s.len());
        text.push_str(s);
        at
    };
    let list = events
        .iter()
        .map(|e| wit::PackedEvent {
            id: put(&e.id),
            event_type: put(&e.event_type),
            source: put(&e.source),
            key: put(&e.key),
            version: e.version,
            time_ms: e.time_ms,
            payload: put(&e.payload),
        })
        .collect();
    Ok((text, list))
}

/// The parts of a WIT `packed-runs`: keys, states, event indexes, and
/// each run's spans in them.
pub(super) type RunParts = (String, Vec<u8>, Vec<u32>, Vec<wit::KeyRun>);

/// `runs` in one piece (the WIT `packed-runs`).
pub(super) fn pack_runs(runs: &[KeyRun]) -> Result<RunParts, String> {
    let keys_size: usize = runs.iter().map(|r| r.key.len()).sum();
    let states_size: usize = runs.iter().map(|r| r.state.map_or(0, <[u8]>::len)).sum();
    let events_size: usize = runs.iter().map(|r| r.events.len()).sum();
    fits("a call's keys", keys_size)?;
    fits("a call's states", states_size)?;
    fits("a call's event indexes", events_size)?;
    let mut keys = String::with_capacity(keys_size);
    let mut states = Vec::with_capacity(states_size);
    let mut events = Vec::with_capacity(events_size);
    let mut list = Vec::with_capacity(runs.len());
    for r in runs {
        let key = span(keys.len(), r.key.len());
        keys.push_str(r.key);
        let state = r.state.map(|s| {
            let at = span(states.len(), s.len());
            states.extend_from_slice(s);
            at
        });
        let at = span(events.len(), r.events.len());
        events.extend_from_slice(&r.events);
        list.push(wit::KeyRun {
            key,
            state,
            events: at,
        });
    }
    Ok((keys, states, events, list))
}

pub(super) fn from_wit_result(r: wit::ApplyResult) -> ApplyResult {
    ApplyResult {
        outcome: match r.outcome {
            wit::Outcome::Put(s) => Outcome::Put(s),
            wit::Outcome::Delete => Outcome::Delete,
            wit::Outcome::Invalidate => Outcome::Invalidate,
            wit::Outcome::Skip => Outcome::Skip,
        },
        applied: r.applied,
        error: r.error.map(from_wit_error),
    }
}

pub(super) fn from_wit_error(e: wit::PluginError) -> GuestError {
    GuestError {
        kind: match e.kind {
            wit::ErrorKind::BadInput => ErrorKind::BadInput,
            wit::ErrorKind::Transient => ErrorKind::Transient,
            wit::ErrorKind::Internal => ErrorKind::Internal,
        },
        message: e.message,
    }
}
