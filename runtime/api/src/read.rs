//! View reads: the read mode chosen by the rollout rules (or asked for),
//! position tokens waited for, the projection's answer or the source of
//! truth's, lazy population, comparison of both.

use crate::error::{ApiError, ApiResult, Query};
use crate::metrics::RuleLabels;
use crate::metrics::{ModeLabels, PluginLabel, ReadLabels, ReasonLabels, ResultLabels};
use crate::rollout::{self, Mode, Place, Rollout};
use crate::route::Routed;
use crate::state::{differences_json, Mismatch, PluginServe, ServeState};
use crate::token::Token;
use crate::truth::{Truth, TruthError};
use crate::HttpConfig;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use projector_common::sync::Recover;
use projector_core::engine::{self, AsOf, ReadView, Snapshot};
use projector_guest::rules::Status;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait a reader may ask for with `wait_ms`.
const MAX_WAIT_MS: u64 = 60_000;

/// A read's query: its own parameters, and the rest for rollout rules
/// that match on query attributes.
#[derive(Debug, Default)]
pub(crate) struct ReadParams {
    /// Force a read mode, bypassing the rollout rules.
    mode: Option<String>,
    /// Position token to wait for.
    token: Option<String>,
    /// How long to wait for the token, in ms.
    wait_ms: Option<u64>,
    /// Read time for `render`, in ms since the epoch (default: now).
    at_ms: Option<i64>,
    /// `stale=ok`: with several instances, a standby's views may answer.
    stale_ok: bool,
    /// `as_of=<ms>` or `as_of_position=<token>`: the view as it was then.
    pub(crate) as_of: Option<AsOf>,
    /// Every other parameter, for the rollout rules.
    attributes: Vec<(String, String)>,
}

