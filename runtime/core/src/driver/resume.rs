//! Paused plugins brought back. A plugin whose breaker opened stops
//! advancing; at each retry tick of the pipeline, once its probe is due,
//! a few of the records it lacks are replayed from the source into it
//! alone. If they go through it catches up a step per tick, then joins
//! the live path between two batches; if they fail as before, it waits
//! for the next probe (each wait doubled).

use crate::breaker::BreakerState;
use crate::engine::{Engine, Projection};
use crate::source::Replay;
use crate::store::Counters;
use std::sync::Arc;

/// Records a probe replays.
const PROBE: usize = 16;
/// Records a catch-up step replays per partition: small, so that live
/// batches of the other plugins go on between steps.
const STEP: usize = 512;

/// Probe or advance every paused plugin that is due at `now_ms`; what
/// they counted doing so.
pub(crate) fn step(engine: &Engine, replay: &dyn Replay, now_ms: i64) -> anyhow::Result<Counters> {
    let mut counted = Counters::default();
    for p in engine.paused(now_ms) {
        step_one(engine, replay, &p, &mut counted)?;
    }
    Ok(counted)
}

fn step_one(
    engine: &Engine,
    replay: &dyn Replay,
    p: &Arc<Projection>,
    counted: &mut Counters,
) -> anyhow::Result<()> {
    let probing = matches!(p.breaker(), BreakerState::Open { .. });
    let parts = replay.partitions();
    let mut behind = 0u64;
    let mut replayed = false;
    for (source, partition) in &parts {
        let from = engine.generation_offset(p, source, *partition)?;
        let to = engine.live_offset(source, *partition)?;
        if from >= to {
            continue;
        }
        // A probe is one small run of records, from one partition.
        if probing && replayed {
            behind += to - from;
            continue;
        }
        let max = if probing { PROBE } else { STEP };
        let mut records = replay.read(source, *partition, from, max)?;
        records.retain(|r| r.offset < to);
        let Some(last) = records.last().map(|r| r.offset) else {
            anyhow::bail!(
                "{source}/{partition}: no records between {from} and {to} to bring {} back",
                p.name()
            );
        };
        let (going_on, delta) = engine.catch_up(p, source, *partition, &records)?;
        counted.add(&delta);
        if !going_on {
            return Ok(());
        }
        replayed = true;
        behind += to - (last + 1);
    }
    // Close to the live path (or nothing missed at all): join it.
    if behind <= STEP as u64 {
        let delta = engine.rejoin(p, &parts, |source, partition, from, to| {
            let mut out = Vec::new();
            let mut at = from;
            while at < to {
                let records = replay.read(source, partition, at, STEP).map_err(|e| {
                    crate::engine::Error::Guest {
                        plugin: p.name().into(),
                        message: format!("reading {source}/{partition} from {at}: {e:#}"),
                    }
                })?;
                let Some(last) = records.last().map(|r| r.offset) else {
                    break;
                };
                out.extend(records.into_iter().filter(|r| r.offset < to));
                at = last + 1;
            }
            Ok(out)
        })?;
        counted.add(&delta);
    }
    Ok(())
}
