//! Where records come from: the embedded durable log ([`log`]) and NDJSON
//! files or stdin ([`mod@file`]). Sources only read and hand out
//! [`Record`](crate::engine::Record)s with partition and offset; the
//! pipelines decide what to do with them.

pub mod file;
pub mod kafka;
pub mod log;
