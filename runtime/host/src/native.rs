//! Native projections behind the same [`Code`] trait as Wasm: the plugin
//! crate linked into the host as Rust. Used by benchmarks (Wasm against
//! native, same logic) and by tests that need no sandbox.

use super::{Code, Error, GuestError, Limits, Meta, PluginLogs, Session};
use projector_guest::{
    apply_run, decode_state, encode_state, ApplyResult, Difference, Event, Json, Projection,
};
use std::sync::Arc;

/// A plugin crate linked in as Rust, behind the same [`Code`] trait as Wasm.
pub struct NativePlugin<P: Projection> {
    meta: Meta,
    plugin: P,
}

impl<P: Projection> NativePlugin<P> {
    /// Configure `P` with `settings` as plugin `name`; a refused configuration is a load error.
    pub fn new(name: &str, settings: &Json, limits: Limits) -> Result<Self, Error> {
        let plugin = projector_guest::configure::<P>(settings).map_err(|e| Error::Load {
            plugin: name.into(),
            message: e.to_string(),
        })?;
        let meta = Meta {
            name: name.to_string(),
            id: format!("native:{name}"),
            info: plugin.info(),
            limits,
            logs: Arc::new(PluginLogs::default()),
        };
        Ok(NativePlugin { meta, plugin })
    }
}

impl<P: Projection> Code for NativePlugin<P> {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn session(&self) -> Box<dyn Session + '_> {
        Box::new(NativeSession {
            plugin: &self.plugin,
        })
    }
}

struct NativeSession<'a, P> {
    plugin: &'a P,
}

fn parse(text: &str) -> Result<Json, GuestError> {
    serde_json::from_str(text).map_err(|e| GuestError::bad_input(e.to_string()))
}

impl<P: Projection> Session for NativeSession<'_, P> {
    fn keys(&mut self, events: &[&Event]) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        Ok(events.iter().map(|e| self.plugin.keys(e)).collect())
    }

    fn apply(
        &mut self,
        key: &str,
        state: Option<&[u8]>,
        events: &[&Event],
    ) -> Result<ApplyResult, Error> {
        Ok(apply_run(self.plugin, key, state, events))
    }

    fn render(
        &mut self,
        key: &str,
        state: &[u8],
        now_ms: i64,
    ) -> Result<Result<String, GuestError>, Error> {
        Ok(decode_state::<P::State>(state)
            .and_then(|s| self.plugin.render(key, &s, now_ms))
            .map(|j| j.to_string()))
    }

    fn snapshot(
        &mut self,
        key: &str,
        answer: &str,
    ) -> Result<Result<(Vec<u8>, Vec<(String, u64)>), GuestError>, Error> {
        Ok(parse(answer)
            .and_then(|a| self.plugin.snapshot(key, &a))
            .and_then(|(s, v)| Ok((encode_state(&s)?, v))))
    }

    fn migrate(
        &mut self,
        key: &str,
        state: &[u8],
        from: &str,
    ) -> Result<Result<Option<Vec<u8>>, GuestError>, Error> {
        Ok(self
            .plugin
            .migrate(key, state, from)
            .and_then(|s| s.map(|s| encode_state(&s)).transpose()))
    }

    fn compare(
        &mut self,
        key: &str,
        projection: &str,
        truth: &str,
    ) -> Result<Vec<Difference>, Error> {
        match (parse(projection), parse(truth)) {
            (Ok(a), Ok(b)) => Ok(self.plugin.compare(key, &a, &b)),
            (a, b) => Ok(vec![Difference {
                path: "/".into(),
                reason: "unreadable".into(),
                projection: a.err().map(|e| e.message),
                source: b.err().map(|e| e.message),
            }]),
        }
    }
}
