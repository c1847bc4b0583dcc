//! The commands, one file each, and what several of them share.

pub(crate) mod backfill;
pub(crate) mod dead_letters;
pub(crate) mod kafka_dev;
pub(crate) mod plugin;
pub(crate) mod recollect;
pub(crate) mod replay;
pub(crate) mod run;
pub(crate) mod signals;
pub(crate) mod status;
pub(crate) mod verify;
pub(crate) mod view;

pub(crate) use crate::PluginAction;
use anyhow::Context;
use projector::app::App;
use projector_sources::pipeline::Totals;
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

pub(crate) fn print_summary(t: &Totals) {
    let c = &t.counters;
    println!(
        "events {}, applied {}, skipped {}, invalidated {}, dead-lettered {}, decode errors {}, {:.0} events/s",
        t.records,
        c.applied,
        c.skipped,
        c.invalidated,
        c.dead_lettered,
        t.decode_errors,
        t.records_per_second()
    );
}
