//! Dead letters sent back through their plugin (a redrive): once a fixed
//! version serves, the events it failed go through it again. Each chosen
//! letter leaves the dead-letter list and joins the retry queue, due at
//! once, in one atomic batch (on Kafka, through the retry topic, as any
//! retry); the driver's next step applies it to the plugin's serving
//! generation, for its key (or, when its keys could not be found, for
//! every key it routes to). An event that fails again is retried and
//! dead-lettered by the usual rules, as a new letter.

use super::retry::queue_retry;
use super::*;
use serde::Serialize;

/// Which dead letters of one plugin to send back.
#[derive(Debug, Clone)]
pub struct Redrive {
    /// The plugin whose letters go back through its serving version.
    pub plugin: String,
    /// Only letters of this version (a content id, or a prefix of one).
    pub version: Option<String>,
    /// Only letters of this view key.
    pub key: Option<String>,
    /// Only these letters (by `seq`); `None`: every one that matches.
    pub seqs: Option<BTreeSet<u64>>,
    /// At most this many.
    pub limit: usize,
}

impl Redrive {
    /// Every dead letter of `plugin`, at most `limit`.
    pub fn all(plugin: &str, limit: usize) -> Self {
        Redrive {
            plugin: plugin.into(),
            version: None,
            key: None,
            seqs: None,
            limit,
        }
    }

    /// Whether `letter` is one of those chosen.
    pub fn selects(&self, letter: &DeadLetter) -> bool {
        letter.matches(
            Some(&self.plugin),
            self.version.as_deref(),
            self.key.as_deref(),
        ) && self.seqs.as_ref().is_none_or(|s| s.contains(&letter.seq))
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Serialize)]
pub struct Redriven {
    /// The plugin.
    pub plugin: String,
    /// The version the letters go back through (its content id).
    pub version: String,
    /// Letters sent back.
    pub redriven: u64,
    /// Their `seq`s.
    pub seqs: Vec<u64>,
    /// Letters chosen but not sent back, with why.
    pub skipped: Vec<Skipped>,
}

/// A chosen letter that cannot go back.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The letter's `seq`.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

impl Engine {
    /// Send the dead letters `r` chooses back through the serving version
    /// of their plugin (see the module's documentation).
    pub fn redrive(&self, r: &Redrive) -> Result<Redriven> {
        let p = self.projection(&r.plugin)?;
        let mut pending = self.write.lock().recover();
        pending.healthy()?;
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let route = self.route();
        let now = now_ms();
        let mut out = Redriven {
            plugin: r.plugin.clone(),
            version: p.code().id().to_string(),
            redriven: 0,
            seqs: Vec::new(),
            skipped: Vec::new(),
        };
        for letter in self.store.dead_letters() {
            if out.seqs.len() >= r.limit {
                break;
            }
            let letter = letter?;
            if !r.selects(&letter) {
                continue;
            }
            let Some(event) = letter.event else {
                out.skipped.push(Skipped {
                    seq: letter.seq,
                    reason: "the letter holds no decoded event".into(),
                });
                continue;
            };
            writer.remove_dead_letter(letter.seq);
            let entry = RetryEntry {
                seq: 0,
                plugin: r.plugin.clone(),
                key: letter.key.unwrap_or_default(),
                attempt: 1,
                error: format!("dead letter {} sent back: {}", letter.seq, letter.error),
                source: letter.source,
                partition: letter.partition,
                offset: letter.offset,
                event,
                not_before_ms: now,
            };
            queue_retry(&mut writer, route.as_deref(), entry)?;
            out.seqs.push(letter.seq);
        }
        out.redriven = out.seqs.len() as u64;
        pending.writer = Some(writer);
        self.commit_locked(&mut pending)?;
        tracing::info!(
            plugin = r.plugin,
            version = &out.version[..out.version.len().min(12)],
            redriven = out.redriven,
            skipped = out.skipped.len(),
            "dead letters sent back"
        );
        Ok(out)
    }
}
