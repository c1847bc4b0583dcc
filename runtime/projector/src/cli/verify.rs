//! `projector verify PLUGIN`: stored views against the source of truth,
//! through the running runtime's admin API; a report of what is equal,
//! mismatched or missing on either side, and with `--repair` the
//! mismatched views marked Invalid so the next read or a backfill heals
//! them.

use super::plugin::{admin_with, api_base};
use super::read_input;
use indicatif::ProgressBar;
pub(crate) use projector::args::VerifyArgs as Args;
use projector::config::Config;
use std::process::ExitCode;
use std::time::Duration;

/// The outcomes of a report, with what the text report calls them.
const OUTCOMES: [(&str, &str); 7] = [
    ("equal", "equal"),
    ("mismatched", "mismatched"),
    ("missing_view", "in the source, no view"),
    ("missing_in_source", "a view, not in the source"),
    ("absent_both", "in neither"),
    ("invalid", "views already Invalid"),
    ("failed", "failed"),
];

pub(crate) fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let base = api_base(config, args.api);
    let body = match &args.keys {
        Some(file) => read_input(file)?,
        None => String::new(),
    };
    let url = format!(
        "{base}/v1/admin/plugins/{}/verify?sample={}&repair={}&concurrency={}",
        args.plugin, args.sample, args.repair, args.concurrency
    );
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "verifying {} against its source of truth",
        args.plugin
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let report = admin_with("POST", &url, Some(body.as_bytes()), "text/plain");
    spinner.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let clean = report["keys"] == report["equal"];
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &serde_json::Value) {
    println!(
        "{}: {} keys in {:.1} s",
        r["plugin"].as_str().unwrap_or_default(),
        r["keys"],
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    for (field, said) in OUTCOMES {
        println!("  {:>8}  {said}", r[field]);
    }
    if r["repaired"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  {:>8}  mismatched views marked Invalid (the next read or a backfill heals them)",
            r["repaired"]
        );
    }
    for (field, said) in OUTCOMES.iter().skip(1) {
        let Some(list) = r["examples"][*field].as_array().filter(|l| !l.is_empty()) else {
            continue;
        };
        println!("{said}, for example:");
        for e in list {
            match e.get("differences") {
                Some(d) => println!("  {}: {d}", e["key"].as_str().unwrap_or_default()),
                None => println!("  {e}"),
            }
        }
    }
}
