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
//!     warm-up) over a sample of existing keys, by one client (`read.rs`'s
//!     open-loop generator, on the last core): projector's
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
//! Knobs: `BENCH_EVENTS` (200 000), `BENCH_PARTITIONS` (8), `BENCH_RPS`
//! (2000), `BENCH_SECONDS` (10), `BENCH_ROUNDS` (3 rounds of reads,
//! alternating the two; the median round counts), `BENCH_WARMUP_SECONDS` (3),
//! `BENCH_SAMPLE` (1000 keys), `BENCH_GUARANTEE` (Kafka Streams'
//! processing guarantee: exactly_once_v2, or at_least_once),
//! `BENCH_KS_JAVA_OPTS` (`-Xms1g -Xmx1g`). The broker is
//! `PROJECTOR_KAFKA_BOOTSTRAP`'s, or the one `scripts/kafka.sh start`
//! runs (and this bench then stops, if it started it). Run with
//! `./scripts/bench.sh peer`, which builds the Kafka Streams application.

use projector::config::Config;
use projector_api::{ServeState, Serving};
use projector_core::engine::Engine;
use projector_core::envelope::Format;
use projector_core::store::Store;
use projector_guest::Population;
use projector_host::wasm::WasmHost;
use projector_host::{Limits, SharedCode};
use projector_sources::kafka::{KafkaConfig, KeyPart, Partitioner};
use projector_sources::run::KafkaRun;
use projector_tests::kafka::{ends, produce, wait_caught_up};
use projector_tests::InboxShape;
use projector_tests::{fold_inbox, inbox_deliveries, inbox_events, knob, plugin_wasm, root};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PLUGIN: &str = "inbox-unread";
/// The Kafka Streams application's store and repartition topic names.
const KS_STORE: &str = "inbox-unread";
const KS_BY_VIEW: &str = "by-view";
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

/// projector's side: the Wasm plugin on one worker, a Kafka source with
/// its changelog.
struct Projector {
    host: WasmHost,
    bytes: Vec<u8>,
    config: KafkaConfig,
}

impl Projector {
    fn new(run: &Run, group: &str) -> anyhow::Result<Projector> {
        let mut config = KafkaConfig::new(run.bootstrap(), group, &[&run.topic]);
        config.max_buffered_records = 32_768;
        config.changelog = true;
        // Views live on the partition of their site, where `produce` puts
        // the site's events.
        config.partitioner = Partitioner::Fnv1a;
        config.placement.insert(
            PLUGIN.into(),
            KeyPart {
                separator: ":".into(),
                field: 1,
            },
        );
        Ok(Projector {
            host: WasmHost::new()?,
            bytes: std::fs::read(plugin_wasm(PLUGIN))?,
            config,
        })
    }

    /// An engine on an empty store in `dir`: one worker, commits every
    /// 1000 ms, the plugin with its default settings.
    fn engine(&self, dir: &Path) -> anyhow::Result<Arc<Engine>> {
        let engine = Engine::new(
            Store::open(dir)?,
            Format::Auto,
            1,
            Duration::from_millis(1000),
        );
        let settings = serde_json::json!({});
        let code: SharedCode =
            Arc::new(
                self.host
                    .load(PLUGIN, &self.bytes, Limits::default(), &settings)?,
            );
        engine.add(code, Some(Population::Eager))?;
        Ok(Arc::new(engine))
    }

