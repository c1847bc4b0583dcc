//! `projector replay FILE`: an NDJSON file into the views, with progress.

use super::print_summary;
use indicatif::{ProgressBar, ProgressStyle};
use projector::app::App;
use projector::config::Config;
use projector_sources::run;
use std::path::Path;

pub(crate) fn run(config: Config, file: &Path) -> anyhow::Result<()> {
    let app = App::open(config)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let totals = run::replay_file(&app.engine, file, app.config.engine.batch_size, |p| {
        if let Some(size) = p.size {
            bar.set_length(size);
        }
        bar.set_position(p.bytes_read);
        bar.set_message(format!(
            "{} events, {:.0}/s",
            p.totals.records,
            p.totals.records_per_second()
        ));
    })?;
    bar.finish_and_clear();
    app.engine.store().flush()?;
    print_summary(&totals)?;
    Ok(())
}
