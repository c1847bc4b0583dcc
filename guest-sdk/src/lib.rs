//! The Rust SDK for projector plugins.
//!
//! A plugin author implements [`Projection`] for a type with a serde
//! `State`, then exports it with [`export!`]. The SDK owns everything
//! between that trait and the WIT contract in `wit/plugin.wit`: the
//! bindings, the compact binary encoding of states (postcard; JSON appears
//! only in rendered answers), and the fold of a run of events into one
//! outcome, so a key's state is decoded and encoded once per batch, not
//! once per event. A batch's events are handed to the plugin once and
//! kept for its calls, so [`Event::parsed`] parses a payload once however
//! many keys the event touches. In Wasm the SDK also sets the global
//! allocator (feature `allocator`, on by default): free lists of small
//! blocks (`pool`) in front of Talc.
//!
//! Modules:
//! - [`rules`]: the version-vector rules (duplicate, stale, snapshot floor)
//!   shared by the host's engine and the native [`harness`];
//! - [`harness`]: drive a plugin natively, events in and views out, with
//!   the same rules the host applies, and no Wasm involved;
//! - `settings`: the settings a plugin declares, checked before its
//!   `configure` (see [`configure`]);
//! - `wasm` (only on `wasm32`): the generated bindings and the adapter the
//!   [`export!`] macro installs.

pub mod harness;
#[cfg(any(target_arch = "wasm32", test))]
mod pool;
pub mod rules;
mod settings;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;

pub use serde_json::Value as Json;

/// One decoded event, whatever format it arrived in (the WIT `event`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id given by the producer.
    pub id: String,
    /// Business type, e.g. `MessageSent`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Producing service or table: one entry of a view's version vector.
    pub source: String,
    /// Entity key the event was partitioned by.
    pub key: String,
    /// Monotonic per source: a sequence, a log position or a timestamp.
    pub version: u64,
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The payload as JSON text.
    pub payload: String,
    /// The payload as [`Event::parsed`] last parsed it.
    #[serde(skip)]
    pub parsed: Parsed,
}

/// A payload kept with its event once parsed (see [`Event::parsed`]). Not
/// part of the event's value: a clone starts empty, and equality and
/// serialization ignore it.
#[derive(Default)]
pub struct Parsed(std::sync::Mutex<Option<Arc<dyn Any + Send + Sync>>>);

impl Clone for Parsed {
    fn clone(&self) -> Self {
        Parsed::default()
    }
}

impl PartialEq for Parsed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Parsed {}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parsed")
    }
}

impl Event {
    /// The payload parsed into `T`, which may borrow from the event (use
    /// `Cow<str>` fields to avoid copying strings); a parse failure is a
    /// [`Error::bad_input`].
    pub fn payload<'a, T: Deserialize<'a>>(&'a self) -> Result<T, Error> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error::bad_input(format!("{} {}: payload: {e}", self.event_type, self.id)))
    }

    /// The payload parsed into `T` once per event: `keys` and then `apply`
    /// for each key the event touches get the same value, parsed by the
    /// first of them. The host hands a batch's events to the plugin once
    /// and keeps them for all its calls, so this saves one parse per view
    /// an event touches. Asking for another type parses again (and keeps
    /// that one instead).
    pub fn parsed<T: DeserializeOwned + Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        let mut kept = self.parsed.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = kept.as_ref().and_then(|v| v.clone().downcast::<T>().ok()) {
            return Ok(t);
        }
        let t: Arc<T> = Arc::new(self.payload::<T>()?);
        *kept = Some(t.clone());
        Ok(t)
    }
}

/// What kind of failure a plugin reports (the WIT `error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The input is not what the plugin understands.
    BadInput,
    /// A dependency failed; worth retrying.
    Transient,
    /// The plugin's own invariant broke.
    Internal,
}

/// A plugin's error (the WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::BadInput,
            message: message.into(),
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// How events for a key with no view are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Population {
    /// Dismissed: views appear only through snapshots of the source of truth.
    Lazy,
    /// Events create views from the plugin's empty state.
    Eager,
}

/// What an event older than the view's version does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StalePolicy {
    /// The view becomes Invalid and is repaired on the next read.
    Invalidate,
    /// The event is ignored; the view stays as it is.
    Ignore,
}

/// The source versions a snapshot reflects: (source, version) pairs.
pub type SourceVersions = Vec<(String, u64)>;

/// What a plugin declares about itself (the WIT `plugin-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub population: Population,
    pub stale_policy: StalePolicy,
    /// Whether `render` reads its `now_ms`: when false the host keeps a
    /// rendered answer until the view changes.
    pub render_uses_time: bool,
}

/// What one event did to a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The state changed and must be stored.
    Updated,
    /// Nothing to store for this event.
    Unchanged,
    /// The view must be removed.
    Delete,
    /// The view can no longer be trusted: mark it Invalid.
    Invalidate,
}

