//! `projector recollect`: rebuild views from the plugin's sources.

use indicatif::{ProgressBar, ProgressStyle};
use projector::app::App;
use projector::config::Config;
use std::process::ExitCode;

pub(crate) fn run(config: Config, plugin: &str, keys: Vec<String>) -> anyhow::Result<ExitCode> {
    let app = App::open(config)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let keys = (!keys.is_empty()).then_some(keys);
    let summary = app.engine.recollect(plugin, keys, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    app.engine.store().flush()?;
    for (key, error) in summary.failed.iter().take(20) {
        eprintln!("{key}: {error}");
    }
    println!(
        "keys {}, rebuilt {}, unchanged {}, deleted {}, failed {}",
        summary.keys,
        summary.rebuilt,
        summary.unchanged,
        summary.deleted,
        summary.failed.len()
    );
    if !summary.failed.is_empty() {
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
