//! The Wasm side of the SDK: generated bindings and the adapter that turns
//! a [`Projection`] into the WIT exports. Only built for `wasm32`.

use crate::{
    apply_run, encode_state, Error, ErrorKind, Json, LogLevel, Outcome, Population, Projection,
    StalePolicy,
};
use std::marker::PhantomData;
use std::sync::OnceLock;

/// The world `prefetching-plugin` of `projector:plugin@0.2.1`; with the
/// `wit-0-2-0` feature, the world `plugin` of 0.2.0 (no `prefetch`), to
/// build a component as plugins built before 0.2.1 are.
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    #[cfg(not(feature = "wit-0-2-0"))]
    wit_bindgen::generate!({
        path: "wit",
        world: "prefetching-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "projector_guest::wasm::bindings",
    });
    #[cfg(feature = "wit-0-2-0")]
    wit_bindgen::generate!({
        path: "wit-0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "projector_guest::wasm::bindings",
    });
}

/// Talc in place of the default dlmalloc, behind free lists of small
/// blocks (`crate::pool`): allocation is a large share of a guest's time
/// (every string the host passes in is one). The `allocator` feature (on
/// by default) sets it.
#[cfg(all(feature = "allocator", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: crate::pool::Pooled<talc::wasm::WasmDynamicTalc> =
    crate::pool::Pooled::new(talc::wasm::new_wasm_dynamic_allocator());

use bindings::exports::projector::plugin::{comparison, projection};
use bindings::projector::plugin::types as wit;

/// The one plugin instance of this component, built by `configure`.
static INSTANCE: OnceLock<Box<dyn std::any::Any + Send + Sync>> = OnceLock::new();

/// Connects a [`Projection`] to the generated export traits.
pub struct Adapter<P>(PhantomData<P>);

impl<P: Projection> Adapter<P> {
    fn plugin() -> Result<&'static P, wit::PluginError> {
        if INSTANCE.get().is_none() {
            let p =
                crate::configure::<P>(&Json::Object(Default::default())).map_err(to_wit_error)?;
            let _ = INSTANCE.set(Box::new(p));
        }
        INSTANCE
            .get()
            .and_then(|b| b.downcast_ref::<P>())
            .ok_or_else(|| to_wit_error(Error::internal("plugin instance has another type")))
    }
}

fn to_wit_error(e: Error) -> wit::PluginError {
    wit::PluginError {
        kind: match e.kind {
            ErrorKind::BadInput => wit::ErrorKind::BadInput,
            ErrorKind::Transient => wit::ErrorKind::Transient,
            ErrorKind::Internal => wit::ErrorKind::Internal,
        },
        message: e.message,
    }
}

fn from_wit_event(e: wit::Event) -> crate::Event {
    crate::Event {
        id: e.id,
        event_type: e.event_type,
        source: e.source,
        key: e.key,
        version: e.version,
        time_ms: e.time_ms,
        payload: e.payload,
        parsed: Default::default(),
    }
}

/// A result that applied nothing, failing with `error`.
fn failed_result(error: wit::PluginError) -> wit::ApplyResult {
    wit::ApplyResult {
        outcome: wit::Outcome::Skip,
        applied: 0,
        error: Some(error),
    }
}

fn to_wit_result(r: crate::ApplyResult) -> wit::ApplyResult {
    wit::ApplyResult {
        outcome: match r.outcome {
            Outcome::Put(s) => wit::Outcome::Put(s),
            Outcome::Delete => wit::Outcome::Delete,
            Outcome::Invalidate => wit::Outcome::Invalidate,
            Outcome::Skip => wit::Outcome::Skip,
        },
        applied: r.applied,
        error: r.error.map(to_wit_error),
    }
}

fn parse_json(what: &str, text: &str) -> Result<Json, wit::PluginError> {
    serde_json::from_str(text).map_err(|e| to_wit_error(Error::bad_input(format!("{what}: {e}"))))
}

/// The keys of each of `events`.
fn keys_of<P: Projection>(events: &[crate::Event]) -> Vec<Result<Vec<String>, wit::PluginError>> {
    match Adapter::<P>::plugin() {
        Ok(plugin) => events
            .iter()
            .map(|e| plugin.keys(e).map_err(to_wit_error))
            .collect(),
        Err(e) => events.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// The positions `span` covers, if they lie within `whole` (for a text,
/// also on character boundaries).
fn cut<'a, T: ?Sized + Within>(whole: &'a T, span: wit::Span, what: &str) -> Result<&'a T, Error> {
    let start = span.start as usize;
    start
        .checked_add(span.len as usize)
        .and_then(|end| whole.within(start..end))
        .ok_or_else(|| {
            Error::bad_input(format!(
                "span {}+{} is not within the {what} (length {}), or not on \
                 character boundaries",
                span.start,
                span.len,
                whole.count()
            ))
        })
}

