//! `projector backfill PLUGIN`: store many keys' views from the plugin's
//! source of truth, paced, through the running runtime's admin API; a
//! progress bar follows the job until it is done. The job belongs to the
//! runtime: stopping this command does not stop it, and a runtime killed
//! halfway takes it up again when it starts (`--follow` shows it again).

use super::plugin::{admin, admin_with, api_base};
use super::read_input;
use indicatif::{ProgressBar, ProgressStyle};
pub(crate) use projector::args::BackfillArgs as Args;
use projector::config::Config;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let base = api_base(config, args.api);
    let url = format!("{base}/v1/admin/plugins/{}/backfill", args.plugin);
    if args.cancel {
        let last = admin("DELETE", &url, None)?;
        println!("{}", serde_json::to_string_pretty(&last)?);
        return Ok(ExitCode::SUCCESS);
    }
    match (&args.keys, args.follow) {
        (Some(file), false) => {
            let keys = read_input(file)?;
            let started = admin_with(
                "POST",
                &format!("{url}?rate={}&concurrency={}", args.rate, args.concurrency),
                Some(keys.as_bytes()),
                "text/plain",
            )?;
            eprintln!(
                "backfill of {} started: {} keys at {}/s, {} at once",
                args.plugin, started["total"], args.rate, args.concurrency
            );
        }
        (None, true) => {}
        _ => {
            anyhow::bail!("expected --keys FILE (or - for stdin) to start a backfill, or --follow")
        }
    }
    let last = follow(&url)?;
    println!("{}", serde_json::to_string_pretty(&last)?);
    Ok(if last["failed"].as_u64().unwrap_or(0) > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Show the job's progress until it is done; its last status.
fn follow(url: &str) -> anyhow::Result<serde_json::Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} backfill [{bar:40}] {pos}/{len} keys {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    loop {
        let s = admin("GET", url, None)?;
        bar.set_length(s["total"].as_u64().unwrap_or(0));
        bar.set_position(s["done"].as_u64().unwrap_or(0));
        let eta = s["eta_seconds"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |e| format!("{e:.0}s"));
        bar.set_message(format!(
            "({:.0}/s, {} failed, eta {eta})",
            s["keys_per_second"].as_f64().unwrap_or(0.0),
            s["failed"]
        ));
        match s["state"].as_str().unwrap_or_default() {
            "done" => {
                bar.finish();
                return Ok(s);
            }
            "cancelled" => {
                bar.abandon();
                anyhow::bail!("the backfill was cancelled");
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
