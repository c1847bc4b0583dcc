//! The inbox-unread plugin as the benchmarks run it: a Wasm engine on an
//! empty store (one worker, commits every second, eager population), and
//! a Kafka source of an inbox topic with the plugin's changelog and its
//! views placed by site. Set-up only: it never times or checks a run.
//! Called by the `read`, `restore` and `peer` benches.

use projector_core::engine::Engine;
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_guest::Population;
use projector_host::wasm::WasmHost;
use projector_host::{Limits, SharedCode};
use projector_sources::kafka::{KafkaConfig, KeyPart, Partitioner};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The plugin's name, as built and as loaded.
pub const PLUGIN: &str = "inbox-unread";

/// An engine on an empty store in `dir`: one worker, commits every
/// 1000 ms, the plugin (its component's `bytes`) loaded with `limits`
/// and `settings`, eagerly populated.
pub fn engine(
    host: &WasmHost,
    bytes: &[u8],
    limits: Limits,
    settings: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<Arc<Engine>> {
    let engine = Engine::new(
        Store::open(dir)?,
        Format::Auto,
        1,
        Duration::from_millis(1000),
    );
    let code: SharedCode = Arc::new(host.load(PLUGIN, bytes, limits, settings)?);
    engine.add(code, Some(Population::Eager))?;
    Ok(Arc::new(engine))
}

/// A consumer of `topic` in `group` with the plugin's changelog, buffering
/// up to 32 768 records; views live on the partition of their site
/// (`{user}:{site}`), where [`crate::kafka::produce`] puts the site's
/// events.
pub fn kafka_config(bootstrap: &str, group: &str, topic: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap, group, &[topic]);
    config.max_buffered_records = 32_768;
    config.changelog = true;
    config.partitioner = Partitioner::Fnv1a;
    config.placement.insert(
        PLUGIN.into(),
        KeyPart {
            separator: ":".into(),
            field: 1,
        },
    );
    config
}