/// A text or list a [`wit::Span`] can point into.
trait Within {
    fn within(&self, range: std::ops::Range<usize>) -> Option<&Self>;
    fn count(&self) -> usize;
}

impl Within for str {
    fn within(&self, range: std::ops::Range<usize>) -> Option<&str> {
        self.get(range)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl<T> Within for [T] {
    fn within(&self, range: std::ops::Range<usize>) -> Option<&[T]> {
        self.get(range)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// The events of a packed batch, each string cut out of the batch's text.
fn unpack(packed: wit::PackedEvents) -> Result<Vec<crate::Event>, Error> {
    let text = packed.text.as_str();
    let string = |s| cut(text, s, "batch's text").map(str::to_owned);
    packed
        .events
        .into_iter()
        .map(|e| {
            Ok(crate::Event {
                id: string(e.id)?,
                event_type: string(e.event_type)?,
                source: string(e.source)?,
                key: string(e.key)?,
                version: e.version,
                time_ms: e.time_ms,
                payload: string(e.payload)?,
                parsed: Default::default(),
            })
        })
        .collect()
}

/// One run of `runs`, applied to the batch's `events`.
fn apply_packed<P: Projection>(
    plugin: &P,
    events: &[crate::Event],
    runs: &wit::PackedRuns,
    run: &wit::KeyRun,
) -> Result<crate::ApplyResult, Error> {
    let key = cut(runs.keys.as_str(), run.key, "runs' keys")?;
    let state = match run.state {
        Some(s) => Some(cut(runs.states.as_slice(), s, "runs' states")?),
        None => None,
    };
    let mine = cut(runs.events.as_slice(), run.events, "runs' events")?
        .iter()
        .map(|&i| {
            events.get(i as usize).ok_or_else(|| {
                Error::internal(format!(
                    "event index {i} is past the batch of {}",
                    events.len()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(apply_run(plugin, key, state, &mine))
}

/// A batch's events, kept in the plugin between the calls that use them,
/// or why they could not be read.
pub struct Batch<P> {
    events: Result<Vec<crate::Event>, wit::PluginError>,
    plugin: PhantomData<P>,
}

impl<P: Projection> projection::GuestBatch for Batch<P> {
    fn new(events: wit::PackedEvents) -> Self {
        Batch {
            events: unpack(events).map_err(to_wit_error),
            plugin: PhantomData,
        }
    }

    fn keys(&self, start: u32, count: u32) -> Vec<Result<Vec<String>, wit::PluginError>> {
        let events = match &self.events {
            Ok(events) => events,
            Err(e) => return (0..count).map(|_| Err(e.clone())).collect(),
        };
        let start = (start as usize).min(events.len());
        let end = start.saturating_add(count as usize).min(events.len());
        keys_of::<P>(&events[start..end])
    }

    fn apply(&self, runs: wit::PackedRuns) -> Vec<wit::ApplyResult> {
        let ready = Adapter::<P>::plugin()
            .and_then(|p| Ok((p, self.events.as_ref().map_err(Clone::clone)?)));
        let (plugin, events) = match ready {
            Ok(ready) => ready,
            Err(e) => return runs.runs.iter().map(|_| failed_result(e.clone())).collect(),
        };
        runs.runs
            .iter()
            .map(|run| match apply_packed(plugin, events, &runs, run) {
                Ok(r) => to_wit_result(r),
                Err(e) => failed_result(to_wit_error(e)),
            })
            .collect()
    }
}

impl<P: Projection> projection::Guest for Adapter<P> {
    type Batch = Batch<P>;

    fn configure(settings: String) -> Result<wit::PluginInfo, wit::PluginError> {
        let settings = parse_json("settings", &settings)?;
        if INSTANCE.get().is_none() {
            let p = crate::configure::<P>(&settings).map_err(to_wit_error)?;
            let _ = INSTANCE.set(Box::new(p));
        }
        let info = Self::plugin()?.info();
        Ok(wit::PluginInfo {
            name: info.name,
            version: info.version,
            population: match info.population {
                Population::Lazy => wit::Population::Lazy,
                Population::Eager => wit::Population::Eager,
            },
            stale_policy: match info.stale_policy {
                StalePolicy::Invalidate => wit::StalePolicy::Invalidate,
                StalePolicy::Ignore => wit::StalePolicy::Ignore,
            },
            render_uses_time: info.render_uses_time,
        })
    }

    fn keys(events: Vec<wit::Event>) -> Vec<Result<Vec<String>, wit::PluginError>> {
        let events: Vec<crate::Event> = events.into_iter().map(from_wit_event).collect();
        keys_of::<P>(&events)
    }

    fn apply(key: String, state: Option<Vec<u8>>, events: Vec<wit::Event>) -> wit::ApplyResult {
        let plugin = match Self::plugin() {
            Ok(p) => p,
            Err(e) => return failed_result(e),
        };
        let events: Vec<crate::Event> = events.into_iter().map(from_wit_event).collect();
        to_wit_result(apply_run(plugin, &key, state.as_deref(), &events))
    }

    fn render(key: String, state: Vec<u8>, now_ms: i64) -> Result<String, wit::PluginError> {
        let plugin = Self::plugin()?;
        let state = crate::decode_state::<P::State>(&state).map_err(to_wit_error)?;
        let json = plugin.render(&key, &state, now_ms).map_err(to_wit_error)?;
        Ok(json.to_string())
    }

    fn from_snapshot(key: String, answer: String) -> Result<wit::Snapshot, wit::PluginError> {
        let plugin = Self::plugin()?;
        let answer = parse_json("snapshot answer", &answer)?;
        let (state, versions) = plugin.snapshot(&key, &answer).map_err(to_wit_error)?;
        Ok(wit::Snapshot {
            state: encode_state(&state).map_err(to_wit_error)?,
            versions,
        })
    }

    fn migrate(
        key: String,
        state: Vec<u8>,
        from_version: String,
    ) -> Result<Option<Vec<u8>>, wit::PluginError> {
        let plugin = Self::plugin()?;
        match plugin
            .migrate(&key, &state, &from_version)
            .map_err(to_wit_error)?
        {
            Some(s) => Ok(Some(encode_state(&s).map_err(to_wit_error)?)),
            None => Ok(None),
        }
    }
}

impl<P: Projection> comparison::Guest for Adapter<P> {
    fn compare(key: String, projection: String, source: String) -> wit::Verdict {
        let parsed = Self::plugin().and_then(|p| {
            Ok((
                p,
                parse_json("projection answer", &projection)?,
                parse_json("source answer", &source)?,
            ))
        });
        let (plugin, a, b) = match parsed {
            Ok(x) => x,
            Err(e) => {
                return wit::Verdict::Different(vec![wit::Difference {
                    path: "/".into(),
                    reason: "unreadable".into(),
                    projection: None,
                    source: Some(e.message),
                }])
            }
        };
        let diffs = plugin.compare(&key, &a, &b);
        if diffs.is_empty() {
            wit::Verdict::Equal
        } else {
            wit::Verdict::Different(
                diffs
                    .into_iter()
                    .map(|d| wit::Difference {
                        path: d.path,
                        reason: d.reason,
                        projection: d.projection,
                        source: d.source,
                    })
                    .collect(),
            )
        }
    }
}

#[cfg(not(feature = "wit-0-2-0"))]
impl<P: Projection> bindings::exports::projector::plugin::prefetch::Guest for Adapter<P> {
    /// Each event's needs, each named once; none when the batch or the
    /// plugin cannot be read (then `apply` says why).
    fn needs(
        events: wit::PackedEvents,
    ) -> Vec<bindings::exports::projector::plugin::prefetch::Need> {
        let (Ok(plugin), Ok(events)) = (Self::plugin(), unpack(events)) else {
            return Vec::new();
        };
        let mut seen = std::collections::BTreeSet::new();
        events
            .iter()
            .flat_map(|e| plugin.needs(e))
            .filter(|n| seen.insert(n.clone()))
            .map(|n| bindings::exports::projector::plugin::prefetch::Need {
                service: n.service,
                path: n.path,
            })
            .collect()
    }
}

pub(crate) fn fetch(
    service: &str,
    path: &str,
    fresh: bool,
) -> Result<crate::Fetched, crate::FetchError> {
    use bindings::projector::plugin::enrichment;
    match enrichment::fetch(service, path, fresh) {
        Ok(f) => Ok(crate::Fetched {
            status: f.status,
            body: f.body,
            stale: f.stale,
        }),
        Err(wit::FetchError::NotAllowed(s)) => Err(crate::FetchError::NotAllowed(s)),
        Err(wit::FetchError::Timeout) => Err(crate::FetchError::Timeout),
        Err(wit::FetchError::Unavailable(s)) => Err(crate::FetchError::Unavailable(s)),
        Err(wit::FetchError::TooLarge(n)) => Err(crate::FetchError::TooLarge(n)),
    }
}

pub(crate) fn log(level: LogLevel, message: &str) {
    use bindings::projector::plugin::host;
    let level = match level {
        LogLevel::Trace => wit::LogLevel::Trace,
        LogLevel::Debug => wit::LogLevel::Debug,
        LogLevel::Info => wit::LogLevel::Info,
        LogLevel::Warn => wit::LogLevel::Warn,
        LogLevel::Error => wit::LogLevel::Error,
    };
    host::log(level, message);
}
