//! projector's side of the peer bench: the inbox-unread plugin (Wasm, one
//! worker) behind a Kafka source with its changelog. It times (a) the
//! replay from offset 0 and (b) a new instance's restore from the
//! changelog; `main` calls it and serves the restored engine's views.

use crate::broker::GroupOffsets;
use crate::cpu::Cpu;
use crate::{Run, PHASE_LIMIT};
use projector_core::engine::Engine;
use projector_host::wasm::WasmHost;
use projector_host::Limits;
use projector_sources::kafka::KafkaConfig;
use projector_sources::run::KafkaRun;
use projector_tests::kafka::wait_caught_up;
use projector_tests::plugin_wasm;
use projector_tests::unread::{self, PLUGIN};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// projector's side: the Wasm plugin on one worker, a Kafka source with
/// its changelog.
pub(crate) struct Projector {
    host: WasmHost,
    bytes: Vec<u8>,
    pub(crate) config: KafkaConfig,
}

impl Projector {
    pub(crate) fn new(run: &Run, group: &str) -> anyhow::Result<Projector> {
        Ok(Projector {
            host: WasmHost::new()?,
            bytes: std::fs::read(plugin_wasm(PLUGIN))?,
            config: unread::kafka_config(run.bootstrap(), group, &run.topic),
        })
    }

    /// An engine on an empty store in `dir`: one worker, commits every
    /// 1000 ms, the plugin with its default settings.
    fn engine(&self, dir: &Path) -> anyhow::Result<Arc<Engine>> {
        let settings = serde_json::json!({});
        unread::engine(&self.host, &self.bytes, Limits::default(), &settings, dir)
    }

    /// (a) From offset 0 to every event applied, committed and its views
    /// materialized; events/s and the views made.
    pub(crate) fn replay(&self, run: &Run) -> anyhow::Result<(f64, usize)> {
        let dir = tempfile::tempdir()?;
        let engine = self.engine(dir.path())?;
        let source = KafkaRun::start(engine.clone(), self.config.clone(), 4096)?;
        while source.stats.consumed.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let cpu = Cpu::start(std::process::id(), run.broker.pid());
        let first = Instant::now();
        wait_caught_up(&engine, &run.topic, &run.end, PHASE_LIMIT);
        engine.commit()?;
        engine.store().settle()?;
        let secs = first.elapsed().as_secs_f64();
        let cpu = cpu.report(std::process::id(), secs);
        let spooled = Instant::now();
        while engine.store().outbox_count() > 0 {
            anyhow::ensure!(spooled.elapsed() < PHASE_LIMIT, "the spool never drained");
            std::thread::sleep(Duration::from_millis(20));
        }
        let drained = spooled.elapsed().as_secs_f64();
        let views = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len();
        let produced = source.stats.produced.load(Ordering::Relaxed);
        source.join()?;
        let rate = run.events as f64 / secs;
        println!(
            "(a) projector (Wasm, 1 worker, changelog on): {rate:>8.0} events/s \
             ({secs:.1} s to every event applied, committed and its views materialized; \
             {views} views; its changelog ({produced} records) on the broker {drained:.1} s later)"
        );
        println!("    {cpu}");
        Ok((rate, views))
    }

    /// (b) A new instance on an empty store joins the same group and
    /// restores every partition from the changelog: the restore's seconds
    /// (its own timing, as `restore.rs` reports it), and the engine with
    /// its store's directory.
    pub(crate) fn restore(
        &self,
        run: &Run,
        views: usize,
    ) -> anyhow::Result<(f64, Arc<Engine>, tempfile::TempDir)> {
        let logged = GroupOffsets::new(run.bootstrap(), "peer-reader")?
            .nonempty(&self.config.changelog_topic(PLUGIN), run.partitions)?;
        let dir = tempfile::tempdir()?;
        let engine = self.engine(dir.path())?;
        let begun = Instant::now();
        let cpu = Cpu::start(std::process::id(), run.broker.pid());
        let source = KafkaRun::start(engine.clone(), self.config.clone(), 4096)?;
        let stats = source.stats.clone();
        loop {
            let restoring = !stats.restoring.lock().map(|r| r.is_empty()).unwrap_or(true);
            if stats.restores.load(Ordering::Relaxed) >= logged && !restoring {
                break;
            }
            anyhow::ensure!(
                begun.elapsed() < PHASE_LIMIT,
                "projector's restore never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = begun.elapsed().as_secs_f64();
        let cpu = cpu.report(std::process::id(), ready);
        source.join()?;
        let secs = stats.restore_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let restored = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len();
        anyhow::ensure!(
            restored == views,
            "{restored} views after projector's restore, {views} before"
        );
        println!(
            "(b) projector restore: {secs:.2} s ({} changelog records, {} views put; \
             {ready:.1} s from its start, group join included)",
            stats.restore_records.load(Ordering::Relaxed),
            stats.restore_views.load(Ordering::Relaxed)
        );
        println!("    {cpu}");
        Ok((secs, engine, dir))
    }
}
