//! Property tests of the decoders: arbitrary bytes and mutated valid
//! records never panic, and give either an event or a typed error; what
//! the runtime encodes itself reads back as the same event.
//!
//! `PROPTEST_CASES` sets the cases per property (256 by default).

use projector_core::envelope::{self, decode, Format};
use projector_core::stored;
use projector_guest::Event;
use proptest::prelude::*;

const FORMATS: [Format; 4] = [
    Format::Auto,
    Format::Envelope,
    Format::CloudEvents,
    Format::Debezium,
];

/// Valid records of each format, for mutation.
const VALID: [&str; 3] = [
    r#"{"id":"e-1","type":"MessageSent","source":"inbox","key":"site-7","version":42,"time":"2026-01-01T00:00:00Z","payload":{"a":[1,2,{"b":null}]}}"#,
    r#"{"specversion":"1.0","id":"c-1","source":"billing","type":"Paid","subject":"acct-9","sequence":"17","time":"2026-01-01T00:00:00Z","data":{"amount":3}}"#,
    r#"{"before":null,"after":{"id":7,"name":"x"},"source":{"table":"users","lsn":99,"ts_ms":1700000000000},"op":"c","ts_ms":1700000000001}"#,
];

/// A record changed at a few places: bytes replaced, removed or inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..VALID.len(),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
    )
        .prop_map(|(which, edits)| {
            let mut bytes = VALID[which].as_bytes().to_vec();
            for (at, kind, byte) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, byte),
                }
            }
            bytes
        })
}

fn check(format: Format, key: Option<&[u8]>, bytes: &[u8]) {
    match decode(format, key, bytes) {
        Ok(event) => {
            // An event always names itself and its entity.
            assert!(!event.id.is_empty() && !event.key.is_empty(), "{event:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&event.payload).is_ok(),
                "payload is JSON: {event:?}"
            );
        }
        Err(e) => assert!(!e.reason.is_empty(), "a reason for {format:?}"),
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Event> {
    (
        ".{1,16}",
        ".{1,16}",
        ".{1,16}",
        ".{1,24}",
        any::<u64>(),
        any::<i64>(),
        json_value(),
    )
        .prop_map(
            |(id, event_type, source, key, version, time_ms, payload)| Event {
                id,
                event_type,
                source,
                key,
                version,
                time_ms,
                payload: payload.to_string(),
                ..Default::default()
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_give_an_event_or_a_typed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    ) {
        for format in FORMATS {
            check(format, key.as_deref(), &bytes);
        }
        let _ = stored::decode(&bytes);
    }

    #[test]
    fn mutated_records_give_an_event_or_a_typed_error(bytes in mutated()) {
        for format in FORMATS {
            check(format, Some(br#"{"id":7}"#), &bytes);
        }
    }

    #[test]
    fn an_event_reads_back_from_the_stored_form_and_the_own_envelope(e in event()) {
        let mut bytes = Vec::new();
        stored::encode(&e, &mut bytes);
        prop_assert_eq!(stored::decode(&bytes), Ok(e.clone()));
        // Every prefix of the stored form is refused or reads back shorter
        // in its payload alone, never panics.
        for cut in 0..bytes.len() {
            let _ = stored::decode(&bytes[..cut]);
        }
        let text = envelope::encode(&e);
        let back = decode(Format::Envelope, None, text.as_bytes());
        // The payload comes back as the same JSON value.
        let back = back.map(|b| (serde_json::from_str::<serde_json::Value>(&b.payload).ok(), Event { payload: String::new(), ..b }));
        let want = (serde_json::from_str::<serde_json::Value>(&e.payload).ok(), Event { payload: String::new(), ..e });
        prop_assert_eq!(back, Ok(want));
    }
}
