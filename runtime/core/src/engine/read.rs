//! Reads: a view rendered for a reader, and snapshots from the source of
//! truth (lazy population).

use super::*;
use projector_common::sync::Recover;

/// A view as a reader gets it.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// Whether the view is maintained (Valid) or awaits repair (Invalid).
    pub status: Status,
    /// Highest applied version per source.
    pub versions: Versions,
    /// Time of the last applied event (ms), for staleness.
    pub updated_ms: i64,
    /// The plugin's rendered answer (checked JSON); `None` unless Valid.
    pub body: Option<Arc<RawValue>>,
}

impl PartialEq for ReadView {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.versions == other.versions
            && self.updated_ms == other.updated_ms
            && self.body.as_ref().map(|b| b.get()) == other.body.as_ref().map(|b| b.get())
    }
}

impl ReadView {
    /// The rendered answer as a JSON value.
    pub fn json(&self) -> Option<serde_json::Value> {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_str(b.get()).ok())
    }
}

impl Engine {
    /// A view of generation `p`, rendered at `now_ms` when Valid; none
    /// when it expired by `now_ms`.
    pub fn read_in(&self, p: &Projection, key: &str, now_ms: i64) -> Result<Option<ReadView>> {
        let Some(record) = p.view(&self.store, key)? else {
            return Ok(None);
        };
        if p.expiry.is_expired(&record, now_ms) {
            p.expiry.expired_read();
            return Ok(None);
        }
        let body = match (&record.view.status, &record.view.state) {
            (Status::Valid, Some(state)) => Some(p.render(key, state, now_ms)?),
            _ => None,
        };
        Ok(Some(ReadView {
            status: record.view.status,
            versions: record.view.versions.clone(),
            updated_ms: record.updated_ms,
            body,
        }))
    }

    /// The view of `key` in `plugin`, rendered at `now_ms` when Valid.
    pub fn read(&self, plugin: &str, key: &str, now_ms: i64) -> Result<Option<ReadView>> {
        let p = self.projection(plugin)?;
        self.read_in(&p, key, now_ms)
    }

    /// Store a view of `key` built by the plugin from the source of
    /// truth's `answer` (lazy population). Events at or below the
    /// answer's versions will not disturb it. A Valid view already at or
    /// past every version of the answer is newer, and is left alone.
    pub fn snapshot(&self, plugin: &str, key: &str, answer: &str) -> Result<Snapshot> {
        let p = self.projection(plugin)?;
        check_key(key, p.code.limits())?;
        let (state, versions) =
            p.code
                .session()
                .snapshot(key, answer)?
                .map_err(|e| Error::Guest {
                    plugin: plugin.into(),
                    message: format!("from-snapshot: {e}"),
                })?;
        check_state(&p.code, &state)?;
        let versions = Versions::from_pairs(versions);
        let mut pending = self.write.lock().recover();
        let now = now_ms();
        let current = p
            .view(&self.store, key)?
            .filter(|r| !p.expiry.is_expired(r, now));
        let newer = current.is_some_and(|r| {
            r.view.status == Status::Valid
                && versions
                    .0
                    .iter()
                    .all(|(source, v)| r.view.versions.get(source).is_some_and(|have| have >= *v))
        });
        if newer {
            return Ok(Snapshot::KeptNewer);
        }
        let view = View::from_snapshot(state, versions);
        p.set_view(
            key,
            Some(ViewRecord {
                view,
                updated_ms: now,
            }),
        );
        // A snapshot is durable at once, with whatever was pending.
        pending.writer.get_or_insert_with(|| self.store.writer());
        self.commit_locked(&mut pending)?;
        Ok(Snapshot::Stored)
    }

    /// Mark the view of `key` Invalid (a repair after a failed
    /// verification): reads fall back to the source of truth, and the
    /// next snapshot replaces it. Whether there was a view to mark.
    pub fn invalidate(&self, plugin: &str, key: &str) -> Result<bool> {
        let p = self.projection(plugin)?;
        let mut pending = self.write.lock().recover();
        let Some(record) = p.view(&self.store, key)? else {
            return Ok(false);
        };
        let mut record = Arc::unwrap_or_clone(record);
        record.view.status = Status::Invalid;
        record.view.state = None;
        p.set_view(key, Some(record));
        pending.writer.get_or_insert_with(|| self.store.writer());
        self.commit_locked(&mut pending)?;
        Ok(true)
    }
}

/// What a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    /// The answer is the key's view now.
    Stored,
    /// A Valid view at or past the answer's versions was there, and stays.
    KeptNewer,
}
