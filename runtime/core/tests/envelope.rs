//! Decoders for the three formats, including malformed and truncated input.

use projector_core::envelope::{decode, Format};

#[test]
fn own_envelope() {
    let raw = br#"{"id":"e1","type":"MessageSent","source":"inbox","key":"s1","version":7,"time":"2026-01-01T00:00:00.5+01:00","payload":{"a":[1,2]}}"#;
    let e = decode(Format::Auto, None, raw).expect("decodes");
    assert_eq!(
        (
            e.id.as_str(),
            e.event_type.as_str(),
            e.source.as_str(),
            e.key.as_str()
        ),
        ("e1", "MessageSent", "inbox", "s1")
    );
    assert_eq!(e.version, 7);
    assert_eq!(e.time_ms, 1_767_222_000_500);
    assert_eq!(e.payload, r#"{"a":[1,2]}"#);
}

#[test]
fn cloudevents_structured() {
    let raw = br#"{"specversion":"1.0","id":"ce-1","source":"/billing","type":"com.example.invoice.paid",
        "subject":"invoice-9","time":"2026-03-01T10:00:00Z","sequence":"42","datacontenttype":"application/json",
        "data":{"amount":10}}"#;
    let e = decode(Format::Auto, None, raw).expect("decodes");
    assert_eq!(
        (e.source.as_str(), e.key.as_str(), e.event_type.as_str()),
        ("/billing", "invoice-9", "com.example.invoice.paid")
    );
    assert_eq!(e.version, 42);
    assert_eq!(e.payload, r#"{"amount":10}"#);
    // Without a sequence, the time orders the event.
    let raw = br#"{"specversion":"1.0","id":"2","source":"s","type":"t","subject":"k","time":"1970-01-01T00:00:01Z"}"#;
    let e = decode(Format::CloudEvents, None, raw).expect("decodes");
    assert_eq!((e.version, e.payload.as_str()), (1000, "null"));
}

#[test]
fn debezium_postgres_and_mysql() {
    let pg = br#"{"before":null,"after":{"id":42,"title":"hi"},"op":"c","ts_ms":1700000000123,
        "source":{"connector":"postgresql","db":"inbox","schema":"public","table":"conversations","lsn":987654,"ts_ms":1700000000100}}"#;
    let e = decode(Format::Auto, None, pg).expect("decodes");
    assert_eq!(e.source, "inbox.public.conversations");
    assert_eq!(e.event_type, "conversations.create");
    assert_eq!(
        (e.key.as_str(), e.version, e.time_ms),
        ("42", 987_654, 1_700_000_000_100)
    );
    let payload: serde_json::Value = serde_json::from_str(&e.payload).expect("payload json");
    assert_eq!(payload["after"]["title"], "hi");

    // MySQL, with the JSON converter's schema wrapper, a delete, and the
    // entity key from the record key.
    let my = br#"{"schema":{},"payload":{"before":{"id":7},"after":null,"op":"d",
        "source":{"connector":"mysql","db":"shop","table":"orders","file":"mysql-bin.000003","pos":1234,"ts_ms":5}}}"#;
    let e = decode(
        Format::Auto,
        Some(br#"{"schema":{},"payload":{"id":7}}"#),
        my,
    )
    .expect("decodes");
    assert_eq!(
        (e.source.as_str(), e.event_type.as_str(), e.key.as_str()),
        ("shop.orders", "orders.delete", "7")
    );
    assert_eq!(e.version, (3u64 << 32) | 1234);
}

#[test]
fn malformed_and_truncated_input_is_an_error_with_a_reason() {
    let full = br#"{"id":"e1","type":"T","source":"s","key":"k","version":1,"payload":{"x":1}}"#;
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        let err = decode(Format::Auto, None, &full[..cut]).expect_err("truncated");
        assert!(
            err.reason.contains("EOF") || err.reason.contains("expected"),
            "cut {cut}: {err}"
        );
    }
    let cases: &[(&[u8], &str)] = &[
        (b"", "EOF"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{\"id\":\"e\xff\",\"type\":\"T\",\"source\":\"s\",\"key\":\"k\",\"version\":1,\"payload\":{}}", "not UTF-8"),
        (b"[1,2]", "invalid type"),
        (br#"{"id":"e1","type":"T","source":"s","key":"k","payload":{}}"#, "missing field `version`"),
        (br#"{"id":"","type":"T","source":"s","key":"k","version":1,"payload":{}}"#, "`id` is empty"),
        (br#"{"id":"1","type":"T","source":"s","key":"k","version":-1,"payload":{}}"#, "invalid value"),
        (br#"{"id":"1","type":"T","source":"s","key":"k","version":1,"time":"yesterday","payload":{}}"#, "not RFC 3339"),
        (br#"{"id":"1","type":"T","source":"s","key":"k","version":1,"payload":{},"extra":1}"#, "unknown field `extra`"),
        (br#"{"specversion":"0.3","id":"1","source":"s","type":"t","subject":"k","sequence":1}"#, "not 1.0"),
        (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","sequence":1}"#, "no subject"),
        (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"k"}"#, "no sequence"),
        (br#"{"op":"x","source":{"table":"t","lsn":1},"after":{"id":1}}"#, "unknown op"),
        (br#"{"op":"c","source":{"lsn":1},"after":{"id":1}}"#, "no table"),
        (br#"{"op":"c","source":{"table":"t"},"after":{"id":1}}"#, "no source position"),
        (br#"{"op":"c","source":{"table":"t","lsn":1},"after":{"name":"x"}}"#, "no record key"),
    ];
    for (raw, expected) in cases {
        let err = decode(Format::Auto, None, raw).expect_err(expected);
        assert!(
            err.to_string().contains(expected),
            "{:?}: got {err}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn a_forced_format_does_not_guess() {
    let ce =
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"k","sequence":1}"#;
    let err = decode(Format::Envelope, None, ce).expect_err("not an envelope");
    assert_eq!(err.format, "envelope");
}
