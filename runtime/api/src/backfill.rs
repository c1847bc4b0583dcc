//! Backfill from the source of truth (seed 000's "eagerly migrate the
//! inactive conversations", seed 001's month-by-month migration with its
//! progress in view): many keys fetched from a plugin's source of truth
//! and stored as a lazy read stores them (a snapshot with its versions; a
//! newer view is left alone).
//!
//! A backfill is a job of the runtime, not of its client: its keys and
//! their states live in the store ([`KeyStates`]), so a runtime killed
//! halfway resumes the job where it stopped when it starts again, and a
//! key recorded as done is not fetched again (a key finished within the
//! store's last flush interval, 200 ms, may be). It is paced: at most
//! `rate` keys start per second, `concurrency` at once.

use crate::error::{ApiError, ApiResult, Query};
use crate::state::ServeState;
use crate::truth::TruthError;
use crate::verify::keys_of;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use projector_common::sync::Recover;
use projector_core::engine::Snapshot;
use projector_core::store::{KeyState, KeyStates};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed keys kept as examples, with their reasons.
const EXAMPLES: usize = 20;

/// Keys read from the store at a time, to start.
const PAGE: usize = 256;

/// How a job is paced, kept with it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Settings {
    /// Keys started per second, at most.
    rate: f64,
    /// Keys in flight at once, at most.
    concurrency: usize,
    /// When the job was created.
    created_ms: i64,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    pending: u64,
    stored: u64,
    kept: u64,
    failed: u64,
    /// Failures by kind (`not_found`, `unavailable`, `bad_key`, `snapshot`).
    reasons: BTreeMap<String, u64>,
    examples: VecDeque<(String, String)>,
}

impl Counts {
    fn add(&mut self, key: &str, state: &KeyState) {
        match state {
            KeyState::Pending => self.pending += 1,
            KeyState::Stored => self.stored += 1,
            KeyState::Kept => self.kept += 1,
            KeyState::Failed(why) => {
                self.failed += 1;
                let kind = why.split(':').next().unwrap_or(why).to_string();
                *self.reasons.entry(kind).or_default() += 1;
                if self.examples.len() == EXAMPLES {
                    self.examples.pop_front();
                }
                self.examples.push_back((key.to_string(), why.clone()));
            }
        }
    }
}

/// One plugin's backfill.
pub(crate) struct Job {
    plugin: String,
    settings: Settings,
    states: KeyStates,
    counts: Mutex<Counts>,
    /// Keys finished since this runtime took the job up, and when.
    finished_here: AtomicU64,
    taken_up: Instant,
    cancelled: AtomicBool,
    running: AtomicBool,
}

/// The backfills of a runtime, by plugin.
#[derive(Default)]
pub(crate) struct Backfills {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

fn job_name(plugin: &str) -> String {
    format!("backfill/{plugin}")
}

impl Job {
    /// The job as the store has it (counts rebuilt from its keys' states).
    fn open(s: &ServeState, plugin: &str) -> anyhow::Result<Option<Job>> {
        let states = s.engine.store().key_states(&job_name(plugin))?;
        let Some(bytes) = states.settings()? else {
            return Ok(None);
        };
        let settings: Settings = serde_json::from_slice(&bytes)?;
        let mut counts = Counts::default();
        for item in states.all() {
            let (key, state) = item?;
            counts.total += 1;
            counts.add(&key, &state);
        }
        Ok(Some(Job {
            plugin: plugin.to_string(),
            settings,
            states,
            counts: Mutex::new(counts),
            finished_here: AtomicU64::new(0),
            taken_up: Instant::now(),
            cancelled: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }))
    }

    fn record(&self, key: &str, state: KeyState) {
        if let Err(e) = self.states.set(key, &state) {
            tracing::warn!(plugin = self.plugin, key, "backfill: recording a key: {e}");
        }
        let mut c = self.counts.lock().recover();
        c.pending = c.pending.saturating_sub(1);
        c.add(key, &state);
        self.finished_here.fetch_add(1, Ordering::Relaxed);
    }

