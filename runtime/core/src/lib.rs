//! projector-core: records in, atomic store commits out.
//!
//! Map of the crate, in the order an event meets it:
//!
//! ```text
//! Record ─► envelope (decode) ─► engine (route, group by key, fold through
//!     the plugin under the version rules) ─► store (one atomic sled batch:
//!     views + offsets + counters + dead letters + spool)
//! ```
//!
//! - [`record`]: a record as a source hands it out, and the clock;
//! - [`envelope`]: the own JSON envelope, CloudEvents, Debezium → `Event`;
//! - [`stored`]: the binary form of a decoded event, for logs the
//!   runtime writes itself (decoded once, at append);
//! - [`store`]: sled behind a small API;
//! - [`engine`]: batches through plugins into one store commit; reads,
//!   snapshots, retries, shadow generations and recollection;
//! - [`retry`]: how transient failures are retried;
//! - [`source`]: what an event input is (the [`source::Source`] trait) and
//!   the narrow [`source::SourceHost`] it is given instead of the engine;
//! - [`driver`]: the one loop that drives any source into the engine, and
//!   its policies for paused plugins.
//!
//! It depends on the Wasm host (`projector-host`) and the guest SDK's
//! version rules; it never names a source's implementation, a deploy or
//! the HTTP layer.

#![deny(missing_docs)]

pub mod breaker;
pub mod driver;
pub mod engine;
pub mod envelope;
pub mod record;
pub mod retry;
pub mod source;
pub mod store;
pub mod stored;

pub use record::{now_ms, Encoding, Record};
pub use retry::RetryConfig;
