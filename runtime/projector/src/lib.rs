//! projector: a WebAssembly-pluggable event processor, the binary's
//! library: the TOML [`config`], the [`app`] that assembles a runtime
//! from it, and the command line's definition ([`args`]); used by the
//! binary (`main.rs` and its commands in `cli/`) and by the end-to-end
//! tests.
//!
//! The crates below it, each importing only the ones before it:
//!
//! ```text
//! projector-guest   the plugin SDK and WIT world (guest side)
//! projector-host    wasmtime host, limits, native plugins, fetch
//! projector-core    records, envelope decoders, sled store, engine
//! projector-sources Source trait, embedded log, files, Kafka, pipeline
//! projector-deploy  registry, replace, probation, shadow, watcher
//! projector-api     HTTP: reads, ingest, admin, metrics
//! projector         config, app, CLI
//! ```
//!
//! `docs/ARCHITECTURE.md` follows one event through them.

#![deny(missing_docs)]

pub mod alloc;
pub mod app;
pub mod args;
pub mod config;
