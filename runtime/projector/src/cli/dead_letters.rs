//! `projector dead-letters`: dead letters as JSON lines, oldest first
//! (from a running instance's API when it holds the store).

use super::{held_elsewhere, through_api};
use anyhow::bail;
use projector::config::Config;
use std::io::Write;

pub(crate) fn run(
    config: &Config,
    plugin: Option<&str>,
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
            if let Some(p) = plugin {
                path.push_str(&format!("&plugin={p}"));
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
    for letter in store.dead_letters() {
        let letter = letter?;
        if plugin.is_some_and(|p| letter.plugin.as_deref() != Some(p)) {
            continue;
        }
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string(&letter)?
        )?;
        shown += 1;
        if shown == limit {
            break;
        }
    }
    Ok(())
}
