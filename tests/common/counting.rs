//! A native test plugin that counts events per key and can fail on
//! request, with the helpers the Kafka tests drive it by.

use projector_core::engine::Engine;
use projector_core::store::Store;
use projector_guest::{Change, Error, Event, Info, Json, Population, Projection, StalePolicy};
use projector_host::native::NativePlugin;
use projector_host::{Limits, SharedCode};
use projector_sources::kafka::KafkaConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Times each (instance, event id) reached a plugin: every delivery of a
/// record to a projection routes it once.
static ROUTED: Mutex<BTreeMap<(String, String), u32>> = Mutex::new(BTreeMap::new());
/// Attempts to apply each (instance, event id).
pub static ATTEMPTS: Mutex<BTreeMap<(String, String), u32>> = Mutex::new(BTreeMap::new());

/// Counts events per key. Type `flaky` fails transiently until its
/// `fail_first` attempts are used up; `poison` fails for good; with
/// `slow_us` every apply takes that long.
pub struct Counting {
    instance: String,
    fail_first: u32,
    slow_us: u64,
}

impl Projection for Counting {
    type State = u64;

    fn configure(settings: &Json) -> Result<Self, Error> {
        Ok(Counting {
            instance: settings["instance"].as_str().unwrap_or("one").into(),
            fail_first: settings["fail_first"].as_u64().unwrap_or(0) as u32,
            slow_us: settings["slow_us"].as_u64().unwrap_or(0),
        })
    }

    fn info(&self) -> Info {
        Info {
            name: "counting".into(),
            version: "1".into(),
            population: Population::Eager,
            stale_policy: StalePolicy::Ignore,
            render_uses_time: false,
        }
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, Error> {
        *ROUTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((self.instance.clone(), event.id.clone()))
            .or_default() += 1;
        Ok(vec![event.key.clone()])
    }

    fn apply(&self, _key: &str, state: &mut u64, event: &Event) -> Result<Change, Error> {
        if self.slow_us > 0 {
            std::thread::sleep(Duration::from_micros(self.slow_us));
        }
        let attempt = {
            let mut a = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
            let n = a
                .entry((self.instance.clone(), event.id.clone()))
                .or_default();
            *n += 1;
            *n
        };
        match event.event_type.as_str() {
            "flaky" if attempt <= self.fail_first => {
                return Err(Error::transient(format!("not yet (attempt {attempt})")))
            }
            "poison" => return Err(Error::bad_input("poison")),
            _ => {}
        }
        *state += 1;
        Ok(Change::Updated)
    }

    fn render(&self, _key: &str, state: &u64, _now_ms: i64) -> Result<Json, Error> {
        Ok(json!({ "count": state }))
    }

    fn snapshot(&self, _key: &str, answer: &Json) -> Result<(u64, Vec<(String, u64)>), Error> {
        Ok((answer["count"].as_u64().unwrap_or(0), Vec::new()))
    }
}

/// An engine on a fresh store in `dir` with the counting plugin.
pub fn counting_engine(dir: &Path, settings: Json, retry: &str) -> Arc<Engine> {
    let store = Store::open(&dir.join("data")).expect("store");
    let mut engine = Engine::new(
        store,
        projector_core::envelope::Format::Auto,
        2,
        Duration::from_millis(200),
    );
    let config = projector::config::Config::parse(retry, "test.toml", dir).expect("config");
    engine.set_retry(config.retry);
    let code: SharedCode = Arc::new(
        NativePlugin::<Counting>::new("counting", &settings, Limits::default()).expect("plugin"),
    );
    engine.add(code, None).expect("add");
    Arc::new(engine)
}

/// `n` events over `keys` keys, ids `{prefix}{i}`, versions increasing.
pub fn counted_events(prefix: &str, first: u64, n: u64, keys: u64) -> Vec<String> {
    (first..first + n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "type": "counted", "source": "test",
                   "key": format!("k{}", i % keys), "version": i + 1, "time": 1_000 + i,
                   "payload": {}})
            .to_string()
        })
        .collect()
}

/// The count of `key` in `engine`'s counting view (0 without one).
pub fn count_of(engine: &Engine, key: &str) -> u64 {
    engine
        .read("counting", key, 0)
        .expect("read")
        .and_then(|v| v.json())
        .map_or(0, |j| j["count"].as_u64().unwrap_or(0))
}

/// A consumer of `topic` in group `views`, quick to notice members leave.
pub fn config(bootstrap: &str, topic: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(bootstrap, "views", &[topic]);
    c.properties
        .insert("session.timeout.ms".into(), "6000".into());
    c.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c
}

/// Routed count per event id of `instance`.
pub fn routed(instance: &str) -> BTreeMap<String, u32> {
    ROUTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|((i, _), _)| i == instance)
        .map(|((_, id), n)| (id.clone(), *n))
        .collect()
}
