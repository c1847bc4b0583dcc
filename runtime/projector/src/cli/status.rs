//! `projector status`: each loaded plugin with its event counts (from a
//! running instance's API when it holds the store), and with several
//! instances on Kafka, each instance's owned, restoring and standby
//! partitions and the routing table.

use super::{held_elsewhere, through_api};
use projector::app::App;
use projector::config::Config;
use std::io::Write;

pub(crate) fn run(config: Config, api: Option<String>) -> anyhow::Result<()> {
    let app = match App::open(config.clone()) {
        Ok(app) => app,
        Err(e) if held_elsewhere(&e) => {
            // A running instance holds the store: its own account.
            let mut out = through_api(&config, api.clone(), "/v1/plugins", e)?.unwrap_or_default();
            let instances = through_api(
                &config,
                api,
                "/v1/admin/instances",
                anyhow::anyhow!("reading the instances"),
            );
            if let Ok(Some(i)) = instances {
                if i["members"].as_array().is_some_and(|m| !m.is_empty()) {
                    out["instances"] = i;
                }
            }
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&out)?
            )?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let plugins: Vec<serde_json::Value> = app
        .engine
        .projections()
        .iter()
        .map(|p| {
            let c = p.counters();
            serde_json::json!({
                "plugin": p.name(), "id": p.code().id(), "version": p.code().info().version,
                "population": format!("{:?}", p.population()).to_lowercase(),
                "received": c.received, "applied": c.applied, "skipped": c.skipped,
                "invalidated": c.invalidated, "dead_lettered": c.dead_lettered,
            })
        })
        .collect();
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "plugins": plugins,
            "retry_queue": app.engine.store().retry_count(),
        }))?
    )?;
    Ok(())
}
