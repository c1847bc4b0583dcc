//! A runtime's store closes under load, a hundred times over, each close
//! within a bound: events flowing into the engine and the embedded log's
//! tree, reads, a shadow generation building from that log, and code and
//! settings written the way the registry writes them (blob-sized values,
//! flushed settings). A close that hangs aborts the run, naming it.

mod common;

use common::within;
use projector_core::engine::Engine;
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_core::Record;
use projector_guest::Population;
use projector_host::native::NativePlugin;
use projector_host::SharedCode;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ROUNDS: usize = 100;
/// Longest a close may take before the run is a hang.
const LIMIT: Duration = Duration::from_secs(20);
/// Events per batch of the live path.
const BATCH: u64 = 64;
/// Events the live path has processed before the closing starts.
const WARM: u64 = 2048;
/// Users the events are between (each a view).
const USERS: u64 = 500;
/// Blob-sized values the registry writes per round (sled keeps a value
/// over 128 KiB in a file of its own).
const CODES: u64 = 4;

fn inbox() -> SharedCode {
    Arc::new(
        NativePlugin::<inbox_unread::InboxUnread>::new(
            "inbox",
            &serde_json::json!({}),
            projector_host::Limits::default(),
        )
        .expect("the native plugin starts"),
    )
}

fn event(offset: u64) -> Vec<u8> {
    let (sender, to) = (offset % USERS, (offset * 7 + 1) % USERS);
    serde_json::json!({
        "id": format!("e{offset}"), "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": offset + 1, "time": 1_767_225_600_000i64 + offset as i64,
        "payload": {"site_id": "s1", "conversation_id": format!("c{}", offset % 100),
                    "sender_id": format!("u{sender}"), "participants": [format!("u{sender}"), format!("u{to}")]},
    })
    .to_string()
    .into_bytes()
}

/// Workers of the load.
const WORKERS: usize = 4;

/// Say once that this worker is at work.
fn at_work(ready: &mut Option<mpsc::Sender<()>>) {
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
}

/// Start the load on `store`; each worker says once that it did a piece
/// of work, and stops at `stop`.
fn load(
    engine: &Arc<Engine>,
    store: &Store,
    stop: &Arc<AtomicBool>,
    ready: &mpsc::Sender<()>,
) -> (JoinHandle<u64>, Vec<JoinHandle<()>>) {
    let log = store.tree("log").expect("log tree");
    let events = {
        let (engine, log, stop, mut ready) = (
            engine.clone(),
            log.clone(),
            stop.clone(),
            Some(ready.clone()),
        );
        std::thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut append = sled::Batch::default();
                let records: Vec<Record> = (next..next + BATCH)
                    .map(|o| {
                        append.insert(&o.to_be_bytes(), event(o));
                        Record::wire(0, o, None, event(o))
                    })
                    .collect();
                log.apply_batch(append).expect("append");
                engine.process("log", 0, &records).expect("process");
                next += BATCH;
                if next >= WARM {
                    at_work(&mut ready);
                }
            }
            engine.commit().expect("commit");
            drop(log);
            next
        })
    };
    let reads = {
        let (engine, store, stop, mut ready) = (
            engine.clone(),
            store.clone(),
            stop.clone(),
            Some(ready.clone()),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                engine
                    .read("inbox", &format!("u{}:s1", n % USERS), 0)
                    .expect("read");
                store.views("inbox").take(20).for_each(|v| {
                    v.expect("a view");
                });
                n += 1;
                at_work(&mut ready);
            }
        })
    };
    let shadow = {
        let (engine, log, stop, mut ready) =
            (engine.clone(), log, stop.clone(), Some(ready.clone()));
        std::thread::spawn(move || {
            let next = engine
                .new_generation_in(inbox(), Some(Population::Eager), "inbox~2".into())
                .expect("a shadow generation");
            let mut from = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let records: Vec<Record> = log
                    .range(from.to_be_bytes()..)
                    .take(256)
                    .map(|item| {
                        let (k, v) = item.expect("a log record");
                        let o = u64::from_be_bytes(k.as_ref().try_into().expect("an offset"));
                        Record::wire(0, o, None, v.to_vec())
                    })
                    .collect();
                let Some(last) = records.last() else {
                    std::thread::yield_now();
                    continue;
                };
                from = last.offset + 1;
                engine.build(&next, "log", 0, &records).expect("build");
                at_work(&mut ready);
            }
            drop(log);
        })
    };
    let registry = {
        let (store, stop, mut ready) = (store.clone(), stop.clone(), Some(ready.clone()));
        std::thread::spawn(move || {
            let code = store.tree("plugin-code").expect("code tree");
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if n < CODES {
                    code.insert(format!("v{n}"), vec![n as u8; 200_000])
                        .expect("code");
                }
                store
                    .set_setting("registry/inbox", Some(format!("{{\"n\":{n}}}").as_bytes()))
                    .expect("a setting");
                n += 1;
                at_work(&mut ready);
            }
            drop(code);
        })
    };
    (events, vec![reads, shadow, registry])
}

/// One round: a store under load, a handle closed while it runs, then
/// every worker stopped and the store closed by its last handle (on the
/// even rounds by this thread, on the odd ones by whichever worker ends
/// last). The live path's next offset, committed.
fn round(dir: &Path, n: usize) -> u64 {
    let store = Store::open(dir).expect("store");
    let engine = Engine::new(store.clone(), Format::Auto, 1, Duration::ZERO);
    engine
        .add(inbox(), Some(Population::Eager))
        .expect("the plugin is added");
    let engine = Arc::new(engine);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, started) = mpsc::channel();
    let (events, others) = load(&engine, &store, &stop, &ready);
    for _ in 0..WORKERS {
        started
            .recv_timeout(LIMIT)
            .expect("every worker is at work");
    }
    within(
        &format!("round {n}: closing a handle under load"),
        LIMIT,
        || {
            store.clone().close().expect("a handle closes, flushed");
        },
    );
    stop.store(true, Ordering::SeqCst);
    if n.is_multiple_of(2) {
        let live = events.join().expect("events");
        for t in others {
            t.join().expect("a worker");
        }
        drop(engine);
        within(
            &format!("round {n}: closing the last handle"),
            LIMIT,
            || {
                store.close().expect("the store closes, flushed");
            },
        );
        live
    } else {
        drop((engine, store));
        within(
            &format!("round {n}: the workers' last handle"),
            LIMIT,
            || {
                for t in others {
                    t.join().expect("a worker");
                }
                events.join().expect("events")
            },
        )
    }
}

#[test]
fn a_store_closes_under_load_a_hundred_times() {
    let started = Instant::now();
    for n in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = round(dir.path(), n);
        // Closed for real: it opens again (its lock released), with every
        // commit, the shadow's included.
        let store = Store::open(dir.path()).expect("the closed store opens again");
        assert_eq!(
            store.offset("inbox", "log", 0).expect("offset"),
            Some(live),
            "round {n}"
        );
        let shadow = store.offset("inbox~2", "log", 0).expect("offset");
        assert!(shadow.is_some_and(|o| o <= live), "round {n}: {shadow:?}");
        assert!(store.views("inbox").count() > 0, "round {n}");
        assert!(store.setting("registry/inbox").expect("setting").is_some());
        within(
            &format!("round {n}: closing the reopened store"),
            LIMIT,
            || {
                store.close().expect("closes");
            },
        );
    }
    eprintln!("{ROUNDS} rounds in {:.1?}", started.elapsed());
}
