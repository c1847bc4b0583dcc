//! What every layer above the host shares: a record as a source hands it
//! out, and the wall clock in milliseconds.

/// One record from a source: its partition and offset, the transport's
/// key (a Kafka key), if any, and the undecoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition of its source it was read from.
    pub partition: u32,
    /// Its offset in that partition: dense and increasing.
    pub offset: u64,
    /// The transport's key (a Kafka key), if any.
    pub key: Option<Vec<u8>>,
    /// The bytes to decode into an event.
    pub value: Vec<u8>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
