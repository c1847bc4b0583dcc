//! Print generated inbox events as NDJSON: `gen-inbox [EVENTS] [SITES] [USERS] [SEED]`.

use projector_tests::{inbox_events, InboxShape};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
