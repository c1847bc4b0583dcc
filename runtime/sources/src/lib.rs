//! projector-sources: the event inputs, each an implementation of
//! [`projector_core::source::Source`], driven by the one loop in
//! [`projector_core::driver`].
//!
//! Map of the crate:
//!
//! - [`log`]: the embedded durable log and its source;
//! - [`mod@file`]: NDJSON files and stdin;
//! - `kafka` (feature `kafka`): the consumer group, its retry and
//!   dead-letter topics, the spool's producer, and for several instances
//!   placement, restore, standbys and membership;
//! - [`run`]: a file replayed or the log followed to the end, the runs the
//!   CLI and the tests start.
//!
//! A source is given a [`projector_core::source::SourceHost`], never the
//! engine: it learns where its partitions resume and hands out records;
//! the driver does the rest.

#![deny(missing_docs)]

mod dedup;
#[cfg(test)]
mod fake;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod run;
