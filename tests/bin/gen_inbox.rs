//! Print generated inbox events as NDJSON: `gen-inbox [EVENTS] [SITES] [USERS] [SEED]`.

use projector_tests::{inbox_events, InboxShape};
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "\
usage: gen-inbox [EVENTS] [SITES] [USERS] [SEED]

Print generated inbox events as NDJSON on stdout.

  EVENTS  events to generate (default 10000)
  SITES   sites (default 100)
  USERS   users (default 1000)
  SEED    seed of the generator (default 7)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("gen-inbox: {e:#}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    if args.len() > 4 {
        anyhow::bail!("expected at most 4 arguments, got {}", args.len());
    }
    let num = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse()
                .map_err(|e| anyhow::anyhow!("argument {}: {a:?}: {e}", i + 1))
        })
    };
    let shape = InboxShape {
        events: num(0, 10_000)? as usize,
        sites: num(1, 100)? as u32,
        users: num(2, 1000)? as u32,
        seed: num(3, 7)?,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in inbox_events(shape) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
