//! The source of truth of a plugin (`[plugins.NAME.truth]`; the older
//! name `source` is still read, with a warning): the legacy HTTP endpoint a read falls
//! back to, and whose answer becomes a snapshot (lazy population).
//!
//! ```toml
//! [plugins.inbox-unread.truth]
//! url = "http://legacy/unread?user={user}&site={site}"
//! key = "{user}:{site}"      # how a view key splits into the url's fields
//! timeout_ms = 1000          # per attempt
//! retries = 2                # further attempts after a failed one
//! backoff_ms = 50            # doubled after each attempt
//! ```
//!
//! `{key}` in the url is always the whole view key. Field values are
//! percent-encoded into the url.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use projector_host::backoff::Backoff;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[plugins.NAME.truth]`: where a plugin's source of truth answers.
pub struct TruthConfig {
    /// URL template; `{key}` is the whole view key, other `{field}`s come from `key`.
    pub url: String,
    /// Pattern that splits a view key into the url's fields, e.g. `{user}:{site}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Per-attempt timeout, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a failed one (timeouts, connection errors, 5xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before the first retry, in ms; doubled after each attempt.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_key() -> String {
    "{key}".into()
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u64 {
    50
}

/// A template of literal text and `{field}` placeholders.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

fn parse_template(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{text:?}: unclosed `{{`"))?
            + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{text:?}: bad field name {name:?}"));
        }
        parts.push(Part::Field(name.to_string()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

/// How a view key splits into named fields, e.g. `{user}:{site}`.
#[derive(Debug, Clone)]
pub struct KeyPattern {
    parts: Vec<Part>,
}

impl KeyPattern {
    /// Parses a pattern; fails on a bad field name or two fields with no text between them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = parse_template(text)?;
        if parts
            .windows(2)
            .any(|w| matches!(w, [Part::Field(_), Part::Field(_)]))
        {
            return Err(format!(
                "{text:?}: two fields need text between them to be told apart"
            ));
        }
        Ok(KeyPattern { parts })
    }

    /// The pattern's field names, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The fields of `key`, or why it does not match.
    pub fn split<'k>(&self, key: &'k str) -> Result<HashMap<&str, &'k str>, String> {
        let mut out = HashMap::new();
        let mut rest = key;
        let mut parts = self.parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                Part::Text(t) => {
                    rest = rest
                        .strip_prefix(t.as_str())
                        .ok_or_else(|| format!("expected {t:?} in {key:?}"))?;
                }
                Part::Field(name) => {
                    let end = match parts.peek() {
                        Some(Part::Text(t)) => rest
                            .find(t.as_str())
                            .ok_or_else(|| format!("expected {t:?} after the {name} field"))?,
                        _ => rest.len(),
                    };
                    if end == 0 {
                        return Err(format!("empty {name} field"));
                    }
                    out.insert(name.as_str(), &rest[..end]);
                    rest = &rest[end..];
                }
            }
        }
        if !rest.is_empty() {
            return Err(format!("unexpected {rest:?} at the end"));
        }
        Ok(out)
    }
}

/// Why the source of truth gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The view key does not fit the key pattern.
    #[error("the key does not fit the source's key pattern: {0}")]
    BadKey(String),
    /// The source answered 404: it has nothing for the key.
    #[error("{url}: not found")]
    NotFound {
        /// The url asked.
        url: String,
    },
    /// The source gave no usable answer: retries ran out, or it answered
    /// another 4xx or invalid JSON.
    #[error("{url}: {reason} (after {attempts} attempts)")]
    Unavailable {
        /// The url asked.
        url: String,
        /// Why the last attempt failed.
        reason: String,
        /// Attempts made, the first included.
        attempts: u32,
    },
}

/// A configured source of truth.
#[derive(Debug, Clone)]
pub struct Truth {
    url: Vec<Part>,
    key: KeyPattern,
    timeout: Duration,
    backoff: Backoff,
    client: reqwest::Client,
}

