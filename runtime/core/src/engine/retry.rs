//! Retries and failure routes: delayed retries queued and taken when due,
//! dead letters kept and routed to the source (Kafka topics).

use super::*;
use projector_common::sync::Recover;

/// Where delayed retries and dead letters go besides the store: a Kafka
/// source sends them to its retry and dead-letter topics through the
/// spool, in the same atomic batch as the offsets.
pub trait FailureRoute: Send + Sync {
    /// The record that carries a delayed retry, or `None` to keep it in
    /// the local retry queue.
    fn retry(&self, entry: &RetryEntry) -> Option<OutboxRecord>;
    /// The record that carries a dead letter, if its source has a
    /// dead-letter topic (the letter is kept in the store either way).
    fn dead_letter(&self, letter: &DeadLetter) -> Option<OutboxRecord>;
}

pub(super) type Route<'a> = Option<&'a dyn FailureRoute>;

/// Queue a delayed retry where its source's route sends it.
pub(super) fn queue_retry(writer: &mut Writer, route: Route, entry: RetryEntry) -> Result<()> {
    match route.and_then(|r| r.retry(&entry)) {
        Some(record) => writer.outbox(record)?,
        None => writer.retry(entry)?,
    }
    Ok(())
}

/// Keep a dead letter, and send it where its source's route says.
pub(super) fn record_dead_letter(
    writer: &mut Writer,
    route: Route,
    letter: DeadLetter,
) -> Result<()> {
    if let Some(record) = route.and_then(|r| r.dead_letter(&letter)) {
        writer.outbox(record)?;
    }
    writer.dead_letter(letter)?;
    Ok(())
}

/// Namespace of the offsets of retry topics (records moved to the local
/// retry queue).
pub(super) const RETRY_NS: &str = "@retry";

impl Engine {
    /// Send delayed retries and dead letters along `route` from now on.
    pub fn set_failure_route(&self, route: Option<Arc<dyn FailureRoute>>) {
        *self.route.write().recover() = route;
    }

    pub(super) fn route(&self) -> Option<Arc<dyn FailureRoute>> {
        self.route.read().recover().clone()
    }

    /// Move records of a retry topic into the local retry queue, in order
    /// (`None`: a record that is not a retry, dead-lettered as such), with
    /// the topic's next offset in the same batch.
    pub fn enqueue_retries(
        &self,
        source: &str,
        partition: u32,
        records: &[(u64, Result<RetryEntry, String>)],
    ) -> Result<()> {
        let Some(next) = records.last().map(|(o, _)| o + 1) else {
            return Ok(());
        };
        let mut pending = self.write.lock().recover();
        let from = pending.offset(&self.store, RETRY_NS, source, partition)?;
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        for (offset, entry) in records.iter().filter(|(o, _)| *o >= from) {
            match entry {
                Ok(entry) => writer.retry(entry.clone())?,
                Err(error) => writer.dead_letter(DeadLetter {
                    seq: 0,
                    plugin: None,
                    version: None,
                    stage: "retry".into(),
                    reason: "decode".into(),
                    error: error.clone(),
                    source: source.into(),
                    partition,
                    offset: *offset,
                    key: None,
                    event: None,
                    raw: None,
                    at_ms: now_ms(),
                })?,
            }
        }
        writer.set_offset(RETRY_NS, source, partition, next);
        pending
            .offsets
            .insert((RETRY_NS.to_string(), source.to_string(), partition), next);
        pending.writer = Some(writer);
        Ok(())
    }

    /// Where a retry topic's partition resumes.
    pub fn retry_resume_offset(&self, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().recover();
        pending.offset(&self.store, RETRY_NS, source, partition)
    }

    /// Set how transient failures are retried (before any batch).
    pub fn set_retry(&mut self, retry: RetryConfig) {
        self.retry = retry;
    }

    /// Retry the queued events that are due at `now_ms` (a batch of at
    /// most 256); how many were taken off the queue. Each goes through its
    /// plugin again, for its key only; the version rules decide as for any
    /// late event. Committed at once.
    pub fn retry_due(&self, now_ms: i64) -> Result<usize> {
        let mut pending = self.write.lock().recover();
        let due = self.store.due_retries(now_ms, 256)?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let route = self.route();
        let breakers = self.breakers_on.load(Ordering::Relaxed);
        for entry in &due {
            writer.remove_retry(entry);
            // A paused plugin's retries wait for it, their attempts untouched.
            if let Some(at) = breakers
                .then(|| self.projection(&entry.plugin).ok())
                .flatten()
                .and_then(|p| p.breaker.resume_at(now_ms))
            {
                writer.retry(RetryEntry {
                    not_before_ms: at,
                    ..entry.clone()
                })?;
                continue;
            }
            let p = match self.projection(&entry.plugin) {
                Ok(p) => p,
                Err(_) => {
                    record_dead_letter(
                        &mut writer,
                        route.as_deref(),
                        DeadLetter {
                            seq: 0,
                            plugin: Some(entry.plugin.clone()),
                            version: None,
                            stage: "retry".into(),
                            reason: "unloaded".into(),
                            error: format!("plugin {} is no longer loaded", entry.plugin),
                            source: entry.source.clone(),
                            partition: entry.partition,
                            offset: entry.offset,
                            key: Some(entry.key.clone()),
                            event: Some(entry.event.clone()),
                            raw: None,
                            at_ms: now_ms,
                        },
                    )?;
                    continue;
                }
            };
            let ctx = BatchCtx {
                projection: &p,
                store: &self.store,
                source: &entry.source,
                partition: entry.partition,
                attempt: entry.attempt,
                only_key: (!entry.key.is_empty()).then_some(entry.key.as_str()),
                retry: &p.retry,
                route: route.as_deref(),
                placed: None,
                watch: breakers && !p.breaker.is_paused(),
            };
            let Some(delta) = ctx.run(&[(entry.offset, &entry.event)], 1, &mut writer)? else {
                // Its breaker opened on it: it waits with the plugin,
                // this attempt not counted.
                let at = p.breaker.resume_at(now_ms).unwrap_or(now_ms);
                writer.retry(RetryEntry {
                    not_before_ms: at,
                    ..entry.clone()
                })?;
                continue;
            };
            self.spool_fetched(&mut writer, &p, entry.partition)?;
            let total = {
                let mut c = p.counters.lock().recover();
                c.add(&delta);
                *c
            };
            writer.set_counters(&p.ns, &total);
        }
        pending.writer = Some(writer);
        self.commit_locked(&mut pending)?;
        self.progress.send_modify(|n| *n += 1);
        Ok(due.len())
    }
}
