//! (c) of the peer bench: reads at a fixed rate through both read APIs,
//! by the shared open-loop generator (`tests/common/load.rs`), in rounds
//! that alternate the two, each with its server's `GET /healthz`; prints
//! the median round's percentiles and their ratio.

use crate::compare::Side;
use crate::load::{drive, micros, percentile};
use crate::Run;
use projector_tests::knob;
use std::time::Duration;

/// (c) Reads at a fixed rate, the same client for both, after a warm-up,
/// in rounds that alternate the two (this machine's speed drifts); the
/// median round is the figure.
pub(crate) fn reads(run: &Run, sides: &[Side; 2]) -> anyhow::Result<()> {
    let rps = knob("BENCH_RPS", 2000);
    let seconds = knob("BENCH_SECONDS", 10);
    let rounds = knob("BENCH_ROUNDS", 3).max(1) as usize;
    let paths = |side: &Side| -> Vec<String> {
        run.keys
            .iter()
            .map(|k| format!("{}{k}", side.path))
            .collect()
    };
    for side in sides {
        drive(side.addr, paths(side), rps, knob("BENCH_WARMUP_SECONDS", 3))?;
    }
    let mut figures: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, side) in sides.iter().enumerate() {
            let floor = drive(side.addr, vec!["/healthz".into()], rps, seconds)?;
            let reads = drive(side.addr, paths(side), rps, seconds)?;
            anyhow::ensure!(
                reads.errors == 0,
                "{}'s reads failed: {}",
                side.name,
                reads.summary()
            );
            println!(
                "(c) round {round} of {rounds}, {}, GET {}{{key}} at {rps}/s for {seconds} s: {}",
                side.name,
                side.path,
                reads.summary()
            );
            println!(
                "    its GET /healthz (the HTTP floor) at the same rate: p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms",
                micros(percentile(&floor.latencies, 0.5)),
                micros(percentile(&floor.latencies, 0.99)),
                floor.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
            );
            figures[i].push((
                percentile(&reads.latencies, 0.99),
                percentile(&reads.latencies, 0.5),
            ));
        }
    }
    let [ours, theirs] = figures.map(|mut f| {
        f.sort();
        f[f.len() / 2]
    });
    println!(
        "(c) median round: projector p50 {:.0} µs, p99 {:.0} µs; Kafka Streams p50 {:.0} µs, p99 {:.0} µs",
        micros(ours.1),
        micros(ours.0),
        micros(theirs.1),
        micros(theirs.0)
    );
    println!(
        "(c) read p99, Kafka Streams ÷ projector: {:.2} (p50: {:.2})",
        theirs.0.as_secs_f64() / ours.0.as_secs_f64().max(1e-9),
        theirs.1.as_secs_f64() / ours.1.as_secs_f64().max(1e-9)
    );
    Ok(())
}
