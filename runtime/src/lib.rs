//! projector: a WebAssembly-pluggable event processor.
//!
//! The host consumes events, keeps read-optimized views in sled and
//! serves them; the logic that builds a view runs as a Wasm component.
//! The path of one event, and the module that owns each step:
//!
//! ```text
//! source::{log, file} ─► envelope (decode) ─► engine (route, group by key)
//!     ─► plugin (Wasm `keys` / `apply` under limits) ─► rules (versions)
//!     ─► store (one atomic sled batch: views + offsets + dead letters)
//! ```
//!
//! - [`envelope`]: the own JSON envelope, CloudEvents, Debezium → `Event`;
//! - [`source`]: the embedded durable log and NDJSON files / stdin;
//! - [`plugin`]: wasmtime host (limits, WASI with nothing granted) and
//!   native code behind one trait;
//! - [`engine`]: batches through plugins into one store commit;
//! - [`store`]: sled behind a small API (views, offsets, counters, dead
//!   letters);
//! - [`pipeline`]: sources driven into the engine, resumable;
//! - [`config`]: the TOML configuration;
//! - [`fetch`]: enrichment, the host side of the plugins' `fetch`;
//! - [`serve`]: the HTTP read API (read modes, rollout, lazy population,
//!   comparison, tokens, metrics);
//! - [`app`]: assembling a runtime from a config (used by the CLI).
//!
//! The version rules themselves live in `projector_guest::rules`, shared
//! with the plugin SDK's native harness.

pub mod app;
pub mod config;
pub mod engine;
pub mod envelope;
pub mod fetch;
pub mod pipeline;
pub mod plugin;
pub mod registry;
pub mod serve;
pub mod source;
pub mod store;
