//! What every layer above the host shares: a record as a source hands it
//! out, and the wall clock in milliseconds.

use crate::envelope::{self, DecodeError, Format};
use crate::stored;
use projector_guest::Event;

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
    /// What `value` holds.
    pub encoding: Encoding,
}

/// What a record's value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Bytes as the transport gave them, in the configured [`Format`].
    #[default]
    Wire,
    /// An event the runtime decoded once already and wrote in its own
    /// binary form ([`stored`]): the embedded log's records.
    Stored,
}

impl Record {
    /// A record of bytes as the transport gave them.
    pub fn wire(partition: u32, offset: u64, key: Option<Vec<u8>>, value: Vec<u8>) -> Self {
        Record {
            partition,
            offset,
            key,
            value,
            encoding: Encoding::Wire,
        }
    }

    /// A record of bytes as the transport gave them, decoded now as
    /// `format` (on the transport's thread, off the pipeline's): held in
    /// the stored form when it decodes, as the wire bytes when it does not
    /// (the pipeline then dead-letters it with the bytes as they came).
    pub fn decoded(
        partition: u32,
        offset: u64,
        key: Option<&[u8]>,
        value: &[u8],
        format: Format,
    ) -> Self {
        let key_bytes = key.map(<[u8]>::to_vec);
        match envelope::decode(format, key, value) {
            Ok(event) => {
                let mut stored = Vec::with_capacity(stored::encoded_len(&event));
                stored::encode(&event, &mut stored);
                Record {
                    encoding: Encoding::Stored,
                    ..Record::wire(partition, offset, key_bytes, stored)
                }
            }
            Err(_) => Record::wire(partition, offset, key_bytes, value.to_vec()),
        }
    }

    /// The event it carries: wire bytes decoded as `format`, stored ones
    /// read back without parsing.
    pub fn decode(&self, format: Format) -> Result<Event, DecodeError> {
        match self.encoding {
            Encoding::Wire => envelope::decode(format, self.key.as_deref(), &self.value),
            Encoding::Stored => stored::decode(&self.value),
        }
    }

    /// The value as text for a dead letter: wire bytes as they came (lossy
    /// UTF-8), a stored event as the own JSON envelope.
    pub(crate) fn raw_text(&self) -> String {
        if self.encoding == Encoding::Stored {
            if let Ok(event) = stored::decode(&self.value) {
                return envelope::encode(&event);
            }
        }
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_reads_back_as_the_event_it_was_decoded_from() {
        let wire = br#"{"id":"e-1","type":"T","source":"s","key":"k","version":7,"time":"2026-01-01T00:00:00Z","payload":{"n":[1,2]}}"#;
        let event = envelope::decode(Format::Auto, None, wire).expect("decodes");
        let mut value = Vec::new();
        stored::encode(&event, &mut value);
        let record = Record {
            encoding: Encoding::Stored,
            ..Record::wire(0, 0, None, value)
        };
        assert_eq!(record.decode(Format::Debezium).expect("stored"), event);
        // A dead letter shows it as the own envelope, which decodes the same.
        let raw = record.raw_text();
        assert_eq!(
            envelope::decode(Format::Envelope, None, raw.as_bytes()),
            Ok(event)
        );
        let wire_record = Record::wire(0, 0, None, b"not json".to_vec());
        assert_eq!(wire_record.raw_text(), "not json");
    }

    #[test]
    fn a_record_decoded_ahead_is_the_event_the_pipeline_would_decode_and_a_bad_one_stays_as_it_came(
    ) {
        let wire = br#"{"specversion":"1.0","id":"e-2","type":"T","source":"s","subject":"k","time":"2026-01-01T00:00:00Z","data":{"n":1}}"#;
        let ahead = Record::decoded(3, 9, Some(b"k"), wire, Format::Auto);
        assert_eq!((ahead.partition, ahead.offset), (3, 9));
        assert_eq!(ahead.encoding, Encoding::Stored);
        let later = Record::wire(3, 9, Some(b"k".to_vec()), wire.to_vec());
        assert_eq!(
            ahead.decode(Format::Auto),
            later.decode(Format::Auto),
            "the same event either way"
        );

        let bad = Record::decoded(0, 1, None, b"{not json", Format::Auto);
        assert_eq!(bad.encoding, Encoding::Wire);
        assert!(
            bad.decode(Format::Auto).is_err(),
            "the pipeline dead-letters it"
        );
        assert_eq!(bad.raw_text(), "{not json", "with the bytes as they came");
    }
}
