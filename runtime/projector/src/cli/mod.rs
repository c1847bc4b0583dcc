//! The commands, one file each, and what several of them share.

pub(crate) mod backfill;
pub(crate) mod build;
pub(crate) mod dead_letters;
pub(crate) mod kafka_dev;
pub(crate) mod new;
pub(crate) mod plugin;
pub(crate) mod recollect;
pub(crate) mod replay;
pub(crate) mod run;
pub(crate) mod signals;
pub(crate) mod status;
pub(crate) mod test_plugin;
pub(crate) mod verify;
pub(crate) mod view;

use anyhow::Context;
use projector::app::App;
pub(crate) use projector::args::PluginAction;
use projector_core::driver::Totals;
use std::path::Path;

pub(crate) fn plugin_names(app: &App) -> Vec<String> {
    app.engine
        .projections()
        .iter()
        .map(|p| p.name().to_string())
        .collect()
}

pub(crate) fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading stdin");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub(crate) fn print_summary(t: &Totals) -> std::io::Result<()> {
    use std::io::Write;
    let c = &t.counters;
    // Written, not printed: a closed stdout (a supervisor's, `| head`) is
    // an error to report, never a panic on the way out.
    writeln!(
        std::io::stdout(),
        "events {}, applied {}, skipped {}, invalidated {}, dead-lettered {}, decode errors {}, {:.0} events/s",
        t.records,
        c.applied,
        c.skipped,
        c.invalidated,
        c.dead_lettered,
        t.decode_errors,
        t.records_per_second()
    )
}

/// Whether `e` says another process holds the store (a running `projector
/// run`).
pub(crate) fn held_elsewhere(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<projector_core::store::Error>(),
            Some(projector_core::store::Error::Locked { .. })
        )
    })
}

/// GET `path` of the running instance's API (`--api`, else `http.listen`)
/// with the admin token, for a command whose store that instance holds
/// (`held` says so): its JSON answer, `None` for a 404.
pub(crate) fn through_api(
    config: &projector::config::Config,
    api: Option<String>,
    path: &str,
    held: anyhow::Error,
) -> anyhow::Result<Option<serde_json::Value>> {
    let base = plugin::api_base(config, api);
    let url = format!("{base}{path}");
    let mut request = ureq::get(&url).timeout(std::time::Duration::from_secs(60));
    if let Some(token) = plugin::admin_token() {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(r) => Ok(Some(serde_json::from_reader(r.into_reader())?)),
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            anyhow::bail!("{url}: {code}: {text}")
        }
        Err(e) => Err(held.context(format!(
            "no projector API answers at {base} either ({e}); pass --api URL"
        ))),
    }
}