impl ReadParams {
    fn parse(pairs: Vec<(String, String)>) -> ApiResult<Self> {
        fn number<T: std::str::FromStr>(name: &str, v: &str) -> ApiResult<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| ApiError::bad_request("bad_query", format!("{name}: {e}: {v:?}")))
        }
        let mut p = ReadParams::default();
        for (k, v) in pairs {
            match k.as_str() {
                "mode" => p.mode = Some(v),
                "token" => p.token = Some(v),
                "wait_ms" => p.wait_ms = Some(number("wait_ms", &v)?),
                "at_ms" => p.at_ms = Some(number("at_ms", &v)?),
                "as_of" => p.as_of = Some(AsOf::Time(number("as_of", &v)?)),
                "as_of_position" => p.as_of = Some(crate::past::position(&v)?),
                "stale" => {
                    p.stale_ok = match v.as_str() {
                        "ok" | "true" => true,
                        "no" | "false" => false,
                        _ => {
                            return Err(ApiError::bad_request(
                                "bad_query",
                                format!("stale: expected ok or no, got {v:?}"),
                            ))
                        }
                    }
                }
                _ => p.attributes.push((k, v)),
            }
        }
        Ok(p)
    }

    /// Refuse a parameter no rule of `rollout` reads (a typo, most likely).
    fn check_attributes(&self, rollout: &Rollout) -> ApiResult<()> {
        for (k, _) in &self.attributes {
            if !rollout.query_attributes().any(|q| q == k) {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!(
                        "unknown parameter {k:?}: expected mode, token, wait_ms, at_ms, stale, as_of, as_of_position, or a query attribute a rollout rule matches on"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the projection had for a key.
enum Lookup {
    Hit {
        view: ReadView,
        answer: Arc<RawValue>,
    },
    Miss {
        reason: &'static str,
        view: Option<ReadView>,
    },
}

fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Valid => "valid",
        Status::Invalid => "invalid",
    }
}

pub(crate) fn view_json(view: Option<&ReadView>) -> Value {
    match view {
        Some(v) => {
            json!({"status": status_name(&v.status), "versions": v.versions.json(), "updated_ms": v.updated_ms})
        }
        None => Value::Null,
    }
}

/// One read in progress: what the handler learns along the way.
struct Read<'a> {
    s: &'a ServeState,
    plugin: &'a str,
    key: &'a str,
    own: &'a PluginServe,
    mode: Mode,
    now: i64,
    served_by: &'static str,
    populated: Option<Value>,
    comparison: Option<Value>,
}

impl Read<'_> {
    fn lookup(&self) -> ApiResult<Lookup> {
        let found = match self.s.engine.read(self.plugin, self.key, self.now) {
            Ok(found) => found,
            Err(e @ (engine::Error::Plugin(_) | engine::Error::Guest { .. })) => {
                tracing::warn!(plugin = self.plugin, key = self.key, "render failed: {e}");
                let result = Lookup::Miss {
                    reason: "render_error",
                    view: None,
                };
                self.s.metrics.lookup(self.plugin, "invalid");
                return Ok(result);
            }
            Err(e) => return Err(e.into()),
        };
        let (result, lookup) = match found {
            Some(view) if view.status == Status::Valid && view.body.is_some() => {
                let answer = view.body.clone().expect("checked just above");
                ("hit", Lookup::Hit { view, answer })
            }
            Some(view) => (
                "invalid",
                Lookup::Miss {
                    reason: "invalid",
                    view: Some(view),
                },
            ),
            None => (
                "absent",
                Lookup::Miss {
                    reason: "absent",
                    view: None,
                },
            ),
        };
        self.s.metrics.lookup(self.plugin, result);
        Ok(lookup)
    }

    fn truth(&self) -> ApiResult<&Truth> {
        self.own.truth.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "no_source",
                format!(
                    "plugin {:?} has no source of truth configured ([plugins.{}.truth]); only mode projection is available",
                    self.plugin, self.plugin
                ),
            )
        })
    }

    async fn fetch(&self) -> ApiResult<Value> {
        let truth = self.truth()?;
        match truth.fetch(self.key).await {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "source_invalid",
                    format!("source of truth answered invalid JSON: {e}"),
                )
            }),
            Err(TruthError::BadKey(why)) => Err(ApiError::bad_request(
                "bad_key",
                format!("key {:?}: {why}", self.key),
            )),
            Err(TruthError::NotFound { .. }) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_in_source",
                format!(
                    "the source of truth of {} has nothing for {:?}",
                    self.plugin, self.key
                ),
            )),
            Err(e @ TruthError::Unavailable { .. }) => {
                self.s
                    .metrics
                    .truth_errors
                    .get_or_create(&PluginLabel {
                        plugin: self.plugin.into(),
                    })
                    .inc();
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "source_unavailable",
                    format!("source of truth of {}: {e}", self.plugin),
                ))
            }
        }
    }

    /// Store the source of truth's answer as the key's view (lazy population).
    async fn populate(&mut self, answer: &Value) {
        let stored = self
            .s
            .store_snapshot(self.plugin, self.key, answer.to_string())
            .await;
        self.populated = Some(match stored {
            Ok(Snapshot::Stored) => json!({"stored": true}),
            Ok(Snapshot::KeptNewer) => json!({"stored": false, "kept_newer_view": true}),
            Err(e) => {
                tracing::warn!(
                    plugin = self.plugin,
                    key = self.key,
                    "snapshot not stored: {e}"
                );
                json!({"stored": false, "error": e})
            }
        });
    }

    /// The source of truth answers instead of the projection, and populates it.
    async fn fall_back(&mut self, reason: &'static str) -> ApiResult<Value> {
        if self.own.truth.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "view_not_found",
                format!(
                    "no valid view of {:?} in {} ({reason}), and the plugin has no source of truth to fall back to",
                    self.key, self.plugin
                ),
            ));
        }
        self.s
            .metrics
            .fallbacks
            .get_or_create(&ReasonLabels {
                plugin: self.plugin.into(),
                reason: reason.into(),
            })
            .inc();
        let answer = self.fetch().await?;
        self.populate(&answer).await;
        self.served_by = "source";
        Ok(answer)
    }

    /// Compare both answers with the plugin's rule and record the result.
    fn compare(&mut self, projection: &RawValue, truth: &Value) -> ApiResult<()> {
        let p = self.s.engine.projection(self.plugin)?;
        let differences = p
            .code()
            .session()
            .compare(self.key, projection.get(), &truth.to_string())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "plugin_error",
                    e.to_string(),
                )
            })?;
        let result = if differences.is_empty() {
            "equal"
        } else {
            "mismatch"
        };
        let m = &self.s.metrics;
        m.comparisons
            .get_or_create(&ResultLabels {
                plugin: self.plugin.into(),
                result: result.into(),
            })
            .inc();
        for d in &differences {
            m.mismatches
                .get_or_create(&ReasonLabels {
                    plugin: self.plugin.into(),
                    reason: d.reason.clone(),
                })
                .inc();
        }
        self.comparison = Some(json!({
            "equal": differences.is_empty(),
            "differences": differences_json(&differences),
        }));
        if !differences.is_empty() {
            let mut recent = self.own.mismatches.lock().recover();
            if recent.len() >= self.s.http.mismatches_kept.max(1) {
                recent.pop_front();
            }
            recent.push_back(Mismatch {
                key: self.key.into(),
                at_ms: self.now,
                mode: self.mode,
                projection: serde_json::from_str(projection.get()).unwrap_or(Value::Null),
                truth: truth.clone(),
                differences,
            });
        }
        Ok(())
    }

    /// Answer in the chosen mode; the view as it was read (or populated).
    async fn answer(&mut self) -> ApiResult<(Answer, Option<ReadView>)> {
        match self.mode {
            Mode::Truth => {
                self.served_by = "source";
                Ok((Answer::Truth(self.fetch().await?), None))
            }
            Mode::Projection => match self.lookup()? {
                Lookup::Hit { view, answer } => Ok((Answer::View(answer), Some(view))),
                Lookup::Miss { reason, .. } => {
                    Ok((Answer::Truth(self.fall_back(reason).await?), None))
                }
            },
            Mode::CompareReturnTruth => {
                let truth = self.fetch().await?;
                self.served_by = "source";
                match self.lookup()? {
                    Lookup::Hit { view, answer } => {
                        self.compare(&answer, &truth)?;
                        Ok((Answer::Truth(truth), Some(view)))
                    }
                    Lookup::Miss { view, .. } => {
                        self.populate(&truth).await;
                        Ok((Answer::Truth(truth), view))
                    }
                }
            }
            Mode::CompareReturnProjection => match self.lookup()? {
                Lookup::Hit { view, answer } => {
                    match self.fetch().await {
                        Ok(truth) => self.compare(&answer, &truth)?,
                        Err(e) => {
                            self.comparison = Some(json!({"skipped": e.message}));
                        }
                    }
                    Ok((Answer::View(answer), Some(view)))
                }
                Lookup::Miss { reason, .. } => {
                    Ok((Answer::Truth(self.fall_back(reason).await?), None))
                }
            },
        }
    }
}