/// One key's outcome after a run of events (the WIT `outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Put(Vec<u8>),
    Delete,
    Invalidate,
    Skip,
}

/// The result of applying a run of events to one key (the WIT `apply-result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyResult {
    /// The key's state after the first `applied` events.
    pub outcome: Outcome,
    /// How many events were folded into `outcome`.
    pub applied: u32,
    /// Set when event number `applied` failed.
    pub error: Option<Error>,
}

/// A difference between two answers (the WIT `difference`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub path: String,
    pub reason: String,
    pub projection: Option<String>,
    pub source: Option<String>,
}

/// Log levels of the host's `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A projection plugin.
///
/// The host calls `keys` for every event, then `apply` for each key with
/// that key's events in order. Version checks (duplicates, stale events,
/// snapshot floors) and population are the host's job, done before `apply`
/// is called: a plugin sees only the events it must fold.
pub trait Projection: Sized + Send + Sync + 'static {
    /// The per-key state, stored in a compact binary encoding.
    type State: Serialize + DeserializeOwned + Default;

    /// The names of the settings the plugin accepts. When declared, a
    /// setting not among them is refused before `configure` is called, as
    /// bad input naming it and the declared one it is closest to
    /// (`unknown setting "max_unreed" (did you mean "max_unread"?); the
    /// plugin accepts max_unread, source`), so a misspelled setting fails
    /// the deploy instead of being ignored. `None` (the default) accepts
    /// any; `Some(&[])` accepts none.
    const SETTINGS: Option<&'static [&'static str]> = None;

    /// Build the plugin from its settings (a JSON object, `{}` by default),
    /// every name in it declared in [`Projection::SETTINGS`] if that is set.
    fn configure(settings: &Json) -> Result<Self, Error>;

    /// Name, version label, population and stale policy.
    fn info(&self) -> Info;

    /// The view keys an event touches; empty when it touches none.
    fn keys(&self, event: &Event) -> Result<Vec<String>, Error>;

    /// Apply one event to a key's state.
    fn apply(&self, key: &str, state: &mut Self::State, event: &Event) -> Result<Change, Error>;

    /// The answers `apply` will [`fetch`] for `event`, named ahead: the
    /// host fetches a batch's needs at once (concurrently, or many in one
    /// request to a service with a batch endpoint) before applying it, and
    /// `apply`'s fetches of them are answered without waiting. Name what
    /// `apply` asks first, not its [`fetch_fresh`] retries. The default
    /// names none: every fetch waits in `apply`, one at a time.
    fn needs(&self, _event: &Event) -> Vec<Need> {
        Vec::new()
    }

    /// The JSON a reader receives, computed at read time `now_ms`.
    fn render(&self, key: &str, state: &Self::State, now_ms: i64) -> Result<Json, Error>;

    /// A state, and the source versions it reflects, from the source of
    /// truth's answer for `key`.
    fn snapshot(&self, key: &str, answer: &Json) -> Result<(Self::State, SourceVersions), Error>;

    /// Convert a state written by an earlier version of this plugin.
    /// The default decodes it as the current `State`; `None` means the key
    /// cannot be migrated and will be populated again from the source.
    fn migrate(
        &self,
        _key: &str,
        old: &[u8],
        _from_version: &str,
    ) -> Result<Option<Self::State>, Error> {
        Ok(decode_state::<Self::State>(old).ok())
    }

    /// Compare the projection's answer with the source's. The default is
    /// structural JSON equality; see [`json_differences`].
    fn compare(&self, _key: &str, projection: &Json, source: &Json) -> Vec<Difference> {
        json_differences(projection, source)
    }
}

/// Build `P` from its settings as the host does: a setting `P` does not
/// declare in [`Projection::SETTINGS`] is refused before
/// [`Projection::configure`] sees it. The Wasm export, the native
/// [`harness`] and the host's native plugins all configure through this.
pub fn configure<P: Projection>(settings: &Json) -> Result<P, Error> {
    if let Some(declared) = P::SETTINGS {
        settings::check(declared, settings)?;
    }
    P::configure(settings)
}

/// Encode a state in the SDK's binary state format.
pub fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, Error> {
    encode_state_near(state, 0)
}

/// [`encode_state`] into a buffer sized for about `hint` bytes (the size
/// the state had before), so it is not grown a doubling at a time.
fn encode_state_near<S: Serialize>(state: &S, hint: usize) -> Result<Vec<u8>, Error> {
    postcard::to_extend(state, Vec::with_capacity(hint + hint / 8 + 16))
        .map_err(|e| Error::internal(format!("encode state: {e}")))
}

