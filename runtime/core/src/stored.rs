//! The runtime's own binary form of a decoded event, for logs it writes
//! itself (the embedded log): an event is decoded from its wire format
//! once, when it is appended, and read back without parsing JSON again.
//!
//! Layout, version 1: the byte `1`, then `id`, `type`, `source`, `key`,
//! each a little-endian u32 length and UTF-8 bytes, then `version` (u64)
//! and `time_ms` (i64), little-endian, then the payload's JSON text to
//! the end. The payload was checked as JSON when the event was decoded;
//! reading checks only the framing and UTF-8.

use crate::envelope::DecodeError;
use projector_guest::Event;

const VERSION: u8 = 1;
const F: &str = "stored";

/// Append `event`'s stored form to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    out.reserve(encoded_len(event));
    out.push(VERSION);
    for s in [&event.id, &event.event_type, &event.source, &event.key] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&event.version.to_le_bytes());
    out.extend_from_slice(&event.time_ms.to_le_bytes());
    out.extend_from_slice(event.payload.as_bytes());
}

/// The length `encode` adds for `event`.
pub fn encoded_len(event: &Event) -> usize {
    let fields = event.id.len() + event.event_type.len() + event.source.len() + event.key.len();
    // The version byte, four u32 lengths, version and time.
    1 + 16 + 16 + fields + event.payload.len()
}

/// Read an event back from its stored form.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let bad = |reason: String| DecodeError { format: F, reason };
    let (&version, mut rest) = bytes
        .split_first()
        .ok_or_else(|| bad("empty record".into()))?;
    if version != VERSION {
        return Err(bad(format!("unknown stored-event version {version}")));
    }
    let mut text = || -> Result<String, DecodeError> {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated field length".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad(format!(
                "field of {len} bytes with {} left",
                tail.len()
            )));
        }
        let (field, tail) = tail.split_at(len);
        rest = tail;
        String::from_utf8(field.to_vec()).map_err(|e| bad(format!("not UTF-8: {e}")))
    };
    let (id, event_type, source, key) = (text()?, text()?, text()?, text()?);
    let (version, tail) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("truncated version".into()))?;
    let (time, payload) = tail
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("truncated time".into()))?;
    Ok(Event {
        id,
        event_type,
        source,
        key,
        version: u64::from_le_bytes(*version),
        time_ms: i64::from_le_bytes(*time),
        payload: String::from_utf8(payload.to_vec())
            .map_err(|e| bad(format!("payload not UTF-8: {e}")))?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            id: "e-1".into(),
            event_type: "MessageSent".into(),
            source: "inbox".into(),
            key: "site-7/ü".into(),
            version: u64::MAX - 3,
            time_ms: -42,
            payload: r#"{"a":[1,2,"x"]}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_every_field() {
        let mut out = Vec::new();
        encode(&event(), &mut out);
        assert_eq!(out.len(), encoded_len(&event()));
        assert_eq!(decode(&out).expect("decodes"), event());
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let mut out = Vec::new();
        encode(&event(), &mut out);
        let payload_starts = out.len() - event().payload.len();
        for cut in 0..payload_starts {
            let err = decode(&out[..cut]).expect_err("truncated");
            assert_eq!(err.format, "stored");
        }
    }

    #[test]
    fn refuses_an_unknown_version_and_bad_utf8() {
        let mut out = Vec::new();
        encode(&event(), &mut out);
        out[0] = 9;
        let err = decode(&out).expect_err("unknown version");
        assert!(err.reason.contains("version 9"), "{err}");
        out[0] = VERSION;
        out[5] = 0xff; // first byte of the id
        let err = decode(&out).expect_err("bad UTF-8");
        assert!(err.reason.contains("UTF-8"), "{err}");
    }
}