impl Truth {
    /// Check the config: the url's fields must come from the key pattern.
    pub fn new(config: &TruthConfig) -> Result<Self, String> {
        let url = parse_template(&config.url).map_err(|e| format!("url: {e}"))?;
        let key = KeyPattern::parse(&config.key).map_err(|e| format!("key: {e}"))?;
        if !config.url.starts_with("http://") && !config.url.starts_with("https://") {
            return Err(format!(
                "url: expected http:// or https://, got {:?}",
                config.url
            ));
        }
        for part in &url {
            if let Part::Field(f) = part {
                if f != "key" && !key.fields().any(|k| k == f) {
                    return Err(format!(
                        "url: field {{{f}}} is neither {{key}} nor a field of the key pattern {:?}",
                        config.key
                    ));
                }
            }
        }
        if config.timeout_ms == 0 {
            return Err("timeout_ms: expected at least 1, got 0".into());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Truth {
            url,
            key,
            timeout: Duration::from_millis(config.timeout_ms),
            backoff: Backoff::new(config.retries, config.backoff_ms),
            client,
        })
    }

    /// The key pattern's fields of `key` (e.g. its `user`).
    pub fn fields<'k>(&self, key: &'k str) -> Result<HashMap<&str, &'k str>, String> {
        self.key.split(key)
    }

    /// The url to ask for `key`.
    pub fn url(&self, key: &str) -> Result<String, TruthError> {
        let fields = self.key.split(key).map_err(TruthError::BadKey)?;
        let mut out = String::new();
        for part in &self.url {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let value = if f == "key" { key } else { fields[f.as_str()] };
                    out.extend(utf8_percent_encode(value, NON_ALPHANUMERIC));
                }
            }
        }
        Ok(out)
    }

    /// The source's JSON answer for `key`, with retries and backoff.
    pub async fn fetch(&self, key: &str) -> Result<String, TruthError> {
        let url = self.url(key)?;
        let attempts = self.backoff.attempts();
        let mut reason = String::new();
        for attempt in 1..=attempts {
            if let Some(pause) = self.backoff.pause_before(attempt) {
                tokio::time::sleep(pause).await;
            }
            match self.attempt(&url).await {
                Ok(Some(body)) => return Ok(body),
                Ok(None) => return Err(TruthError::NotFound { url }),
                Err((why, retry)) => {
                    reason = why;
                    if !retry {
                        return Err(TruthError::Unavailable {
                            url,
                            reason,
                            attempts: attempt,
                        });
                    }
                }
            }
        }
        Err(TruthError::Unavailable {
            url,
            reason,
            attempts,
        })
    }

    /// One request: the body (`None` for a 404), or why not and whether
    /// to try again.
    async fn attempt(&self, url: &str) -> Result<Option<String>, (String, bool)> {
        let response = self.client.get(url).send().await.map_err(|e| {
            let why = if e.is_timeout() {
                format!("no answer within {} ms", self.timeout.as_millis())
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                e.to_string()
            };
            (why, true)
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response
            .text()
            .await
            .map_err(|e| (format!("reading the answer: {e}"), true))?;
        if !status.is_success() {
            let excerpt: String = body.chars().take(200).collect();
            return Err((
                format!("answered {status}: {excerpt}"),
                status.is_server_error(),
            ));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&body)
            .map_err(|e| (format!("answered with invalid JSON: {e}"), false))?;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(url: &str, key: &str) -> Result<Truth, String> {
        Truth::new(&TruthConfig {
            url: url.into(),
            key: key.into(),
            timeout_ms: 100,
            retries: 0,
            backoff_ms: 1,
        })
    }

    #[test]
    fn keys_fill_the_url_encoded() {
        let s = truth(
            "http://legacy/unread?user={user}&site={site}",
            "{user}:{site}",
        )
        .expect("valid");
        assert_eq!(
            s.url("u 1:s/2").expect("fits"),
            "http://legacy/unread?user=u%201&site=s%2F2"
        );
        let whole = truth("http://legacy/views/{key}", "{key}").expect("valid");
        assert_eq!(whole.url("a:b").expect("fits"), "http://legacy/views/a%3Ab");
    }

    #[test]
    fn bad_keys_and_configs_are_named() {
        let s = truth("http://x/{user}/{site}", "{user}:{site}").expect("valid");
        assert!(matches!(s.url("nosep"), Err(TruthError::BadKey(_))));
        assert!(matches!(s.url(":s"), Err(TruthError::BadKey(_))));
        assert!(truth("http://x/{team}", "{user}:{site}")
            .expect_err("rejected")
            .contains("{team}"));
        assert!(truth("ftp://x/{key}", "{key}")
            .expect_err("rejected")
            .contains("http://"));
        assert!(truth("http://x/{key", "{key}")
            .expect_err("rejected")
            .contains("unclosed"));
        assert!(KeyPattern::parse("{a}{b}").is_err());
    }
}