/// The request's user for rollout rules: the user header, else the key's
/// `user` field (by the source of truth's key pattern), else the whole key.
fn request_user<'a>(
    headers: &'a HeaderMap,
    http: &HttpConfig,
    own: &PluginServe,
    key: &'a str,
) -> &'a str {
    if let Some(u) = headers
        .get(http.user_header.as_str())
        .and_then(|v| v.to_str().ok())
    {
        return u;
    }
    own.truth
        .as_ref()
        .and_then(|t| t.fields(key).ok())
        .and_then(|f| f.get("user").copied())
        .unwrap_or(key)
}

pub(crate) async fn read_view(
    State(s): State<Arc<ServeState>>,
    Path((plugin, key)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let started = Instant::now();
    let params = ReadParams::parse(query)?;
    let own = s.plugin(&plugin)?;
    let code = s.engine.projection(&plugin)?;
    engine::check_key(&key, code.code().limits())?;
    let standby =
        match crate::route::route(&s, &plugin, &key, params.stale_ok, &uri, &headers).await {
            Routed::Here => false,
            Routed::Standby => true,
            Routed::Answered(answer) => return Ok(answer),
        };
    if let Some(at) = &params.as_of {
        let now = params.at_ms.unwrap_or_else(projector_core::now_ms);
        return crate::past::as_of(&s, &plugin, &key, at.clone(), now, standby).await;
    }
    let token = position_token(&s, &plugin, &key, &params, &headers)?;
    let wait_ms = wait_ms(&params, &s.http)?;
    let (mode, rule) = choose_mode(&s, &plugin, &key, &own, &params, &headers)?;
    if let Some(t) = &token {
        if mode != Mode::Truth {
            s.wait_for(&plugin, t, Duration::from_millis(wait_ms))
                .await?;
        }
    }
    let now = params.at_ms.unwrap_or_else(projector_core::now_ms);
    let mut read = Read {
        s: &s,
        plugin: &plugin,
        key: &key,
        own: &own,
        mode,
        now,
        served_by: "projection",
        populated: None,
        comparison: None,
    };
    let (answer, mut view) = read.answer().await?;
    if read.populated.is_some() {
        view = s.engine.read(&plugin, &key, now).ok().flatten();
    }
    let served_by = read.served_by;
    let body = ReadAnswer {
        plugin: &plugin,
        key: &key,
        mode: mode.as_str(),
        served_by,
        answer: &answer,
        view: view_json(view.as_ref()),
        staleness: s.staleness(&plugin, view.as_ref(), projector_core::now_ms()),
        populated: read.populated.take(),
        comparison: read.comparison.take(),
    };
    let response = respond(body, standby, &rule);
    count_read(&s, plugin, mode, served_by, started);
    Ok(response)
}

/// The read's position token (query `token`, else the
/// `x-projector-token` header), checked against what this runtime
/// follows. With several instances, only the view's partition is waited
/// for: a token may name partitions other instances own.
fn position_token(
    s: &ServeState,
    plugin: &str,
    key: &str,
    params: &ReadParams,
    headers: &HeaderMap,
) -> ApiResult<Option<Token>> {
    let token = params
        .token
        .as_deref()
        .or_else(|| {
            headers
                .get("x-projector-token")
                .and_then(|v| v.to_str().ok())
        })
        .map(Token::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_token", e))?;
    let token = match (token, s.engine.partition_of(plugin, key)) {
        (Some(mut t), Some(p)) => {
            t.offsets.retain(|q, _| *q == p);
            (!t.offsets.is_empty()).then_some(t)
        }
        (t, _) => t,
    };
    if let Some(t) = &token {
        check_token(t, &s.feed.positions())?;
    }
    Ok(token)
}

/// Refuse a token for another source, or for a partition it does not
/// follow (`feeds`: per source id, the partitions followed and their ends).
fn check_token(t: &Token, feeds: &[(String, Vec<(u32, u64)>)]) -> ApiResult<()> {
    if feeds.is_empty() {
        return Ok(());
    }
    let Some((_, ends)) = feeds.iter().find(|(id, _)| *id == t.source) else {
        let ids: Vec<&str> = feeds.iter().map(|(id, _)| id.as_str()).collect();
        return Err(ApiError::bad_request(
            "bad_token",
            format!(
                "token is for source {:?}; views here follow {}",
                t.source,
                ids.join(", ")
            ),
        ));
    };
    if let Some(p) = t
        .offsets
        .keys()
        .find(|p| !ends.iter().any(|(q, _)| q == *p))
    {
        let have: Vec<String> = ends.iter().map(|(q, _)| q.to_string()).collect();
        return Err(ApiError::bad_request(
            "bad_token",
            format!(
                "token names partition {p}; this runtime follows partitions {} of {}",
                have.join(","),
                t.source
            ),
        ));
    }
    Ok(())
}

/// How long the read may wait for its token, in ms.
fn wait_ms(params: &ReadParams, http: &HttpConfig) -> ApiResult<u64> {
    let wait_ms = params.wait_ms.unwrap_or(http.consistency_timeout_ms);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("wait_ms: expected at most {MAX_WAIT_MS}, got {wait_ms}"),
        ));
    }
    Ok(wait_ms)
}