    /// Where the job is, for `GET` and the CLI's progress bar.
    fn progress(&self) -> Value {
        let c = self.counts.lock().recover();
        let here = self.finished_here.load(Ordering::Relaxed);
        let elapsed = self.taken_up.elapsed().as_secs_f64();
        let per_second = if elapsed > 0.0 {
            here as f64 / elapsed
        } else {
            0.0
        };
        let state = if self.cancelled.load(Ordering::Relaxed) {
            "cancelled"
        } else if c.pending == 0 {
            "done"
        } else if self.running.load(Ordering::Relaxed) {
            "running"
        } else {
            "waiting"
        };
        let eta = (per_second > 0.0 && c.pending > 0).then(|| c.pending as f64 / per_second);
        let examples: Vec<Value> = c
            .examples
            .iter()
            .map(|(k, why)| json!({"key": k, "reason": why}))
            .collect();
        json!({
            "plugin": self.plugin, "state": state,
            "total": c.total, "pending": c.pending, "done": c.stored + c.kept + c.failed,
            "stored": c.stored, "kept_newer": c.kept, "failed": c.failed,
            "failures": c.reasons, "failed_examples": examples,
            "rate": self.settings.rate, "concurrency": self.settings.concurrency,
            "created_ms": self.settings.created_ms,
            "keys_per_second": per_second, "eta_seconds": eta,
        })
    }
}

/// Fetch `key` from the source of truth and store it.
async fn one(s: &ServeState, plugin: &str, key: &str) -> KeyState {
    let Ok(own) = s.plugin(plugin) else {
        return KeyState::Failed("unloaded: the plugin is no longer loaded".into());
    };
    let Some(truth) = own.truth.as_ref() else {
        return KeyState::Failed("config: no source of truth".into());
    };
    let answer = match truth.fetch(key).await {
        Ok(answer) => answer,
        Err(TruthError::NotFound { .. }) => {
            return KeyState::Failed("not_found: the source has nothing for it".into())
        }
        Err(TruthError::BadKey(why)) => return KeyState::Failed(format!("bad_key: {why}")),
        Err(e @ TruthError::Unavailable { .. }) => {
            return KeyState::Failed(format!("unavailable: {e}"))
        }
    };
    match s.store_snapshot(plugin, key, answer).await {
        Ok(Snapshot::Stored) => KeyState::Stored,
        Ok(Snapshot::KeptNewer) => KeyState::Kept,
        Err(e) => KeyState::Failed(format!("snapshot: {e}")),
    }
}

/// Work through the job's pending keys, paced, until none is left or it
/// is cancelled.
async fn run(s: Arc<ServeState>, job: Arc<Job>) {
    job.running.store(true, Ordering::Relaxed);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / job.settings.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(tokio::sync::Semaphore::new(job.settings.concurrency));
    let mut after: Option<String> = None;
    'pages: loop {
        let page = {
            let job = job.clone();
            let after = after.clone();
            tokio::task::spawn_blocking(move || job.states.pending(after.as_deref(), PAGE)).await
        };
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::error!(
                    plugin = job.plugin,
                    "backfill stopped: reading its keys: {e}"
                );
                break;
            }
            Err(e) => {
                tracing::error!(plugin = job.plugin, "backfill stopped: {e}");
                break;
            }
        };
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for key in page {
            ticker.tick().await;
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break 'pages;
            };
            if job.cancelled.load(Ordering::Relaxed) {
                break 'pages;
            }
            let (s, job) = (s.clone(), job.clone());
            tokio::spawn(async move {
                let state = one(&s, &job.plugin, &key).await;
                if !job.cancelled.load(Ordering::Relaxed) {
                    job.record(&key, state);
                }
                drop(slot);
            });
        }
    }
    // Wait for the keys in flight.
    let _all = slots.acquire_many(job.settings.concurrency as u32).await;
    job.running.store(false, Ordering::Relaxed);
    if !job.cancelled.load(Ordering::Relaxed) {
        let p = job.progress();
        tracing::info!(
            plugin = job.plugin,
            stored = %p["stored"], kept = %p["kept_newer"], failed = %p["failed"],
            "backfill finished"
        );
    }
}

