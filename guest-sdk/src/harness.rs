//! A native test harness: feed events to a plugin as plain Rust, read the
//! views back. It applies the same version rules ([`crate::rules`]) as the host
//! (versions, population, invalidation), so what a unit test shows is what
//! the runtime will store; only Wasm, sled and the sources are left out.

use crate::rules::{self, CallError, Status, Verdict, Versions, View};
#[cfg(not(target_arch = "wasm32"))]
use crate::LogLevel;
use crate::{apply_run, decode_state, encode_state, Error, Event, Info, Json, Projection};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A plugin driven natively, with its views in memory.
pub struct Harness<P: Projection> {
    plugin: P,
    info: Info,
    views: BTreeMap<String, View>,
}

/// A view as a test reads it: status, versions and decoded state.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewOf<S> {
    pub status: Status,
    pub versions: Versions,
    /// `None` once the view is Invalid.
    pub state: Option<S>,
}

impl<P: Projection> Harness<P> {
    /// Configure the plugin with `settings` (a JSON object) as the host
    /// does: a setting it does not declare ([`Projection::SETTINGS`]) is
    /// refused before its `configure` runs.
    pub fn new(settings: Json) -> Result<Self, Error> {
        let plugin = crate::configure::<P>(&settings)?;
        let info = plugin.info();
        Ok(Harness {
            plugin,
            info,
            views: BTreeMap::new(),
        })
    }

    /// Override the plugin's population policy (as the host config can).
    pub fn with_population(mut self, population: crate::Population) -> Self {
        self.info.population = population;
        self
    }

    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// Feed one event; returns each touched key with what happened to it.
    pub fn feed(&mut self, event: &Event) -> Result<Vec<(String, Verdict<Error>)>, Error> {
        let keys = self.plugin.keys(event)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let plugin = &self.plugin;
            let (view, mut verdicts) = rules::fold_key(
                self.views.get(&key),
                self.info.population,
                self.info.stale_policy,
                std::slice::from_ref(event),
                |state, _run| {
                    Ok::<_, Error>(apply_run(plugin, &key, state, std::slice::from_ref(event)))
                },
            );
            match view {
                Some(Cow::Owned(view)) => {
                    self.views.insert(key.clone(), view);
                }
                Some(Cow::Borrowed(_)) => {}
                None => {
                    self.views.remove(&key);
                }
            }
            let verdict = match verdicts.pop() {
                Some(Verdict::Failed(CallError::Plugin(e) | CallError::Host(e))) => {
                    Verdict::Failed(e)
                }
                Some(Verdict::Applied) => Verdict::Applied,
                Some(Verdict::Invalidated) => Verdict::Invalidated,
                Some(Verdict::Skipped(d)) => Verdict::Skipped(d),
                None => return Err(Error::internal("fold_key returned no verdict")),
            };
            out.push((key, verdict));
        }
        Ok(out)
    }

    /// Feed events in order, stopping at the first the plugin cannot route.
    pub fn feed_all<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<(), Error> {
        for e in events {
            self.feed(e)?;
        }
        Ok(())
    }

    /// Store a snapshot built by the plugin from a source-of-truth answer.
    pub fn snapshot(&mut self, key: &str, answer: &Json) -> Result<(), Error> {
        let (state, versions) = self.plugin.snapshot(key, answer)?;
        let view = View::from_snapshot(encode_state(&state)?, Versions::from_pairs(versions));
        self.views.insert(key.to_string(), view);
        Ok(())
    }

    /// The view of `key`, decoded; `None` when absent.
    pub fn view(&self, key: &str) -> Result<Option<ViewOf<P::State>>, Error> {
        let Some(v) = self.views.get(key) else {
            return Ok(None);
        };
        let state = v
            .state
            .as_deref()
            .map(decode_state::<P::State>)
            .transpose()?;
        Ok(Some(ViewOf {
            status: v.status,
            versions: v.versions.clone(),
            state,
        }))
    }

    /// The rendered answer for `key` at `now_ms`; `None` unless Valid.
    pub fn render(&self, key: &str, now_ms: i64) -> Result<Option<Json>, Error> {
        match self.view(key)? {
            Some(ViewOf {
                status: Status::Valid,
                state: Some(s),
                ..
            }) => self.plugin.render(key, &s, now_ms).map(Some),
            _ => Ok(None),
        }
    }

    /// All keys that have a view (Valid or Invalid).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }
}