/// The read mode and the rule that chose it: the one asked for, else
/// the rollout's; counted, and refused when it needs a source of truth
/// the plugin lacks.
fn choose_mode(
    s: &ServeState,
    plugin: &str,
    key: &str,
    own: &PluginServe,
    params: &ReadParams,
    headers: &HeaderMap,
) -> ApiResult<(Mode, String)> {
    let rollout = own.rollout.read().recover().clone();
    params.check_attributes(&rollout)?;
    let (mode, rule) = match params.mode.as_deref() {
        Some(m) => (
            Mode::parse(m).map_err(|e| ApiError::bad_request("bad_mode", e))?,
            "asked".into(),
        ),
        None if own.truth.is_none() => (Mode::Projection, "default".into()),
        None => by_rollout(&rollout, &s.http, key, own, params, headers),
    };
    s.metrics
        .rules
        .get_or_create(&RuleLabels {
            plugin: plugin.into(),
            rule: rule.clone(),
            mode: mode.as_str().into(),
        })
        .inc();
    if mode.needs_truth() && own.truth.is_none() {
        return Err(ApiError::bad_request(
            "no_source",
            format!(
                "mode {} needs a source of truth, and plugin {plugin:?} has none configured",
                mode.as_str()
            ),
        ));
    }
    Ok((mode, rule))
}

