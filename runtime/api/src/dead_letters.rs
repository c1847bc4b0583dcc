//! Dead letters: listed by plugin, version and key, and sent back through
//! the serving version once it is fixed (a redrive, counted in
//! `projector_dead_letters_redriven_total` and noted in the plugin's
//! history).

use crate::admin::MAX_LIMIT;
use crate::error::{ApiError, ApiResult, Query};
use crate::metrics::PluginLabel;
use crate::state::ServeState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use projector_core::engine::{Redrive, Redriven};
use projector_core::store::DeadLetter;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Letters a redrive sends back when it names no limit.
const REDRIVE_LIMIT: usize = 1000;

/// Which dead letters, by what they hold.
#[derive(Debug, Default)]
struct Filter {
    /// Only this plugin's.
    plugin: Option<String>,
    /// Only this version's (a content id, or a prefix of one).
    version: Option<String>,
    /// Only this view key's.
    key: Option<String>,
}

impl Filter {
    fn check(&self) -> ApiResult<()> {
        match &self.version {
            Some(v) if v.len() < 4 || !v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Err(ApiError::bad_request(
                    "bad_query",
                    format!(
                        "version: expected a content id or at least 4 of its hex digits, got {v:?}"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn selects(&self, letter: &DeadLetter) -> bool {
        letter.matches(
            self.plugin.as_deref(),
            self.version.as_deref(),
            self.key.as_deref(),
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only this plugin's.
    plugin: Option<String>,
    /// Only this version's (a content id, or a prefix of one).
    version: Option<String>,
    /// Only this view key's.
    key: Option<String>,
    /// At most this many, oldest first (default 100).
    limit: Option<usize>,
}

/// `GET /v1/admin/dead-letters`: dead letters, oldest first.
pub(crate) async fn list(
    State(s): State<Arc<ServeState>>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit: expected 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    let filter = Filter {
        plugin: params.plugin,
        version: params.version,
        key: params.key,
    };
    filter.check()?;
    let engine = s.engine.clone();
    let letters = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for letter in engine.store().dead_letters() {
            let letter = letter.map_err(|e| e.to_string())?;
            if !filter.selects(&letter) {
                continue;
            }
            out.push(serde_json::to_value(&letter).map_err(|e| e.to_string())?);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(json!({"dead_letters": letters})))
}

/// The body of a redrive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveBody {
    /// The plugin whose letters go back through its serving version.
    plugin: String,
    /// Only this version's letters (a content id, or a prefix of one).
    version: Option<String>,
    /// Only this view key's.
    key: Option<String>,
    /// Only these letters, by `seq`.
    seqs: Option<BTreeSet<u64>>,
    /// At most this many (default 1000).
    limit: Option<usize>,
}

/// `POST /v1/admin/dead-letters/redrive`: send dead letters back through
/// the serving version of their plugin.
pub(crate) async fn redrive(
    State(s): State<Arc<ServeState>>,
    body: Result<Json<RedriveBody>, JsonRejection>,
) -> ApiResult<Json<Redriven>> {
    let Json(body) = body.map_err(|e| ApiError::bad_request("bad_redrive", e.body_text()))?;
    let limit = body.limit.unwrap_or(REDRIVE_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_redrive",
            format!("limit: expected 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    Filter {
        version: body.version.clone(),
        ..Filter::default()
    }
    .check()?;
    s.plugin(&body.plugin)?;
    let r = Redrive {
        plugin: body.plugin,
        version: body.version,
        key: body.key,
        seqs: body.seqs,
        limit,
    };
    let done = match s.deployer.clone() {
        Some(d) => crate::admin::blocking(move || d.redrive(&r)).await?,
        None => {
            let engine = s.engine.clone();
            tokio::task::spawn_blocking(move || engine.redrive(&r))
                .await
                .map_err(ApiError::internal)??
        }
    };
    s.metrics
        .redriven
        .get_or_create(&PluginLabel {
            plugin: done.plugin.clone(),
        })
        .inc_by(done.redriven);
    Ok(Json(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(plugin: Option<&str>, version: Option<&str>, key: Option<&str>) -> DeadLetter {
        DeadLetter {
            seq: 1,
            plugin: plugin.map(Into::into),
            version: version.map(Into::into),
            stage: "apply".into(),
            reason: "trap".into(),
            error: "boom".into(),
            source: "log".into(),
            partition: 0,
            offset: 0,
            key: key.map(Into::into),
            event: None,
            raw: None,
            at_ms: 0,
        }
    }

    #[test]
    fn a_filter_selects_by_plugin_version_prefix_and_key() {
        let l = letter(Some("inbox"), Some("abcdef0123"), Some("u1"));
        let f = |plugin: Option<&str>, version: Option<&str>, key: Option<&str>| Filter {
            plugin: plugin.map(Into::into),
            version: version.map(Into::into),
            key: key.map(Into::into),
        };
        assert!(f(None, None, None).selects(&l));
        assert!(f(Some("inbox"), Some("abcd"), Some("u1")).selects(&l));
        assert!(!f(Some("other"), None, None).selects(&l));
        assert!(!f(None, Some("abce"), None).selects(&l));
        assert!(!f(None, None, Some("u2")).selects(&l));
        // A decode error has no plugin, version or key.
        let decode = letter(None, None, None);
        assert!(!f(None, Some("abcd"), None).selects(&decode));
        assert!(f(None, None, None).selects(&decode));
    }

    #[test]
    fn a_version_filter_needs_four_hex_digits() {
        for bad in ["abc", "xyz0", "ab cd"] {
            let f = Filter {
                version: Some(bad.into()),
                ..Filter::default()
            };
            assert!(f.check().is_err(), "{bad}");
        }
        let f = Filter {
            version: Some("abcd".into()),
            ..Filter::default()
        };
        assert!(f.check().is_ok());
    }
}