/// What answers [`crate::fetch`] when a plugin runs natively.
pub type FetchFn =
    dyn Fn(&str, &str) -> Result<crate::Fetched, crate::FetchError> + Send + Sync + 'static;

#[cfg(not(target_arch = "wasm32"))]
static FETCH: std::sync::RwLock<Option<std::sync::Arc<FetchFn>>> = std::sync::RwLock::new(None);

/// Answer the plugin's fetches with `f` (service, path) in native tests.
/// Without it every service is refused, as on a host with no services.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_fetch(
    f: impl Fn(&str, &str) -> Result<crate::Fetched, crate::FetchError> + Send + Sync + 'static,
) {
    *FETCH.write().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(f));
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn fetch(service: &str, path: &str) -> Result<crate::Fetched, crate::FetchError> {
    let f = FETCH.read().unwrap_or_else(|p| p.into_inner()).clone();
    match f {
        Some(f) => f(service, path),
        None => Err(crate::FetchError::NotAllowed(service.to_string())),
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn log(level: LogLevel, message: &str) {
    if level >= LogLevel::Warn {
        eprintln!("[plugin {level:?}] {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, ErrorKind, Population, StalePolicy};
    use serde_json::json;

    /// A counter that keeps the settings it was given; `DECLARED` says
    /// whether it declares `limit` and `source` as its settings.
    struct Counter<const DECLARED: bool>(Json);

    impl<const DECLARED: bool> Projection for Counter<DECLARED> {
        type State = u64;
        const SETTINGS: Option<&'static [&'static str]> = if DECLARED {
            Some(&["limit", "source"])
        } else {
            None
        };
        fn configure(settings: &Json) -> Result<Self, Error> {
            Ok(Counter(settings.clone()))
        }
        fn info(&self) -> Info {
            Info {
                name: "counter".into(),
                version: "1".into(),
                population: Population::Eager,
                stale_policy: StalePolicy::Ignore,
                render_uses_time: false,
            }
        }
        fn keys(&self, e: &Event) -> Result<Vec<String>, Error> {
            Ok(vec![e.key.clone()])
        }
        fn apply(&self, _: &str, n: &mut u64, _: &Event) -> Result<Change, Error> {
            *n += 1;
            Ok(Change::Updated)
        }
        fn render(&self, _: &str, n: &u64, _: i64) -> Result<Json, Error> {
            Ok(json!({ "count": n }))
        }
        fn snapshot(&self, _: &str, _: &Json) -> Result<(u64, crate::SourceVersions), Error> {
            Ok((0, Vec::new()))
        }
    }

    #[test]
    fn a_misspelled_setting_is_refused_before_configure_naming_the_one_meant() {
        let e = Harness::<Counter<true>>::new(json!({"limt": 5}))
            .err()
            .expect("refused");
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert_eq!(
            e.message,
            "unknown setting \"limt\" (did you mean \"limit\"?); \
             the plugin accepts limit, source"
        );
    }

    #[test]
    fn declared_settings_reach_configure() {
        let settings = json!({"limit": 5, "source": "inbox"});
        let h = Harness::<Counter<true>>::new(settings.clone()).expect("accepted");
        assert_eq!(h.plugin().0, settings);
        let h = Harness::<Counter<true>>::new(json!({})).expect("accepted");
        assert_eq!(h.plugin().0, json!({}));
    }

    #[test]
    fn a_plugin_that_declares_nothing_accepts_any_settings() {
        let settings = json!({"limt": 5, "anything": [1, 2]});
        let h = Harness::<Counter<false>>::new(settings.clone()).expect("accepted");
        assert_eq!(h.plugin().0, settings);
    }
}
