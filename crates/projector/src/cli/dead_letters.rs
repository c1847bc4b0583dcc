//! `projector dead-letters`: dead letters as JSON lines, oldest first.

use anyhow::bail;
use projector::config::Config;
use std::io::Write;

pub(crate) fn run(config: &Config, plugin: Option<&str>, limit: usize) -> anyhow::Result<()> {
    if !config.data_dir.exists() {
        bail!("no data in {}", config.data_dir.display());
    }
    let store = projector_core::store::Store::open(&config.data_dir)?;
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