/// Decode a state written by [`encode_state`].
pub fn decode_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::internal(format!("decode state: {e}")))
}

/// Fold a run of events into one outcome: the state is decoded once at
/// the start and encoded once at the end. Stops at the first failing event
/// and reports how many were folded before it.
pub fn apply_run<P: Projection, E: std::borrow::Borrow<Event>>(
    plugin: &P,
    key: &str,
    state: Option<&[u8]>,
    events: &[E],
) -> ApplyResult {
    let mut current: Option<P::State> = match state.map(decode_state::<P::State>).transpose() {
        Ok(s) => s,
        Err(error) => {
            return ApplyResult {
                outcome: Outcome::Skip,
                applied: 0,
                error: Some(error),
            }
        }
    };
    let existed = current.is_some();
    let mut dirty = false;
    let mut applied = 0u32;
    let mut error = None;
    for event in events {
        let s = current.get_or_insert_with(P::State::default);
        match plugin.apply(key, s, event.borrow()) {
            Ok(Change::Updated) => dirty = true,
            Ok(Change::Unchanged) => {}
            Ok(Change::Delete) => {
                current = None;
                dirty = true;
            }
            Ok(Change::Invalidate) => {
                return ApplyResult {
                    outcome: Outcome::Invalidate,
                    applied: applied + 1,
                    error: None,
                };
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        applied += 1;
    }
    // Creating a view is a change even when the events left the empty
    // state as it was: the view's versions must be kept from now on.
    dirty |= !existed && applied > 0;
    let outcome = match (dirty, current) {
        (false, _) => Outcome::Skip,
        (true, None) if existed => Outcome::Delete,
        (true, None) => Outcome::Skip,
        (true, Some(s)) => match encode_state_near(&s, state.map_or(0, <[u8]>::len)) {
            Ok(bytes) => Outcome::Put(bytes),
            Err(e) => {
                return ApplyResult {
                    outcome: Outcome::Skip,
                    applied: 0,
                    error: Some(e),
                }
            }
        },
    };
    ApplyResult {
        outcome,
        applied,
        error,
    }
}

/// Structural differences between two JSON values, with JSON-pointer-like
/// paths. Arrays are compared position by position.
pub fn json_differences(projection: &Json, source: &Json) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_into(String::new(), projection, source, &mut out);
    out
}

fn diff_into(path: String, a: &Json, b: &Json, out: &mut Vec<Difference>) {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff_into(format!("{path}/{k}"), va, vb, out),
                    None => out.push(Difference {
                        path: format!("{path}/{k}"),
                        reason: "only-in-projection".into(),
                        projection: Some(va.to_string()),
                        source: None,
                    }),
                }
            }
            for (k, vb) in y.iter().filter(|(k, _)| !x.contains_key(*k)) {
                out.push(Difference {
                    path: format!("{path}/{k}"),
                    reason: "only-in-source".into(),
                    projection: None,
                    source: Some(vb.to_string()),
                });
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => diff_into(format!("{path}/{i}"), va, vb, out),
                    (va, vb) => out.push(Difference {
                        path: format!("{path}/{i}"),
                        reason: if va.is_some() {
                            "only-in-projection"
                        } else {
                            "only-in-source"
                        }
                        .into(),
                        projection: va.map(Json::to_string),
                        source: vb.map(Json::to_string),
                    }),
                }
            }
        }
        _ if a == b => {}
        _ => out.push(Difference {
            path: if path.is_empty() { "/".into() } else { path },
            reason: "value".into(),
            projection: Some(a.to_string()),
            source: Some(b.to_string()),
        }),
    }
}

/// Type of the event `projector recollect` hands to `apply`, once per key,
/// with an empty payload: rebuild the view from the sources (seed 002's
/// recollection after a source model changes). A plugin that does not
/// recollect leaves it unchanged.
pub const RECOLLECT: &str = "projector.recollect";

/// Why a [`fetch`] gave no answer (the WIT `fetch-error`). The host's
/// fetcher answers with this type too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The service is not configured or not on this plugin's allow-list
    /// (or the path would leave it): no connection was made.
    NotAllowed(String),
    /// The last attempt ran past the timeout.
    Timeout,
    /// Every attempt failed (connection error or 5xx answer); says which and why.
    Unavailable(String),
    /// The answer was over this many bytes (`max_response_bytes`); not retried.
    TooLarge(u64),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotAllowed(s) => write!(f, "not allowed: {s}"),
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::Unavailable(s) => write!(f, "unavailable: {s}"),
            FetchError::TooLarge(n) => write!(f, "answer over {n} bytes"),
        }
    }
}

