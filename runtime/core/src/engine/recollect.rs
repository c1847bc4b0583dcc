//! Recollection: views rebuilt from their sources, key by key.

use super::*;
use projector_common::sync::Recover;

/// What a recollection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecollectSummary {
    /// Keys asked for (the given ones, or every stored view).
    pub keys: u64,
    /// Views rebuilt with a new state.
    pub rebuilt: u64,
    /// Views the plugin skipped or invalidated, left as they were.
    pub unchanged: u64,
    /// Views the plugin deleted.
    pub deleted: u64,
    /// (key, error) of the keys that failed; their views are untouched.
    pub failed: Vec<(String, String)>,
}

/// Keys recollected per commit.
pub(super) const RECOLLECT_CHUNK: usize = 256;

impl Engine {
    /// Rebuild views of `plugin` from its sources: each key gets one
    /// [`projector_guest::RECOLLECT`] event, which the plugin answers by
    /// fetching what the view holds. `keys`: the given ones, or every
    /// stored view. A rebuilt view is Valid, whatever it was. Progress is
    /// reported as (done, total) after each chunk, which is committed.
    pub fn recollect(
        &self,
        plugin: &str,
        keys: Option<Vec<String>>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<RecollectSummary> {
        let p = self.projection(plugin)?;
        self.commit()?;
        let keys = match keys {
            Some(keys) => keys,
            None => self
                .store
                .views(&p.ns)
                .map(|r| r.map(|(k, _)| k))
                .collect::<Result<_, _>>()?,
        };
        for key in &keys {
            check_key(key, p.code.limits())?;
        }
        let mut summary = RecollectSummary {
            keys: keys.len() as u64,
            ..Default::default()
        };
        for (i, chunk) in keys.chunks(RECOLLECT_CHUNK).enumerate() {
            let mut pending = self.write.lock().recover();
            let mut session = p.code.session();
            let now = now_ms();
            let events: Vec<Event> = chunk
                .iter()
                .map(|key| Event {
                    id: format!("recollect-{now}"),
                    event_type: projector_guest::RECOLLECT.into(),
                    source: "@recollect".into(),
                    key: key.clone(),
                    version: now as u64,
                    time_ms: now,
                    payload: "{}".into(),
                    ..Default::default()
                })
                .collect();
            // What the plugin names ahead for the chunk is fetched at once.
            let refs: Vec<&Event> = events.iter().collect();
            session.prefetch(&EventBatch::new(&refs));
            for (key, event) in chunk.iter().zip(&events) {
                let before = p.view(&self.store, key)?;
                let state = before.as_ref().and_then(|r| r.view.state.as_deref());
                let result = session.apply(key, state, &[event]);
                let result = match result {
                    Ok(r) if r.error.is_none() => r,
                    Ok(r) => {
                        let e = r.error.map(|e| e.to_string()).unwrap_or_default();
                        summary.failed.push((key.clone(), e));
                        continue;
                    }
                    Err(e) => {
                        summary.failed.push((key.clone(), e.to_string()));
                        continue;
                    }
                };
                let base = before.map_or_else(View::empty, |r| Arc::unwrap_or_clone(r).view);
                let view = match result.outcome {
                    Outcome::Put(state) => {
                        if let Err(e) = check_state(&p.code, &state) {
                            summary.failed.push((key.clone(), e.to_string()));
                            continue;
                        }
                        summary.rebuilt += 1;
                        Some(View {
                            status: Status::Valid,
                            state: Some(state),
                            ..base
                        })
                    }
                    Outcome::Delete => {
                        summary.deleted += 1;
                        None
                    }
                    Outcome::Skip | Outcome::Invalidate => {
                        summary.unchanged += 1;
                        continue;
                    }
                };
                p.set_view(
                    key,
                    view.map(|view| ViewRecord {
                        view,
                        updated_ms: now,
                    }),
                );
            }
            drop(session);
            pending.writer.get_or_insert_with(|| self.store.writer());
            self.commit_locked(&mut pending)?;
            progress(((i + 1) * RECOLLECT_CHUNK).min(keys.len()), keys.len());
        }
        Ok(summary)
    }
}