    /// (a) From offset 0 to every event applied, committed and its views
    /// materialized; events/s and the views made.
    fn replay(&self, run: &Run) -> anyhow::Result<(f64, usize)> {
        let dir = tempfile::tempdir()?;
        let engine = self.engine(dir.path())?;
        let source = KafkaRun::start(engine.clone(), self.config.clone(), 4096)?;
        while source.stats.consumed.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let cpu = Cpu::start(std::process::id(), run.broker.pid());
        let first = Instant::now();
        wait_caught_up(&engine, &run.topic, &run.end, PHASE_LIMIT);
        engine.commit()?;
        engine.store().settle()?;
        let secs = first.elapsed().as_secs_f64();
        let cpu = cpu.report(std::process::id(), secs);
        let spooled = Instant::now();
        while engine.store().outbox_count() > 0 {
            anyhow::ensure!(spooled.elapsed() < PHASE_LIMIT, "the spool never drained");
            std::thread::sleep(Duration::from_millis(20));
        }
        let drained = spooled.elapsed().as_secs_f64();
        let views = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len();
        let produced = source.stats.produced.load(Ordering::Relaxed);
        source.join()?;
        let rate = run.events as f64 / secs;
        println!(
            "(a) projector (Wasm, 1 worker, changelog on): {rate:>8.0} events/s \
             ({secs:.1} s to every event applied, committed and its views materialized; \
             {views} views; its changelog ({produced} records) on the broker {drained:.1} s later)"
        );
        println!("    {cpu}");
        Ok((rate, views))
    }

