//! `projector dead-letters`: dead letters as JSON lines, oldest first
//! (from a running instance's API when it holds the store), and
//! `projector dead-letters redrive`: a plugin's letters sent back through
//! its serving version (through the running instance, whose plugins
//! apply them).

use super::plugin::{admin_with, api_base};
use super::{held_elsewhere, through_api};
use anyhow::bail;
use projector::args::DeadLetterFilter;
use projector::config::Config;
use std::io::Write;

pub(crate) fn list(
    config: &Config,
    filter: &DeadLetterFilter,
    limit: usize,
    api: Option<String>,
) -> anyhow::Result<()> {
    if !config.data_dir.exists() {
        bail!("no data in {}", config.data_dir.display());
    }
    let store = match projector_core::store::Store::open(&config.data_dir) {
        Ok(store) => store,
        Err(e) => {
            let e = anyhow::Error::from(e);
            if !held_elsewhere(&e) {
                return Err(e);
            }
            let mut path = format!("/v1/admin/dead-letters?limit={limit}");
            for (name, value) in [
                ("plugin", &filter.plugin),
                ("version", &filter.version),
                ("key", &filter.key),
            ] {
                if let Some(v) = value {
                    let v = percent_encoding::utf8_percent_encode(
                        v,
                        percent_encoding::NON_ALPHANUMERIC,
                    );
                    path.push_str(&format!("&{name}={v}"));
                }
            }
            let out = through_api(config, api, &path, e)?.unwrap_or_default();
            let mut stdout = std::io::stdout().lock();
            for letter in out["dead_letters"].as_array().into_iter().flatten() {
                writeln!(stdout, "{letter}")?;
            }
            return Ok(());
        }
    };
    let mut shown = 0;
    let mut stdout = std::io::stdout().lock();
    for letter in store.dead_letters() {
        let letter = letter?;
        if !letter.matches(
            filter.plugin.as_deref(),
            filter.version.as_deref(),
            filter.key.as_deref(),
        ) {
            continue;
        }
        writeln!(stdout, "{}", serde_json::to_string(&letter)?)?;
        shown += 1;
        if shown == limit {
            break;
        }
    }
    Ok(())
}

/// What `projector dead-letters redrive` sends back.
pub(crate) struct Redrive<'a> {
    pub(crate) plugin: &'a str,
    pub(crate) version: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
    pub(crate) seqs: &'a [u64],
    pub(crate) limit: usize,
}

pub(crate) fn redrive(config: &Config, r: &Redrive, api: Option<String>) -> anyhow::Result<()> {
    let base = api_base(config, api);
    let mut body = serde_json::json!({"plugin": r.plugin, "limit": r.limit});
    if let Some(v) = r.version {
        body["version"] = v.into();
    }
    if let Some(k) = r.key {
        body["key"] = k.into();
    }
    if !r.seqs.is_empty() {
        body["seqs"] = r.seqs.into();
    }
    let url = format!("{base}/v1/admin/dead-letters/redrive");
    let done = admin_with(
        "POST",
        &url,
        Some(body.to_string().as_bytes()),
        "application/json",
    )?;
    let version = done["version"].as_str().unwrap_or_default();
    let n = done["redriven"].as_u64().unwrap_or(0);
    eprintln!(
        "{n} dead letter{} sent back through {} version {}; they apply within a second \
         (a letter that fails again comes back as a new one)",
        if n == 1 { "" } else { "s" },
        r.plugin,
        &version[..version.len().min(12)],
    );
    for s in done["skipped"].as_array().into_iter().flatten() {
        eprintln!("dead letter {} left: {}", s["seq"], s["reason"]);
    }
    writeln!(std::io::stdout(), "{done}")?;
    Ok(())
}