impl From<FetchError> for Error {
    /// A service that timed out or is down fails the event as transient
    /// (retried later); a refused service or an oversized answer will not
    /// get better by retrying.
    fn from(e: FetchError) -> Self {
        let kind = match e {
            FetchError::Timeout | FetchError::Unavailable(_) => ErrorKind::Transient,
            FetchError::TooLarge(_) => ErrorKind::BadInput,
            FetchError::NotAllowed(_) => ErrorKind::Internal,
        };
        Error {
            kind,
            message: format!("fetch: {e}"),
        }
    }
}

/// An answer a batch will need: a [`fetch`] of `path` from `service`,
/// named ahead by [`Projection::needs`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Need {
    /// The service, as [`fetch`] names it.
    pub service: String,
    /// The path, as [`fetch`] is given it.
    pub path: String,
}

impl Need {
    /// A need for `fetch(service, path)`.
    pub fn new(service: impl Into<String>, path: impl Into<String>) -> Self {
        Need {
            service: service.into(),
            path: path.into(),
        }
    }
}

/// A service's answer to a [`fetch`] (the WIT `fetched`): any status
/// below 500. The host's fetcher answers with this type too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// HTTP status of the answer (below 500).
    pub status: u16,
    /// Body of the answer, at most the service's `max_response_bytes`.
    pub body: Vec<u8>,
    /// Served from the host's cache past its time to live (the service is
    /// down).
    pub stale: bool,
}

impl Fetched {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_input(format!("fetched answer: {e}")))
    }
}

/// GET `path` from `service`, one of the services the runtime's config
/// allows this plugin (enrichment, seed 002). On Wasm the host makes the
/// request, with its timeout, retries and cache; natively the harness
/// answers (see [`harness::set_fetch`]).
pub fn fetch(service: &str, path: &str) -> Result<Fetched, FetchError> {
    #[cfg(target_arch = "wasm32")]
    return wasm::fetch(service, path, false);
    #[cfg(not(target_arch = "wasm32"))]
    return harness::fetch(service, path);
}

/// [`fetch`], past the host's cache: for an answer newer than the one the
/// plugin got (a lagging replica, seed 002).
pub fn fetch_fresh(service: &str, path: &str) -> Result<Fetched, FetchError> {
    #[cfg(target_arch = "wasm32")]
    return wasm::fetch(service, path, true);
    #[cfg(not(target_arch = "wasm32"))]
    return harness::fetch(service, path);
}

/// Write to the host's log (on Wasm), or to stderr when run natively.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    harness::log(level, message);
}

/// Export a [`Projection`] as the plugin's Wasm component.
///
/// ```ignore
/// projector_guest::export!(InboxUnread);
/// ```
/// Natively this expands to nothing, so the same crate builds as an rlib
/// for tests, the native harness and benchmarks.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type __ProjectorAdapter = $crate::wasm::Adapter<$plugin>;
            $crate::wasm::bindings::__export_plugin!(__ProjectorAdapter with_types_in $crate::wasm::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payload_is_parsed_once_per_event() {
        #[derive(Deserialize)]
        struct A {
            a: u32,
        }
        #[derive(Deserialize)]
        struct B {
            b: String,
        }
        let e = Event {
            id: "1".into(),
            event_type: "T".into(),
            payload: r#"{"a": 7, "b": "x"}"#.into(),
            ..Default::default()
        };
        let first = e.parsed::<A>().expect("parses");
        let again = e.parsed::<A>().expect("parses");
        assert_eq!(first.a, 7);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second call reuses the first parse"
        );
        // Another type parses again, and is kept instead.
        assert_eq!(e.parsed::<B>().expect("parses").b, "x");
        assert!(!Arc::ptr_eq(&first, &e.parsed::<A>().expect("parses")));
        // A clone is the same event, with nothing parsed yet.
        let copy = e.clone();
        assert_eq!(copy, e);
        assert!(copy.parsed.0.lock().expect("lock").is_none());
        // A payload that does not fit is the plugin's bad input, each time.
        let bad = Event {
            payload: r#"{"a": "seven"}"#.into(),
            ..e.clone()
        };
        for _ in 0..2 {
            let err = bad.parsed::<A>().err().expect("does not parse");
            assert_eq!(err.kind, ErrorKind::BadInput);
            assert!(err.message.starts_with("T 1: payload:"), "{}", err.message);
        }
    }

    #[test]
    fn json_differences_name_paths_and_reasons() {
        let a = json!({"ids": [1, 2], "n": 2, "x": true});
        let b = json!({"ids": [1, 3, 4], "n": 2, "y": 1});
        let d = json_differences(&a, &b);
        let got: Vec<(&str, &str)> = d
            .iter()
            .map(|d| (d.path.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/ids/1", "value"),
                ("/ids/2", "only-in-source"),
                ("/x", "only-in-projection"),
                ("/y", "only-in-source"),
            ]
        );
        assert!(json_differences(&a, &a).is_empty());
    }
}
