//! Kafka: a consumer-group source, retry and dead-letter topics, and the
//! spooled producer that sends them (seeds 000 and 003).
//!
//! **Offsets.** The store is the authority: a partition's next offset is
//! committed in the same batch as the views it produced, and on assignment
//! the consumer seeks there. Kafka's committed offsets follow once a batch
//! is durable, for lag tools only. A revocation finishes the partition's
//! batch in flight, commits the store and then Kafka, and only then
//! releases the partition, so neither a rebalance nor a crash loses or
//! re-applies an event.
//!
//! **Backpressure.** Polled records wait in a bounded queue per partition
//! until the pipeline takes them in batches; a partition whose queue is
//! full is paused and resumed once it has drained to half.
//!
//! **Retries.** An event a plugin failed with a transient error, after the
//! blocking retries, is produced to `<topic>.<group>.retry` with headers
//! naming the plugin, attempt, error, origin and not-before time; the
//! group consumes that topic too, keeps each record in the local delayed
//! queue until due, and retries it there. After the last attempt, or for
//! a permanent failure, the event goes to `<topic>.<group>.dlq` with the
//! same headers. Both topics get as many partitions as their source.
//!
//! **Spool.** Every record the runtime produces is written to the store's
//! spool in the same batch as the work that made it, sent by an idempotent
//! producer, and removed once acknowledged; what is unsent at a stop is
//! sent at the next start. Each record names its store and sequence
//! number, so a restart after a kill drops what the broker already holds
//! instead of sending it again (`delivered`).
//!
//! **Several instances** (`changelog = true`): every view lives on the
//! partition of its events ([`placement`]); each commit's view changes
//! also go through the spool to the plugin's changelog topic, with the
//! source offsets they cover; a partition newly assigned whose changelog
//! is ahead of the store is restored from it before it resumes (`restore`);
//! instances publish what they own to the members topic and route reads
//! to the owner (`members`); with `standby_replicas = 1` each also
//! follows the changelogs of the partitions it stands by for (`standby`).
//!
//! Map: [`config`] (`[source.kafka]`, topic names, headers), `admin`
//! (partition counts, topic creation), `consumer` (the polling thread,
//! backpressure), `rebalance` (incremental assignments, restores after
//! them), [`source`] (the [`Source`](projector_core::source::Source)
//! the pipeline drives), `route` (failures to topics), `spool` (the
//! producer), `delivered` (what the broker already holds), [`replay`] (shadow rebuilds), [`stats`].

mod admin;
pub mod config;
mod consumer;
mod delivered;
mod ends;
mod members;
pub mod placement;
mod rebalance;
pub mod replay;
mod restore;
mod retry_reader;
mod route;
pub mod source;
mod spool;
mod standby;
mod states;
pub mod stats;

pub use config::{header, source_id, KafkaConfig, KeyPart, Partitioner};
pub use replay::KafkaRetained;
pub use source::KafkaSource;
pub use stats::{KafkaStats, PartitionLag};
