//! Kafka Streams beside projector, in one run, on a real Apache Kafka
//! broker: the inbox-unread view kept by projector (the Wasm plugin, one
//! worker, `changelog = true`) and by `benchmarks/kafka-streams-inbox`
//! (Kafka Streams 4.4, one stream thread, a RocksDB store and its
//! changelog), from one topic holding the same generated events, on this
//! machine, each measured alone, one after the other:
//!
//! (a) events/s from offset 0 until every event is applied and committed:
//!     projector from its first record to its offsets caught up, committed
//!     and its views materialized (as `kafka.rs` times it); Kafka Streams
//!     from its first event to its group's committed offsets at the end of
//!     the source topic and of its repartition topic (under
//!     exactly_once_v2 the changelog and those offsets commit together).
//! (b) restore into an empty store from the changelog: a new projector
//!     instance in the same group (as `restore.rs` times it, from its
//!     restore's start to its end), and Kafka Streams restarted on a wiped
//!     state directory (its restore listener, from the first partition's
//!     start to the last one's end).
//! (c) read latency at a fixed rate (default 2000 reads/s for 10 s, after a
//!     warm-up) over a sample of existing keys, by one client (the open-loop
//!     generator of `read.rs`, `tests/common/load.rs`, on the last core): projector's
//!     `GET /v1/views/inbox-unread/{key}` (a restored instance's views) and
//!     the interactive query `GET /views/{key}`, in rounds alternating
//!     the two, each with its server's `GET /healthz` (its HTTP floor);
//! (d) that sample compared between the two, before (c): unread ids and
//!     their times; the bench fails when a view differs, since then it
//!     compares different work.
//!
//! Each phase also prints the CPU time of the process measured (and its
//! busiest threads), of the broker, and of the rest of the machine (other
//! work on a shared machine): what bounded it.
//!
//! Layout: [`ours`] and [`streams`] run the two sides, [`cpu`]
//! accounts their CPU, [`compare`] checks (d), [`reads`] times (c) with
//! the shared generator (`tests/common/load.rs`), [`broker`] reaches the
//! broker.
//!
//! Knobs: `BENCH_EVENTS` (200 000), `BENCH_PARTITIONS` (8), `BENCH_RPS`
//! (2000), `BENCH_SECONDS` (10), `BENCH_ROUNDS` (3 rounds of reads,
//! alternating the two; the median round counts), `BENCH_WARMUP_SECONDS` (3),
//! `BENCH_SAMPLE` (1000 keys), `BENCH_GUARANTEE` (Kafka Streams'
//! processing guarantee: exactly_once_v2, or at_least_once),
//! `BENCH_KS_JAVA_OPTS` (`-Xms1g -Xmx1g`). The broker is
//! `PROJECTOR_KAFKA_BOOTSTRAP`'s, or the one `scripts/kafka.sh start`
//! runs (and this bench then stops, if it started it). Run with
//! `./scripts/bench.sh peer`, which builds the Kafka Streams application.

#[path = "../../common/load.rs"]
mod load;

mod broker;
mod compare;
mod cpu;
mod ours;
mod reads;
mod streams;

use broker::{admin, admin_options, block_on, Broker};
use compare::{compare, Side};
use ours::Projector;
use projector::config::Config;
use projector_api::{ServeState, Serving};
use projector_tests::kafka::{ends, produce};
use projector_tests::unread::PLUGIN;
use projector_tests::InboxShape;
use projector_tests::{fold_inbox, inbox_deliveries, inbox_events, knob, root};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdkafka::admin::{NewTopic, TopicReplication};
use reads::reads;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use streams::StreamsApp;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest a phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(1200);

/// What every phase shares: the broker, the topic and its events.
struct Run {
    broker: Broker,
    topic: String,
    partitions: u32,
    /// Each partition's end offset.
    end: Vec<u64>,
    events: u64,
    /// (event, view) pairs the events make: what Kafka Streams aggregates.
    deliveries: u64,
    /// Existing view keys, read and compared.
    keys: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
    let jar = root().join("benchmarks/kafka-streams-inbox/target/kafka-streams-inbox.jar");
    anyhow::ensure!(
        jar.exists(),
        "{} is missing: build it with `mvn -q -f benchmarks/kafka-streams-inbox/pom.xml package` \
         (./scripts/bench.sh peer does)",
        jar.display()
    );
    let guarantee = std::env::var("BENCH_GUARANTEE").unwrap_or_else(|_| "exactly_once_v2".into());
    let run = Run::prepare()?;
    let id = format!("{}-{}", std::process::id(), epoch_ms());
    let projector = Projector::new(&run, &format!("peer-projector-{id}"))?;
    let ks_dir = tempfile::tempdir()?;
    let streams = StreamsApp {
        jar,
        app: format!("peer-ks-{id}"),
        state: ks_dir.path().join("state"),
        guarantee,
    };

