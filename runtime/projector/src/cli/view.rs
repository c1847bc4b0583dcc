//! `projector get` and `projector snapshot`: one view, read or stored,
//! on the local store (`get` through a running instance's API when that
//! instance holds the store).

use super::{held_elsewhere, read_input, through_api};
use projector::app::App;
use projector::config::Config;
use projector_core::engine::{AsOf, Snapshot};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Print a view; exit 1 when there is none. With the store held by a
/// running instance, through its API.
pub(crate) fn get(
    config: Config,
    plugin: &str,
    key: &str,
    at_ms: Option<i64>,
    api: Option<String>,
) -> anyhow::Result<ExitCode> {
    let now = at_ms.unwrap_or_else(projector_core::now_ms);
    let out = match App::open(config.clone()) {
        Ok(app) => app.engine.read(plugin, key, now)?.map(|v| {
            serde_json::json!({
                "plugin": plugin, "key": key, "status": format!("{:?}", v.status).to_lowercase(),
                "versions": v.versions.json(), "updated_ms": v.updated_ms, "view": v.json(),
            })
        }),
        Err(e) if held_elsewhere(&e) => {
            let path = format!("/v1/admin/plugins/{plugin}/views/{key}?at_ms={now}");
            through_api(&config, api, &path, e)?
        }
        Err(e) => return Err(e),
    };
    printed(out, &format!("no view for {key:?} in {plugin}"))
}

/// Print `out`, or say `absent` and exit 1 when there is none.
fn printed(out: Option<serde_json::Value>, absent: &str) -> anyhow::Result<ExitCode> {
    match out {
        Some(out) => {
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&out)?
            )?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("{absent}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Print a view as it was at `time` or as of `position` (a token); exit 1
/// when it had none then. With the store held by a running instance,
/// through its API.
pub(crate) fn get_as_of(
    config: Config,
    plugin: &str,
    key: &str,
    time: Option<i64>,
    position: Option<String>,
    at_ms: Option<i64>,
    api: Option<String>,
) -> anyhow::Result<ExitCode> {
    let now = at_ms.unwrap_or_else(projector_core::now_ms);
    let (query, at) = match (time, position) {
        (Some(ms), _) => (format!("as_of={ms}"), AsOf::Time(ms)),
        (None, Some(token)) => {
            let t = projector_api::token::Token::parse(&token)
                .map_err(|e| anyhow::anyhow!("--as-of-position: {e}"))?;
            let query: String =
                percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
                    .collect();
            (format!("as_of_position={query}"), t.as_of())
        }
        (None, None) => unreachable!("asked with --as-of or --as-of-position"),
    };
    let out = match App::open(config.clone()) {
        Ok(app) => app.engine.view_as_of(plugin, key, &at, now)?.and_then(|p| {
            let view = p.view?;
            Some(serde_json::json!({
                "plugin": plugin, "key": key, "at_ms": p.at_ms, "version": p.version,
                "offsets": p.offsets.iter().map(|(s, part, next)| serde_json::json!({"source": s, "partition": part, "next": next})).collect::<Vec<_>>(),
                "status": format!("{:?}", view.status).to_lowercase(), "versions": view.versions.json(),
                "updated_ms": view.updated_ms, "answer": view.json(),
            }))
        }),
        Err(e) if held_elsewhere(&e) => {
            let path = format!("/v1/views/{plugin}/{key}?{query}&at_ms={now}");
            through_api(&config, api, &path, e)?
        }
        Err(e) => return Err(e),
    };
    printed(out, &format!("no view for {key:?} in {plugin} then"))
}

/// Store a view built from a source-of-truth answer.
pub(crate) fn snapshot(
    config: Config,
    plugin: &str,
    key: &str,
    answer: &Path,
) -> anyhow::Result<()> {
    let app = App::open(config)?;
    let text = read_input(answer)?;
    let stored = app.engine.snapshot(plugin, key, &text)?;
    app.engine.store().flush()?;
    match stored {
        Snapshot::Stored => eprintln!("stored a snapshot of {key:?} in {plugin}"),
        Snapshot::KeptNewer => eprintln!(
            "kept the view of {key:?} in {plugin}: it is Valid and at or past every version of the answer"
        ),
    }
    Ok(())
}
