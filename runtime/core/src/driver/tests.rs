//! The driver on a source in memory and the native inbox plugin: no
//! `.wasm`, no broker.

use super::*;
use crate::engine::Engine;
use crate::envelope::Format;
use crate::source::{Batch, SourceHost};
use crate::store::Store;
use crate::Record;
use projector_common::sync::Recover;
use projector_guest::Population;
use projector_host::native::NativePlugin;
use projector_host::SharedCode;
use std::collections::VecDeque;
use std::sync::Mutex;

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let store = Store::open(dir).expect("store");
    let engine = Engine::new(store, Format::Auto, 1, Duration::ZERO);
    let code: SharedCode = Arc::new(
        NativePlugin::<inbox_unread::InboxUnread>::new(
            "inbox",
            &serde_json::json!({}),
            projector_host::Limits::default(),
        )
        .expect("the native plugin starts"),
    );
    engine.add(code, Some(Population::Eager)).expect("add");
    Arc::new(engine)
}

fn sent(n: u64) -> Record {
    let event = serde_json::json!({
        "id": format!("e{n}"), "type": "MessageSent", "source": "inbox", "key": "s1",
        "version": n + 1, "time": 1_767_225_600_000_i64,
        "payload": {"site_id": "s1", "conversation_id": format!("c{n}"),
                    "sender_id": "u1", "participants": ["u1", "u2"]},
    });
    Record::wire(0, n, None, event.to_string().into_bytes())
}

/// A source of `total` events on one partition, handed out from where
/// its host says it resumes; what the driver told it is recorded.
#[derive(Default)]
struct Memory {
    total: u64,
    next: Mutex<u64>,
    told: Mutex<VecDeque<&'static str>>,
}

impl Memory {
    fn new(total: u64) -> Self {
        Memory {
            total,
            ..Memory::default()
        }
    }

    fn told(&self) -> Vec<&'static str> {
        self.told.lock().recover().iter().copied().collect()
    }
}

impl Source for Memory {
    fn start(&self, host: Arc<dyn SourceHost>) -> anyhow::Result<()> {
        *self.next.lock().recover() = host.resume_offset("memory", 0)?;
        self.told.lock().recover().push_back("start");
        Ok(())
    }

    fn next_batch(&self, max: usize, _wait: Duration) -> anyhow::Result<Next> {
        let mut next = self.next.lock().recover();
        if *next >= self.total {
            return Ok(Next::Idle);
        }
        let end = (*next + max as u64).min(self.total);
        let records = (*next..end).map(sent).collect();
        *next = end;
        Ok(Next::Batch(Batch {
            source: "memory".into(),
            partition: 0,
            records,
            retries: Vec::new(),
        }))
    }

    fn durable(&self) {
        let mut told = self.told.lock().recover();
        if told.back() != Some(&"durable") {
            told.push_back("durable");
        }
    }

    fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        vec![("memory".into(), vec![(0, self.total)])]
    }

    fn close(&self) -> anyhow::Result<()> {
        self.told.lock().recover().push_back("close");
        Ok(())
    }
}

#[test]
fn a_run_until_idle_applies_everything_tells_the_source_it_is_durable_and_closes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let source = Memory::new(10);
    let options = Options::new(4, Until::Idle);
    let mut batches = 0;
    let totals = run(&engine, &source, &options, &Shutdown::new(), |_| {
        batches += 1
    })
    .expect("run");
    assert_eq!(totals.records, 10);
    // Each event is applied to the views of its two participants.
    assert_eq!(totals.counters.applied, 20);
    assert_eq!(batches, 3, "progress after each batch of at most 4");
    assert_eq!(source.told(), ["start", "durable", "close"]);
    assert_eq!(engine.resume_offset("memory", 0).expect("offset"), 10);
}

#[test]
fn a_second_run_resumes_after_what_the_store_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let options = Options::new(100, Until::Idle);
    run(&engine, &Memory::new(6), &options, &Shutdown::new(), |_| {}).expect("first");
    // The same input, grown: only the new records are taken.
    let totals = run(&engine, &Memory::new(9), &options, &Shutdown::new(), |_| {}).expect("second");
    assert_eq!(totals.records, 3);
    assert_eq!(totals.counters.applied, 6);
}

#[test]
fn a_stopped_run_still_commits_and_closes_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let source = Memory::new(5);
    let stop = Shutdown::new();
    stop.stop();
    let totals = run(
        &engine,
        &source,
        &Options::new(4, Until::Stopped),
        &stop,
        |_| {},
    )
    .expect("run");
    assert_eq!(totals.records, 0, "stopped before the first batch");
    assert_eq!(source.told(), ["start", "durable", "close"]);
}

/// A plugin whose every event fails transiently: retried later, then
/// dead-lettered.
struct Flaky;

impl projector_guest::Projection for Flaky {
    type State = u64;

    fn configure(_: &serde_json::Value) -> Result<Self, projector_guest::Error> {
        Ok(Flaky)
    }

    fn info(&self) -> projector_guest::Info {
        projector_guest::Info {
            name: "flaky".into(),
            version: "1".into(),
            population: Population::Eager,
            stale_policy: projector_guest::StalePolicy::Invalidate,
            render_uses_time: false,
        }
    }

    fn keys(&self, event: &projector_guest::Event) -> Result<Vec<String>, projector_guest::Error> {
        Ok(vec![event.key.to_string()])
    }

    fn apply(
        &self,
        _: &str,
        _: &mut u64,
        _: &projector_guest::Event,
    ) -> Result<projector_guest::Change, projector_guest::Error> {
        Err(projector_guest::Error::transient("down"))
    }

    fn render(
        &self,
        _: &str,
        state: &u64,
        _: i64,
    ) -> Result<serde_json::Value, projector_guest::Error> {
        Ok(serde_json::json!({ "count": state }))
    }

    fn snapshot(
        &self,
        _: &str,
        _: &serde_json::Value,
    ) -> Result<(u64, projector_guest::SourceVersions), projector_guest::Error> {
        Err(projector_guest::Error::transient("no source of truth"))
    }
}

#[test]
fn a_runs_totals_count_the_dead_letters_of_delayed_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Engine::new(
        Store::open(dir.path()).expect("store"),
        Format::Auto,
        1,
        Duration::ZERO,
    );
    engine.set_retry(crate::retry::RetryConfig {
        attempts: 1,
        delay_ms: 0,
        ..Default::default()
    });
    let code: SharedCode = Arc::new(
        NativePlugin::<Flaky>::new(
            "flaky",
            &serde_json::json!({}),
            projector_host::Limits::default(),
        )
        .expect("the native plugin starts"),
    );
    engine.add(code, Some(Population::Eager)).expect("add");
    let engine = Arc::new(engine);
    let stop = Shutdown::new();
    let totals = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            run(
                &engine,
                &Memory::new(3),
                &Options::new(10, Until::Stopped),
                &stop,
                |_| {},
            )
        });
        // Each event fails, waits for its delayed retry, fails for good.
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.store().dead_letters().count() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.stop();
        run.join().expect("the run").expect("run")
    });
    assert_eq!(engine.store().dead_letters().count(), 3);
    assert_eq!(totals.records, 3);
    assert_eq!(totals.counters.dead_lettered, 3, "{totals:?}");
}