    // (a) Each alone, from offset 0.
    let (ours, views) = projector.replay(&run)?;
    let mut ks = streams.start(&run)?;
    let theirs = streams.replay(&run, &mut ks)?;
    println!(
        "(a) events/s, projector ÷ Kafka Streams: {:.2}",
        ours / theirs
    );
    ks.stop()?;

    // (b) Each restored into an empty store from its changelog.
    let (ours, engine, _store) = projector.restore(&run, views)?;
    let (theirs, mut ks) = streams.restore(&run)?;
    println!(
        "(b) restore time, Kafka Streams ÷ projector: {:.2}",
        theirs / ours.max(1e-9)
    );

    // (d), then (c), over projector's read API on the restored views and
    // Kafka Streams' interactive queries.
    let mut http = Config::default();
    http.http.listen = "127.0.0.1:0".into();
    let state = Arc::new(ServeState::new(
        &http.api_settings(),
        engine,
        projector_api::Feed::none(),
        None,
    )?);
    state.set_ready(true);
    let serving = Serving::start(state, &http.http.listen)?;
    let sides = [
        Side {
            name: "projector",
            addr: serving.addr(),
            path: format!("/v1/views/{PLUGIN}/"),
            answer: |body| &body["answer"],
        },
        Side {
            name: "Kafka Streams",
            addr: ks.addr()?,
            path: "/views/".into(),
            answer: |body| body,
        },
    ];
    compare(&run, &sides)?;
    reads(&run, &sides)?;
    serving.stop();
    ks.stop()?;

    let config = &projector.config;
    let topic = &run.topic;
    let group = &config.group_id;
    run.delete_topics(&[
        topic.clone(),
        format!("{topic}.{group}.retry"),
        format!("{topic}.{group}.dlq"),
        config.changelog_topic(PLUGIN),
        config.members_topic(),
        streams.repartition(),
        streams.changelog(),
    ])
}

impl Run {
    /// The broker up, the topic created and filled with the generated
    /// events, keyed by site.
    fn prepare() -> anyhow::Result<Run> {
        let n = knob("BENCH_EVENTS", 200_000) as usize;
        let partitions = knob("BENCH_PARTITIONS", 8) as u32;
        let broker = Broker::up()?;
        let topic = format!("peer-inbox-{}-{}", std::process::id(), epoch_ms());
        let events = inbox_events(InboxShape {
            events: n,
            sites: 5_000,
            users: 50_000,
            seed: 3,
        });
        let views = fold_inbox(&events);
        let mut keys: Vec<String> = views.into_keys().collect();
        let count = keys.len();
        keys.shuffle(&mut StdRng::seed_from_u64(11));
        keys.truncate(knob("BENCH_SAMPLE", 1000) as usize);
        let deliveries = inbox_deliveries(&events);
        let bootstrap = &broker.bootstrap;
        let new = NewTopic::new(&topic, partitions as i32, TopicReplication::Fixed(1));
        for r in block_on(admin(bootstrap)?.create_topics(&[new], &admin_options()))?? {
            r.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
        }
        let started = Instant::now();
        produce(bootstrap, &topic, partitions, &events);
        let end = ends(bootstrap, &topic, partitions);
        anyhow::ensure!(
            end.iter().sum::<u64>() == n as u64,
            "the topic holds {end:?}"
        );
        println!(
            "peer: {n} inbox events ({count} views, {deliveries} deliveries to views) on {topic}, \
             {partitions} partitions, broker {bootstrap} (Apache Kafka 4.4); produced in {:.1?}",
            started.elapsed()
        );
        Ok(Run {
            broker,
            topic,
            partitions,
            end,
            events: n as u64,
            deliveries,
            keys,
        })
    }

    fn bootstrap(&self) -> &str {
        &self.broker.bootstrap
    }

    /// Delete the run's topics (a passing run leaves the broker as it was).
    fn delete_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let admin = admin(self.bootstrap())?;
        for r in block_on(admin.delete_topics(&names, &admin_options()))?? {
            if let Err((name, code)) = r {
                eprintln!("deleting {name}: {code}");
            }
        }
        Ok(())
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
