//! The host on the reference plugin's component (built by
//! `./scripts/build-plugins.sh`).

use super::pack::*;
use super::*;

fn inbox(host: &WasmHost) -> WasmPlugin {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins/inbox-unread.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the suite runs with ./scripts/test.sh, which builds it; or ./scripts/build-plugins.sh)",
            path.display()
        )
    });
    host.load(
        "inbox-unread",
        &bytes,
        Limits::default(),
        &serde_json::json!({}),
    )
    .expect("the inbox plugin loads")
}

fn span(start: u32, len: u32) -> wit::Span {
    wit::Span { start, len }
}

#[test]
fn packed_events_hold_every_string_at_its_span() {
    let events = [
        Event {
            id: "e1".into(),
            event_type: "MessageSent".into(),
            source: "inbox".into(),
            key: "s1".into(),
            version: 7,
            time_ms: 9,
            payload: "{\"a\":\"é\"}".into(),
            ..Default::default()
        },
        Event {
            id: "e2".into(),
            event_type: "ConversationRead".into(),
            source: "".into(),
            key: "s2".into(),
            ..Default::default()
        },
    ];
    let refs: Vec<&Event> = events.iter().collect();
    let (text, list) = pack(&refs).expect("packs");
    let at = |s: wit::Span| &text[s.start as usize..(s.start + s.len) as usize];
    for (e, p) in events.iter().zip(&list) {
        assert_eq!(at(p.id), e.id);
        assert_eq!(at(p.event_type), e.event_type);
        assert_eq!(at(p.source), e.source);
        assert_eq!(at(p.key), e.key);
        assert_eq!(at(p.payload), e.payload);
        assert_eq!((p.version, p.time_ms), (e.version, e.time_ms));
    }
}

#[test]
fn a_packed_batch_with_a_bad_span_fails_as_bad_input() {
    let host = WasmHost::new().expect("host");
    let plugin = inbox(&host);
    let mut session = WasmSession::new(&plugin);
    let event = |payload: wit::Span| wit::PackedEvent {
        id: span(0, 1),
        event_type: span(0, 1),
        source: span(0, 1),
        key: span(0, 1),
        version: 1,
        time_ms: 0,
        payload,
    };
    // Past the end of the text, and inside a two-byte character.
    for (text, payload) in [("abc", span(2, 5)), ("aé", span(0, 2))] {
        let keys = session
            .call_once(1, &mut |s, i| {
                let batch = i.projector_plugin_projection().batch();
                let events = [event(payload)];
                let packed = wit::PackedEvents {
                    text,
                    events: &events,
                };
                let handle = batch.call_constructor(&mut *s, packed)?;
                let keys = batch.call_keys(&mut *s, handle, 0, 1)?;
                handle.resource_drop(s)?;
                Ok(keys)
            })
            .expect("the calls return");
        assert_eq!(keys.len(), 1);
        let error = keys[0].as_ref().expect_err("a bad span fails");
        assert!(matches!(error.kind, wit::ErrorKind::BadInput), "{error:?}");
        assert!(error.message.contains("span"), "{}", error.message);
    }
}

#[test]
fn a_run_with_a_bad_span_fails_as_bad_input_and_the_others_apply() {
    let host = WasmHost::new().expect("host");
    let plugin = inbox(&host);
    let mut session = WasmSession::new(&plugin);
    let payload =
        r#"{"conversation_id":"c1","site_id":"s1","sender_id":"u1","participants":["u1","u2"]}"#;
    let sent = Event {
        id: "e1".into(),
        event_type: "MessageSent".into(),
        source: "inbox".into(),
        key: "s1".into(),
        version: 1,
        time_ms: 5,
        payload: payload.into(),
        ..Default::default()
    };
    let (text, list) = pack(&[&sent]).expect("packs");
    let runs = [
        wit::KeyRun {
            key: span(0, 5),
            state: None,
            events: span(0, 1),
        },
        // Its key lies past the end of `keys`.
        wit::KeyRun {
            key: span(3, 9),
            state: None,
            events: span(0, 1),
        },
        // Its events lie past the end of `events`.
        wit::KeyRun {
            key: span(0, 5),
            state: None,
            events: span(1, 1),
        },
    ];
    let results = session
        .call_once(1, &mut |s, i| {
            let batch = i.projector_plugin_projection().batch();
            let packed = wit::PackedEvents {
                text: &text,
                events: &list,
            };
            let handle = batch.call_constructor(&mut *s, packed)?;
            let packed = wit::PackedRuns {
                keys: "u2:s1",
                states: &[],
                events: &[0],
                runs: &runs,
            };
            let results = batch.call_apply(&mut *s, handle, packed)?;
            handle.resource_drop(s)?;
            Ok(results)
        })
        .expect("the calls return");
    assert_eq!(results.len(), 3);
    assert!(
        matches!(results[0].outcome, wit::Outcome::Put(_)),
        "{:?}",
        results[0]
    );
    assert_eq!((results[0].applied, results[0].error.is_none()), (1, true));
    for bad in &results[1..] {
        let error = bad.error.as_ref().expect("a bad span fails");
        assert!(matches!(error.kind, wit::ErrorKind::BadInput), "{error:?}");
        assert!(error.message.contains("span"), "{}", error.message);
        assert_eq!(bad.applied, 0);
    }
}

#[test]
fn a_core_module_is_refused_with_a_hint_to_build_a_component() {
    let host = WasmHost::new().expect("host");
    let empty_module = b"\0asm\x01\0\0\0";
    let e = host
        .load(
            "core",
            empty_module,
            Limits::default(),
            &serde_json::json!({}),
        )
        .err()
        .expect("refused");
    let text = e.to_string();
    assert!(text.contains("not a component"), "{text}");
    assert!(text.contains("wasm32-wasip2"), "{text}");
}