/// The mode `rollout`'s rules give this request, and the rule's name.
fn by_rollout(
    rollout: &Rollout,
    http: &HttpConfig,
    key: &str,
    own: &PluginServe,
    params: &ReadParams,
    headers: &HeaderMap,
) -> (Mode, String) {
    let groups: Vec<&str> = headers
        .get(http.groups_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let attribute = |place: Place, name: &str| match place {
        Place::Header => headers.get(name).and_then(|v| v.to_str().ok()),
        Place::Query => params.attribute(name),
    };
    let request = rollout::Request {
        user: request_user(headers, http, own, key),
        groups: &groups,
        key,
        attribute: &attribute,
    };
    let (mode, rule) = rollout.choose(request, rand::random::<f64>());
    (mode, rule.into_owned())
}

/// The read's answer as JSON, with its mode, its rule and whether a
/// standby answered in headers.
fn respond(body: ReadAnswer<'_>, standby: bool, rule: &str) -> Response {
    let mode = body.mode;
    let mut response = Json(body).into_response();
    let h = response.headers_mut();
    h.insert("x-projector-mode", HeaderValue::from_static(mode));
    if standby {
        // A standby's views: current as of the last changelog record read.
        h.insert(crate::route::STANDBY, HeaderValue::from_static("true"));
    }
    if let Ok(v) = HeaderValue::from_str(rule) {
        h.insert("x-projector-rule", v);
    }
    response
}

/// Count an answered read and its latency.
fn count_read(
    s: &ServeState,
    plugin: String,
    mode: Mode,
    served_by: &'static str,
    started: Instant,
) {
    s.metrics
        .reads
        .get_or_create(&ReadLabels {
            plugin: plugin.clone(),
            mode: mode.as_str().into(),
            served_by: served_by.into(),
        })
        .inc();
    s.metrics
        .read_seconds
        .get_or_create(&ModeLabels {
            plugin,
            mode: mode.as_str().into(),
        })
        .observe(started.elapsed().as_secs_f64());
}

/// Who answered a read: the plugin's rendered view (kept as checked raw
/// JSON, never re-parsed) or the source of truth.
enum Answer {
    View(Arc<RawValue>),
    Truth(Value),
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::View(raw) => raw.serialize(s),
            Answer::Truth(value) => value.serialize(s),
        }
    }
}

/// The body of a view read.
#[derive(serde::Serialize)]
struct ReadAnswer<'a> {
    plugin: &'a str,
    key: &'a str,
    mode: &'static str,
    served_by: &'static str,
    answer: &'a Answer,
    view: Value,
    staleness: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    populated: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison: Option<Value>,
}
