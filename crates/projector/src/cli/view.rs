//! `projector get` and `projector snapshot`: one view, read or stored,
//! on the local store.

use super::read_input;
use projector::app::App;
use projector::config::Config;
use projector_core::engine::Snapshot;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Print a view; exit 1 when there is none.
pub(crate) fn get(
    config: Config,
    plugin: &str,
    key: &str,
    at_ms: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let app = App::open(config)?;
    let now = at_ms.unwrap_or_else(projector_core::now_ms);
    match app.engine.read(plugin, key, now)? {
        Some(v) => {
            let out = serde_json::json!({
                "plugin": plugin, "key": key, "status": format!("{:?}", v.status).to_lowercase(),
                "versions": v.versions.json(), "updated_ms": v.updated_ms, "view": v.json(),
            });
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&out)?
            )?;
        }
        None => {
            eprintln!("no view for {key:?} in {plugin}");
            return Ok(std::process::ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
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