    /// (b) A new instance on an empty store joins the same group and
    /// restores every partition from the changelog: the restore's seconds
    /// (its own timing, as `restore.rs` reports it), and the engine with
    /// its store's directory.
    fn restore(
        &self,
        run: &Run,
        views: usize,
    ) -> anyhow::Result<(f64, Arc<Engine>, tempfile::TempDir)> {
        let logged = GroupOffsets::new(run.bootstrap(), "peer-reader")?
            .nonempty(&self.config.changelog_topic(PLUGIN), run.partitions)?;
        let dir = tempfile::tempdir()?;
        let engine = self.engine(dir.path())?;
        let begun = Instant::now();
        let cpu = Cpu::start(std::process::id(), run.broker.pid());
        let source = KafkaRun::start(engine.clone(), self.config.clone(), 4096)?;
        let stats = source.stats.clone();
        loop {
            let restoring = !stats.restoring.lock().map(|r| r.is_empty()).unwrap_or(true);
            if stats.restores.load(Ordering::Relaxed) >= logged && !restoring {
                break;
            }
            anyhow::ensure!(
                begun.elapsed() < PHASE_LIMIT,
                "projector's restore never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = begun.elapsed().as_secs_f64();
        let cpu = cpu.report(std::process::id(), ready);
        source.join()?;
        let secs = stats.restore_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let restored = engine.store().sample_view_keys(PLUGIN, usize::MAX)?.len();
        anyhow::ensure!(
            restored == views,
            "{restored} views after projector's restore, {views} before"
        );
        println!(
            "(b) projector restore: {secs:.2} s ({} changelog records, {} views put; \
             {ready:.1} s from its start, group join included)",
            stats.restore_records.load(Ordering::Relaxed),
            stats.restore_views.load(Ordering::Relaxed)
        );
        println!("    {cpu}");
        Ok((secs, engine, dir))
    }
}

/// Kafka Streams' side: the application, its id and its state directory.
struct StreamsApp {
    jar: PathBuf,
    app: String,
    state: PathBuf,
    guarantee: String,
}

impl StreamsApp {
    fn start(&self, run: &Run) -> anyhow::Result<Streams> {
        Streams::start(
            &self.jar,
            &[
                run.bootstrap(),
                &run.topic,
                &self.app,
                &self.state.to_string_lossy(),
                "0",
                &self.guarantee,
            ],
        )
    }

    fn repartition(&self) -> String {
        format!("{}-{KS_BY_VIEW}-repartition", self.app)
    }

    fn changelog(&self) -> String {
        format!("{}-{KS_STORE}-changelog", self.app)
    }

    /// (a) From its first event to its group's offsets committed at the
    /// end of the source topic and of the repartition topic: events/s.
    fn replay(&self, run: &Run, ks: &mut Streams) -> anyhow::Result<f64> {
        let offsets = GroupOffsets::new(run.bootstrap(), &self.app)?;
        let repartition = self.repartition();
        let begun = Instant::now();
        let (mut first, mut applied, mut cpu) = (None, None, None);
        let caught_up = loop {
            ks.alive()?;
            let p = ks.progress()?;
            if first.is_none() && p["first_event_ms"].as_u64() > Some(0) {
                first = p["first_event_ms"].as_u64();
                cpu = Some(Cpu::start(ks.pid(), run.broker.pid()));
            }
            if applied.is_none() && p["deliveries"].as_u64() >= Some(run.deliveries) {
                applied = Some(epoch_ms());
            }
            // The source offsets commit with the repartition records they
            // made: once they are at the end, the repartition topic's end
            // is final.
            if first.is_some()
                && offsets.at_least(&run.topic, &run.end)?
                && offsets.at_least(&repartition, &offsets.ends(&repartition, run.partitions)?)?
            {
                break epoch_ms();
            }
            anyhow::ensure!(
                begun.elapsed() < PHASE_LIMIT,
                "Kafka Streams never caught up"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let first = first.unwrap_or(caught_up);
        let secs = (caught_up - first) as f64 / 1e3;
        let cpu = cpu.map(|c| c.report(ks.pid(), secs)).unwrap_or_default();
        let p = ks.progress()?;
        anyhow::ensure!(
            p["deliveries"].as_u64() == Some(run.deliveries) && p["rejected"].as_u64() == Some(0),
            "Kafka Streams applied other deliveries than the events make ({}): {p}",
            run.deliveries
        );
        let rate = run.events as f64 / secs;
        println!(
            "(a) Kafka Streams (1 stream thread, {}): {rate:>8.0} events/s \
             ({secs:.1} s to its offsets committed at the end of the source and repartition topics; \
             every delivery aggregated after {}; {} skipped as duplicate or older; changelog {} records)",
            self.guarantee,
            applied.map_or("–".into(), |a| format!("{:.1} s", (a - first) as f64 / 1e3)),
            p["skipped"],
            offsets.ends(&self.changelog(), run.partitions)?.iter().sum::<u64>()
        );
        println!("    {cpu}");
        Ok(rate)
    }

    /// (b) Restarted on a wiped state directory: the restore's seconds
    /// (its restore listener, from the first partition's start to the last
    /// one's end), and the running instance.
    fn restore(&self, run: &Run) -> anyhow::Result<(f64, Streams)> {
        std::fs::remove_dir_all(&self.state)?;
        let begun = Instant::now();
        let cpu = Cpu::before_start(run.broker.pid());
        let mut ks = self.start(run)?;
        let p = loop {
            ks.alive()?;
            let p = ks.progress()?;
            let r = &p["restore"];
            if p["state"] == "RUNNING"
                && r["pending"].as_u64() == Some(0)
                // Every changelog partition's restore ends, an empty one's too.
                && r["partitions"].as_u64() >= Some(u64::from(run.partitions))
            {
                break p;
            }
            anyhow::ensure!(
                begun.elapsed() < PHASE_LIMIT,
                "Kafka Streams' restore never ended: {p}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let ready = begun.elapsed().as_secs_f64();
        let cpu = cpu.report(ks.pid(), ready);
        let r = &p["restore"];
        let at = |field: &str| r[field].as_u64().unwrap_or(0);
        let secs = at("last_end_ms").saturating_sub(at("first_start_ms")) as f64 / 1e3;
        println!(
            "(b) Kafka Streams restore: {secs:.2} s ({} changelog records into RocksDB over {} partitions; \
             {ready:.1} s from the JVM's start, group join included)",
            r["records"], r["partitions"]
        );
        println!("    {cpu}");
        Ok((secs, ks))
    }
}

/// One read API: where it listens, the path a key follows, and where a
/// body keeps the rendered view.
struct Side {
    name: &'static str,
    addr: std::net::SocketAddr,
    path: String,
    answer: fn(&serde_json::Value) -> &serde_json::Value,
}

/// (d) The sample read through both APIs and compared: what each view
/// means (unread ids and their times), not its bytes. An error when one
/// differs.
fn compare(run: &Run, sides: &[Side; 2]) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::new();
    let mut differ = Vec::new();
    let mut unread = 0;
    for key in &run.keys {
        let [ours, theirs] = [&sides[0], &sides[1]].map(|side| {
            let url = format!("http://{}{}{key}", side.addr, side.path);
            client
                .get(url)
                .send()
                .map_err(anyhow::Error::from)
                .and_then(|r| meaning(r, side.answer))
        });
        let (ours, theirs) = (ours?, theirs?);
        unread += ours.as_ref().map_or(0, BTreeMap::len);
        if ours != theirs {
            differ.push(format!(
                "{key}: projector {ours:?}, Kafka Streams {theirs:?}"
            ));
        }
    }
    println!(
        "(d) {} views compared (after both restores; {unread} unread conversations in all): {} differ",
        run.keys.len(),
        differ.len()
    );
    for d in differ.iter().take(5) {
        println!("    {d}");
    }
    anyhow::ensure!(
        differ.is_empty(),
        "the views differ: the two compare different work"
    );
    Ok(())
}

/// (c) Reads at a fixed rate, the same client for both, after a warm-up,
/// in rounds that alternate the two (this machine's speed drifts); the
/// median round is the figure.
fn reads(run: &Run, sides: &[Side; 2]) -> anyhow::Result<()> {
    let rps = knob("BENCH_RPS", 2000);
    let seconds = knob("BENCH_SECONDS", 10);
    let rounds = knob("BENCH_ROUNDS", 3).max(1) as usize;
    let paths = |side: &Side| -> Vec<String> {
        run.keys
            .iter()
            .map(|k| format!("{}{k}", side.path))
            .collect()
    };
    for side in sides {
        drive(side.addr, paths(side), rps, knob("BENCH_WARMUP_SECONDS", 3))?;
    }
    let mut figures: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, side) in sides.iter().enumerate() {
            let floor = drive(side.addr, vec!["/healthz".into()], rps, seconds)?;
            let reads = drive(side.addr, paths(side), rps, seconds)?;
            anyhow::ensure!(
                reads.errors == 0,
                "{}'s reads failed: {}",
                side.name,
                reads.summary()
            );
            println!(
                "(c) round {round} of {rounds}, {}, GET {}{{key}} at {rps}/s for {seconds} s: {}",
                side.name,
                side.path,
                reads.summary()
            );
            println!(
                "    its GET /healthz (the HTTP floor) at the same rate: p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms",
                micros(percentile(&floor.latencies, 0.5)),
                micros(percentile(&floor.latencies, 0.99)),
                floor.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
            );
            figures[i].push((
                percentile(&reads.latencies, 0.99),
                percentile(&reads.latencies, 0.5),
            ));
        }
    }
    let [ours, theirs] = figures.map(|mut f| {
        f.sort();
        f[f.len() / 2]
    });
    println!(
        "(c) median round: projector p50 {:.0} µs, p99 {:.0} µs; Kafka Streams p50 {:.0} µs, p99 {:.0} µs",
        micros(ours.1),
        micros(ours.0),
        micros(theirs.1),
        micros(theirs.0)
    );
    println!(
        "(c) read p99, Kafka Streams ÷ projector: {:.2} (p50: {:.2})",
        theirs.0.as_secs_f64() / ours.0.as_secs_f64().max(1e-9),
        theirs.1.as_secs_f64() / ours.1.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// What a view means: its unread conversations, id → last message time
/// (`None` for a 404). `answer` picks the rendered view from the body.
fn meaning(
    response: reqwest::blocking::Response,
    answer: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> anyhow::Result<Option<BTreeMap<String, i64>>> {
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    anyhow::ensure!(status.is_success(), "{} answered {status}", response.url());
    let body: serde_json::Value = serde_json::from_slice(&response.bytes()?)?;
    let list = answer(&body)["conversations"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no conversations in {body}"))?;
    Ok(Some(
        list.iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["last_message_at"].as_i64().unwrap_or(-1),
                )
            })
            .collect(),
    ))
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The broker: `PROJECTOR_KAFKA_BOOTSTRAP`'s, or `scripts/kafka.sh`'s,
/// stopped on drop when this bench started it.
struct Broker {
    bootstrap: String,
    started_here: bool,
}

impl Broker {
    fn up() -> anyhow::Result<Broker> {
        if let Ok(b) = std::env::var("PROJECTOR_KAFKA_BOOTSTRAP") {
            if !b.trim().is_empty() {
                return Ok(Broker {
                    bootstrap: b.trim().to_string(),
                    started_here: false,
                });
            }
        }
        let script = root().join("scripts/kafka.sh");
        let running = Command::new(&script)
            .arg("status")
            .stdout(Stdio::null())
            .status()?
            .success();
        let out = Command::new(&script).arg("start").output()?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/kafka.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Broker {
            bootstrap: String::from_utf8(out.stdout)?.trim().to_string(),
            started_here: !running,
        })
    }

    /// The broker's pid, when it is `scripts/kafka.sh`'s.
    fn pid(&self) -> Option<u32> {
        let home = root().join("target/kafka");
        let ours = std::fs::read_to_string(home.join("bootstrap")).ok()?;
        if ours.trim() != self.bootstrap {
            return None;
        }
        let pid = std::fs::read_to_string(home.join("broker.pid")).ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.started_here {
            let _ = Command::new(root().join("scripts/kafka.sh"))
                .arg("stop")
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// A group's committed offsets and topics' ends, read with one client.
struct GroupOffsets {
    consumer: BaseConsumer,
}

impl GroupOffsets {
    fn new(bootstrap: &str, group: &str) -> anyhow::Result<GroupOffsets> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(GroupOffsets { consumer })
    }

    /// Each partition's end (its high watermark: transaction markers
    /// included).
    fn ends(&self, topic: &str, partitions: u32) -> anyhow::Result<Vec<u64>> {
        (0..partitions as i32)
            .map(|p| {
                let (_, high) =
                    self.consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))?;
                Ok(high as u64)
            })
            .collect()
    }

    /// How many partitions of `topic` hold records.
    fn nonempty(&self, topic: &str, partitions: u32) -> anyhow::Result<u64> {
        let mut n = 0;
        for p in 0..partitions as i32 {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?;
            n += u64::from(high > low);
        }
        Ok(n)
    }

    /// Whether the group has committed every partition of `topic` at or
    /// past `ends`.
    fn at_least(&self, topic: &str, ends: &[u64]) -> anyhow::Result<bool> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..ends.len() as i32 {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed.elements().iter().all(|e| {
            let at = match e.offset() {
                Offset::Offset(o) => o.max(0) as u64,
                _ => 0,
            };
            at >= ends[e.partition() as usize]
        }))
    }
}

/// The Kafka Streams application in a JVM of its own, killed on drop.
struct Streams {
    child: Child,
    base: String,
    said: Arc<Mutex<Vec<String>>>,
    client: reqwest::blocking::Client,
}

impl Streams {
    /// Start it and wait for its first `running on http://…` line.
    fn start(jar: &Path, args: &[&str]) -> anyhow::Result<Streams> {
        let opts = std::env::var("BENCH_KS_JAVA_OPTS").unwrap_or_else(|_| "-Xms1g -Xmx1g".into());
        let mut child = Command::new("java")
            .args(opts.split_whitespace())
            .arg("-jar")
            .arg(jar)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let said = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        {
            let said = said.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("running on ") {
                        let base = rest.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send(base.to_string());
                    }
                    said.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        {
            let said = said.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    said.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut streams = Streams {
            child,
            base: String::new(),
            said,
            client: reqwest::blocking::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(base) => {
                    streams.base = base;
                    return Ok(streams);
                }
                Err(_) => {
                    streams.alive()?;
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "Kafka Streams did not start within 180 s:\n{}",
                        streams.tail()
                    );
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.base.trim_start_matches("http://").parse()?)
    }

    fn tail(&self) -> String {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said[said.len().saturating_sub(30)..].join("\n")
    }

    /// An error, with what it said, if it has exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("Kafka Streams exited ({status}):\n{}", self.tail()),
        }
    }

    fn progress(&self) -> anyhow::Result<serde_json::Value> {
        let answer = self
            .client
            .get(format!("{}/progress", self.base))
            .send()?
            .error_for_status()?;
        Ok(serde_json::from_slice(&answer.bytes()?)?)
    }

    /// SIGTERM (it closes and leaves its group), and its end.
    fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                anyhow::bail!("Kafka Streams did not stop within 60 s:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of a process (per thread) and of the broker over a phase.
struct Cpu {
    broker: Option<u32>,
    process: f64,
    threads: BTreeMap<String, (f64, f64)>,
    broker_s: f64,
    machine: f64,
}

impl Cpu {
    /// From now on, for the running process `pid`.
    fn start(pid: u32, broker: Option<u32>) -> Cpu {
        Cpu {
            broker,
            process: cpu_seconds(&format!("/proc/{pid}/stat")),
            threads: thread_seconds(pid),
            broker_s: broker.map_or(0.0, |b| cpu_seconds(&format!("/proc/{b}/stat"))),
            machine: machine_seconds(),
        }
    }

    /// From now on, for a process about to start: all of its time counts.
    fn before_start(broker: Option<u32>) -> Cpu {
        Cpu {
            broker,
            process: 0.0,
            threads: BTreeMap::new(),
            broker_s: broker.map_or(0.0, |b| cpu_seconds(&format!("/proc/{b}/stat"))),
            machine: machine_seconds(),
        }
    }

    /// One line: the CPU seconds of `pid` (the process it started with)
    /// and its busiest threads, the broker's, over `wall` seconds.
    fn report(&self, pid: u32, wall: f64) -> String {
        let process = cpu_seconds(&format!("/proc/{pid}/stat")) - self.process;
        let mut threads: Vec<(String, f64, f64)> = thread_seconds(pid)
            .into_iter()
            .map(|(name, (on, waiting))| {
                let before = self.threads.get(&name).copied().unwrap_or_default();
                (name, on - before.0, waiting - before.1)
            })
            .filter(|(_, on, _)| *on >= 0.05)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = threads
            .iter()
            .take(6)
            .map(|(name, on, waiting)| format!("{name} {on:.1}+{waiting:.1}"))
            .collect();
        let broker = self.broker.map_or(0.0, |b| {
            cpu_seconds(&format!("/proc/{b}/stat")) - self.broker_s
        });
        let rest = machine_seconds() - self.machine - process - broker;
        let cores = |s: f64| s / wall.max(1e-9);
        format!(
            "CPU over {wall:.1} s: process {process:.1} s ({:.2} cores; busiest threads, s on a core + \
             s waiting for one: {}); \
             broker {broker:.1} s ({:.2} cores); the rest of the machine {rest:.1} s ({:.2} cores)",
            cores(process),
            top.join(", "),
            cores(broker),
            cores(rest)
        )
    }
}

/// Busy CPU seconds of the whole machine, every core (`/proc/stat`).
fn machine_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy as f64 / 100.0
}

/// User + system CPU seconds of a `/proc/…/stat` file (0 when unreadable).
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Per thread name of `pid`: seconds on a core and seconds runnable but
/// waiting for one (`/proc/…/task/*/schedstat`). The main thread is
/// `main`; a trailing number is folded to `#`, so a pool's threads add up.
fn thread_seconds(pid: u32) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let name = if task.file_name().to_string_lossy() == pid.to_string() {
            "main".to_string()
        } else {
            match comm.trim_end_matches(|c: char| c.is_ascii_digit()) {
                short if short.len() < comm.len() => format!("{short}#"),
                _ => comm.to_string(),
            }
        };
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns: Vec<f64> = sched
            .split_whitespace()
            .filter_map(|f| f.parse::<f64>().ok())
            .collect();
        let e: &mut (f64, f64) = out.entry(name).or_default();
        e.0 += ns.first().copied().unwrap_or(0.0) / 1e9;
        e.1 += ns.get(1).copied().unwrap_or(0.0) / 1e9;
    }
    out
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Connections the load generator keeps open (each sends its share of the
/// scheduled requests in turn), as in `read.rs`.
const CONNECTIONS: usize = 64;

/// What a load run measured.
struct Load {
    /// Send to last byte, sorted.
    latencies: Vec<Duration>,
    /// Scheduled time to last byte, sorted (counts a request's wait to be sent).
    from_schedule: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    /// The latest a request started after its scheduled time.
    lag: Duration,
}

impl Load {
    fn summary(&self) -> String {
        let mut s = format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms, {} errors; from the scheduled time: p50 {:.0} µs, \
             p99 {:.0} µs; latest start {:.1} ms after schedule",
            micros(percentile(&self.latencies, 0.5)),
            micros(percentile(&self.latencies, 0.99)),
            self.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            self.errors,
            micros(percentile(&self.from_schedule, 0.5)),
            micros(percentile(&self.from_schedule, 0.99)),
            self.lag.as_secs_f64() * 1e3,
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!(" (first error: {e})"));
        }
        s
    }
}

/// GET `paths` in turn at `rps` for `seconds`, open loop, from a thread
/// pinned to the last core: `read.rs`'s generator (hyper, `CONNECTIONS`
/// HTTP/1 connections, requests released at their times by a pacer task).
fn drive(
    addr: std::net::SocketAddr,
    paths: Vec<String>,
    rps: u64,
    seconds: u64,
) -> anyhow::Result<Load> {
    std::thread::spawn(move || {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if let (true, Some(last)) = (cores.len() > 1, cores.last()) {
            core_affinity::set_for_current(*last);
        }
        drive_here(addr, paths, rps, seconds)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn drive_here(
    addr: std::net::SocketAddr,
    paths: Vec<String>,
    rps: u64,
    seconds: u64,
) -> anyhow::Result<Load> {
    use http_body_util::BodyExt;
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let paths = Arc::new(paths);
    let total = rps * seconds;
    let due = move |start: Instant, i: u64| start + Duration::from_nanos(i * 1_000_000_000 / rps);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut result = load.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            connections.push(sender);
        }
        let start = Instant::now();
        let pacer = {
            let release = release.clone();
            tokio::spawn(async move {
                let mut released = 0u64;
                while released < total {
                    let now = Instant::now();
                    let mut due_now = released;
                    while due_now < total && due(start, due_now) <= now {
                        due_now += 1;
                    }
                    release.add_permits((due_now - released) as usize);
                    released = due_now;
                    tokio::task::yield_now().await;
                }
                release.add_permits(CONNECTIONS);
            })
        };
        let mut workers = Vec::new();
        for mut sender in connections {
            let (next, paths, release) = (next.clone(), paths.clone(), release.clone());
            workers.push(tokio::spawn(async move {
                let mut run = Load {
                    latencies: Vec::new(),
                    from_schedule: Vec::new(),
                    errors: 0,
                    first_error: None,
                    lag: Duration::ZERO,
                };
                loop {
                    release.acquire().await.expect("pacer semaphore").forget();
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let sent = Instant::now();
                    let scheduled = due(start, i);
                    run.lag = run.lag.max(sent.saturating_duration_since(scheduled));
                    let path = &paths[(i as usize * 7919) % paths.len()];
                    let request = hyper::Request::get(path.as_str())
                        .header("host", "127.0.0.1")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .expect("request");
                    let outcome = match sender.send_request(request).await {
                        Ok(r) if r.status().is_success() => r
                            .into_body()
                            .collect()
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string()),
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    run.latencies.push(sent.elapsed());
                    run.from_schedule.push(scheduled.elapsed());
                    if let Err(e) = outcome {
                        run.errors += 1;
                        run.first_error.get_or_insert(e);
                    }
                }
                run
            }));
        }
        let mut all = Load {
            latencies: Vec::with_capacity(total as usize),
            from_schedule: Vec::with_capacity(total as usize),
            errors: 0,
            first_error: None,
            lag: Duration::ZERO,
        };
        for w in workers {
            let run = w.await.expect("load worker");
            all.latencies.extend(run.latencies);
            all.from_schedule.extend(run.from_schedule);
            all.errors += run.errors;
            all.first_error = all.first_error.take().or(run.first_error);
            all.lag = all.lag.max(run.lag);
        }
        pacer.await.expect("pacer task");
        Ok::<_, anyhow::Error>(all)
    })?;
    result.latencies.sort();
    result.from_schedule.sort();
    Ok(result)
}