/// Take up the backfills a previous run left unfinished (on the API's
/// runtime).
pub(crate) fn resume(s: &Arc<ServeState>) {
    let plugins = s.plugin_names();
    for plugin in plugins {
        match Job::open(s, &plugin) {
            Ok(Some(job)) => {
                let job = Arc::new(job);
                let pending = job.counts.lock().recover().pending;
                s.backfills
                    .jobs
                    .lock()
                    .recover()
                    .insert(plugin.clone(), job.clone());
                if pending > 0 {
                    tracing::info!(plugin, pending, "resuming the backfill");
                    tokio::spawn(run(s.clone(), job));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(plugin, "backfill not resumed: {e}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartParams {
    /// Keys started per second, at most (default 100).
    rate: Option<f64>,
    /// Keys in flight at once, at most (default 4).
    concurrency: Option<usize>,
}

/// `POST /v1/admin/plugins/{plugin}/backfill`: the body lists the keys,
/// one per line.
pub(crate) async fn start(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
    Query(params): Query<StartParams>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.plugin(&plugin)?.truth(&plugin, "to backfill from")?;
    let rate = params.rate.unwrap_or(100.0);
    if !(rate.is_finite() && (0.01..=100_000.0).contains(&rate)) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("rate: expected 0.01 to 100000 keys per second, got {rate}"),
        ));
    }
    let concurrency = params.concurrency.unwrap_or(4);
    if !(1..=256).contains(&concurrency) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("concurrency: expected 1 to 256, got {concurrency}"),
        ));
    }
    let keys = keys_of(&body)?;
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "bad_keys",
            "no keys: the body lists the keys to backfill, one per line",
        ));
    }
    if let Some(job) = s.backfills.jobs.lock().recover().get(&plugin) {
        if job.running.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "backfill_running",
                format!(
                    "a backfill of {plugin} is running ({} keys left); DELETE it first",
                    job.progress()["pending"]
                ),
            ));
        }
    }
    let settings = Settings {
        rate,
        concurrency,
        created_ms: projector_core::now_ms(),
    };
    let created = {
        let (s, plugin) = (s.clone(), plugin.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Job> {
            let states = s.engine.store().key_states(&job_name(&plugin))?;
            states.start(
                keys.iter().map(String::as_str),
                &serde_json::to_vec(&settings)?,
            )?;
            Job::open(&s, &plugin)?.ok_or_else(|| anyhow::anyhow!("the job vanished"))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    };
    let job = Arc::new(created);
    if let Some(old) = s
        .backfills
        .jobs
        .lock()
        .recover()
        .insert(plugin.clone(), job.clone())
    {
        old.cancelled.store(true, Ordering::Relaxed);
    }
    tracing::info!(
        plugin,
        keys = job.counts.lock().recover().total,
        rate,
        concurrency,
        "backfill started"
    );
    tokio::spawn(run(s.clone(), job.clone()));
    Ok((StatusCode::ACCEPTED, Json(job.progress())))
}

fn job(s: &ServeState, plugin: &str) -> ApiResult<Arc<Job>> {
    s.plugin(plugin)?;
    s.backfills
        .jobs
        .lock()
        .recover()
        .get(plugin)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_backfill",
                format!("no backfill of {plugin:?}: POST its keys to start one"),
            )
        })
}

/// `GET /v1/admin/plugins/{plugin}/backfill`.
pub(crate) async fn status(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(job(&s, &plugin)?.progress()))
}

/// `DELETE /v1/admin/plugins/{plugin}/backfill`: stop it and forget its keys.
pub(crate) async fn cancel(
    State(s): State<Arc<ServeState>>,
    Path(plugin): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = job(&s, &plugin)?;
    job.cancelled.store(true, Ordering::Relaxed);
    let progress = job.progress();
    s.backfills.jobs.lock().recover().remove(&plugin);
    let (s2, name) = (s.clone(), plugin.clone());
    tokio::task::spawn_blocking(move || {
        s2.engine
            .store()
            .key_states(&job_name(&name))
            .and_then(|states| states.clear())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    tracing::info!(plugin, "backfill cancelled");
    Ok(Json(progress))
}
