//! Read benchmarks of the inbox (seed 000), in one run:
//!
//! (a) the legacy query against the projection. A normalized inbox
//!     (conversations, participants, messages; ~100k conversations) lives
//!     in SQLite, indexed for the query; the same history feeds the
//!     inbox-unread plugin. For the same (user, site) keys — site owners,
//!     whose inboxes are the big ones, and visitors — it times the unread
//!     join against `Engine::read` (view lookup + Wasm render) and prints
//!     median, p99 and their ratios. Every answer is checked equal first.
//! (b) read latency under load: `GET /v1/views` at a fixed rate (default
//!     10k requests/s for 10 s) from a loopback load generator in this
//!     process: 64 HTTP/1 connections (hyper, no pooling layer) taking the
//!     scheduled requests in turn, released at their times by a pacer
//!     thread (not the runtime's 1 ms timer, which would send them in
//!     bursts). Latency is from send to the last byte of the answer; the
//!     report also gives how late the latest request started against its
//!     schedule, which would show the generator falling behind a slow
//!     server.
//!
//! Knobs: `BENCH_CONVERSATIONS` (100000), `BENCH_RPS` (10000),
//! `BENCH_SECONDS` (10). Run with `./scripts/bench.sh read`.

use projector::config::Config;
use projector::engine::{Engine, Record};
use projector::envelope::Format;
use projector::plugin::wasm::WasmHost;
use projector::plugin::{Limits, SharedCode};
use projector::serve::{ServeState, Serving};
use projector::store::Store;
use projector_guest::Population;
use projector_tests::knob;
use projector_tests::legacy::Model;
use projector_tests::{plugin_wasm, rendered};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PLUGIN: &str = "inbox-unread";

/// Connections the load generator keeps open (each sends its share of
/// the scheduled requests in turn).
const CONNECTIONS: usize = 64;

/// A skewed pick in 0..n: low numbers are far more likely.
fn skewed(rng: &mut StdRng, n: u64) -> u64 {
    let x: f64 = rng.gen();
    ((x * x * x) * n as f64) as u64
}

/// An inbox history of `conversations` conversations over skewed sites:
/// each site's owner is in every conversation of the site with one
/// visitor; messages, reads and archives follow. Returns the events.
fn history(model: &mut Model, conversations: u64, rng: &mut StdRng) -> Vec<String> {
    let sites = (conversations / 50).max(1);
    let visitors = conversations / 2;
    let mut events = Vec::new();
    let mut convs: Vec<(String, String, String, String)> = Vec::new();
    for c in 0..conversations {
        let site = skewed(rng, sites);
        let (site_id, owner) = (format!("s{site}"), format!("o{site}"));
        let visitor = format!("v{}", rng.gen_range(0..visitors));
        let conv = format!("c{c}");
        events.push(model.send(&site_id, &conv, &visitor, &[&owner, &visitor]));
        convs.push((conv, site_id, owner, visitor));
        // Some traffic on an earlier conversation of the same kind.
        for _ in 0..rng.gen_range(0..4) {
            let (conv, site_id, owner, visitor) = &convs[rng.gen_range(0..convs.len())];
            let event = match rng.gen_range(0..10) {
                0..=4 => model.send(site_id, conv, visitor, &[owner, visitor]),
                5..=6 => model.send(site_id, conv, owner, &[owner, visitor]),
                7..=8 => model.read(conv, owner),
                _ => model.archive(conv, rng.gen_bool(0.7)),
            };
            events.push(event);
        }
    }
    events
}

fn sqlite(model: &Model) -> anyhow::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open_in_memory()?;
    db.execute_batch(
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, site_id TEXT NOT NULL,
                                     archived INTEGER NOT NULL) WITHOUT ROWID;
         CREATE INDEX conversations_site ON conversations(site_id, id);
         CREATE TABLE participants (user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
                                    last_read_at INTEGER NOT NULL,
                                    PRIMARY KEY (user_id, conversation_id)) WITHOUT ROWID;
         CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL,
                                sender_id TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX messages_conversation ON messages(conversation_id, created_at);",
    )?;
    let tx = db.unchecked_transaction()?;
    {
        let mut conv = tx.prepare("INSERT INTO conversations VALUES (?1, ?2, ?3)")?;
        let mut msg = tx.prepare(
            "INSERT INTO messages (conversation_id, sender_id, created_at) VALUES (?1, ?2, ?3)",
        )?;
        for (id, c) in &model.conversations {
            conv.execute(rusqlite::params![id, c.site, c.archived])?;
            for (sender, at) in &c.messages {
                msg.execute(rusqlite::params![id, sender, at])?;
            }
        }
        let mut part = tx.prepare("INSERT INTO participants VALUES (?1, ?2, ?3)")?;
        for ((conv, user), read_at) in &model.participants {
            part.execute(rusqlite::params![user, conv, read_at])?;
        }
    }
    tx.commit()?;
    db.execute_batch("ANALYZE;")?;
    Ok(db)
}

/// The legacy unread query.
const UNREAD: &str = "
    SELECT c.id, MAX(m.created_at) AS last
    FROM participants p
    JOIN conversations c ON c.id = p.conversation_id
    JOIN messages m ON m.conversation_id = c.id
    WHERE p.user_id = ?1 AND c.site_id = ?2 AND c.archived = 0
      AND m.sender_id <> p.user_id
    GROUP BY c.id, p.last_read_at
    HAVING MAX(m.created_at) > p.last_read_at
    ORDER BY last DESC, c.id DESC";

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let conversations = knob("BENCH_CONVERSATIONS", 100_000);
    let mut rng = StdRng::seed_from_u64(7);
    let mut model = Model::default();
    let started = Instant::now();
    let events = history(&mut model, conversations, &mut rng);
    let messages: usize = model.conversations.values().map(|c| c.messages.len()).sum();
    eprintln!(
        "history: {} conversations, {} messages, {} participants, {} events ({:.1?})",
        model.conversations.len(),
        messages,
        model.participants.len(),
        events.len(),
        started.elapsed()
    );

    let started = Instant::now();
    let db = sqlite(&model)?;
    eprintln!("sqlite: loaded and analyzed in {:.1?}", started.elapsed());

    // The projection: the same events through the Wasm plugin.
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(Engine::new(
        Store::open(dir.path())?,
        Format::Auto,
        1,
        Duration::from_millis(1000),
    ));
    let host = WasmHost::new()?;
    let code: SharedCode = Arc::new(host.load(
        PLUGIN,
        &std::fs::read(plugin_wasm(PLUGIN))?,
        // Unbounded views (so SQL and the view agree on every key): the
        // busiest owners have thousands of unread conversations, whose
        // first render takes longer than the default 10 ms.
        Limits {
            epoch_deadline_ms: 200,
            ..Limits::default()
        },
        &serde_json::json!({"max_unread": 1_000_000}),
    )?);
    engine.add(code, Some(Population::Eager))?;
    let started = Instant::now();
    for (i, chunk) in events.chunks(4096).enumerate() {
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(j, e)| Record {
                partition: 0,
                offset: (i * 4096 + j) as u64,
                key: None,
                value: e.as_bytes().to_vec(),
            })
            .collect();
        engine.process("bench", 0, &records)?;
    }
    engine.commit()?;
    eprintln!(
        "projection: {} events applied in {:.1?}",
        events.len(),
        started.elapsed()
    );

    // Keys: the owners of 1000 sites (drawn as traffic is: busy sites
    // more often) and 1000 visitors.
    let mut keys: Vec<(String, String)> = Vec::new();
    let sites = (conversations / 50).max(1);
    for _ in 0..1000 {
        let site = skewed(&mut rng, sites);
        keys.push((format!("o{site}"), format!("s{site}")));
    }
    let participants: Vec<&(String, String)> = model.participants.keys().collect();
    for _ in 0..1000 {
        let (conv, user) = participants[rng.gen_range(0..participants.len())];
        if user.starts_with('v') {
            keys.push((user.clone(), model.conversations[conv].site.clone()));
        }
    }

    let mut query = db.prepare(UNREAD)?;
    let mut run_sql = |user: &str, site: &str| -> anyhow::Result<Vec<(String, i64)>> {
        let rows = query.query_map(rusqlite::params![user, site], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let now = projector::engine::now_ms();
    let mut unread_total = 0usize;
    for (user, site) in &keys {
        let key = format!("{user}:{site}");
        let sql = run_sql(user, site)?;
        let view = engine.read(PLUGIN, &key, now)?;
        let projected = view
            .and_then(|v| v.json())
            .map(|b| rendered(&b))
            .unwrap_or_default();
        anyhow::ensure!(sql == projected, "answers differ for {key}");
        unread_total += sql.len();
    }
    eprintln!(
        "checked: {} keys answer the same from SQLite and the projection ({} unread in all)",
        keys.len(),
        unread_total
    );

    let (mut sql_times, mut view_times) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (user, site) in &keys {
            let t = Instant::now();
            std::hint::black_box(run_sql(user, site)?);
            sql_times.push(t.elapsed());
            let key = format!("{user}:{site}");
            let t = Instant::now();
            std::hint::black_box(engine.read(PLUGIN, &key, now)?);
            view_times.push(t.elapsed());
        }
    }
    sql_times.sort();
    view_times.sort();
    let (sql50, sql99) = (percentile(&sql_times, 0.5), percentile(&sql_times, 0.99));
    let (view50, view99) = (percentile(&view_times, 0.5), percentile(&view_times, 0.99));
    println!(
        "(a) unread query, {} reads each: SQLite join median {:.1} µs, p99 {:.1} µs; projection median {:.1} µs, p99 {:.1} µs",
        sql_times.len(),
        micros(sql50),
        micros(sql99),
        micros(view50),
        micros(view99)
    );
    println!(
        "(a) projection vs source query: {:.1}x faster at the median, {:.1}x at p99 (target >= 50x)",
        sql50.as_secs_f64() / view50.as_secs_f64(),
        sql99.as_secs_f64() / view99.as_secs_f64()
    );

    // (b) GET /v1/views under a fixed request rate.
    let rps = knob("BENCH_RPS", 10_000);
    let seconds = knob("BENCH_SECONDS", 10);
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    let state = Arc::new(ServeState::new(
        &config,
        engine.clone(),
        projector::serve::Feed::None,
        None,
    )?);
    state.set_ready(true);
    let serving = Serving::start(state, &config.http.listen)?;
    let base = format!("/v1/views/{PLUGIN}/");
    let paths: Vec<String> = keys.iter().map(|(u, s)| format!("{base}{u}:{s}")).collect();
    let floor = drive(serving.addr(), vec!["/healthz".into()], rps, seconds)?;
    let views = drive(serving.addr(), paths, rps, seconds)?;
    serving.stop();
    println!(
        "(b) GET /healthz (this machine's HTTP floor) at {rps}/s for {seconds} s: {}",
        floor.summary()
    );
    println!(
        "(b) GET /v1/views at {rps}/s for {seconds} s: {} (target p99 < 1 ms)",
        views.summary()
    );
    Ok(())
}

/// What a load run measured.
struct Load {
    /// Send to last byte, sorted.
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    /// The latest a request started after its scheduled time.
    lag: Duration,
}

impl Load {
    fn summary(&self) -> String {
        let mut s = format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms, {} errors; latest start {:.1} ms after schedule",
            micros(percentile(&self.latencies, 0.5)),
            micros(percentile(&self.latencies, 0.99)),
            self.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            self.errors,
            self.lag.as_secs_f64() * 1e3,
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!(" (first error: {e})"));
        }
        s
    }
}

/// GET `paths` in turn at `rps` for `seconds`, open loop: each request
/// has a scheduled time; `CONNECTIONS` workers, each on its own HTTP/1
/// connection (hyper, no pool), take them in order.
fn drive(
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
    // Requests are released by a pacer thread at their scheduled times:
    // its sleeps are precise to tens of µs, where the runtime's timer
    // (1 ms) would release them in bursts of rps/1000 at once.
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
            std::thread::spawn(move || {
                for i in 0..total {
                    let wait = due(start, i).saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    release.add_permits(1);
                }
            })
        };
        let mut workers = Vec::new();
        for mut sender in connections {
            let (next, paths, release) = (next.clone(), paths.clone(), release.clone());
            workers.push(tokio::spawn(async move {
                let mut run = Load {
                    latencies: Vec::new(),
                    errors: 0,
                    first_error: None,
                    lag: Duration::ZERO,
                };
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    release.acquire().await.expect("pacer semaphore").forget();
                    let sent = Instant::now();
                    run.lag = run.lag.max(sent.saturating_duration_since(due(start, i)));
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
            errors: 0,
            first_error: None,
            lag: Duration::ZERO,
        };
        for w in workers {
            let run = w.await.expect("load worker");
            all.latencies.extend(run.latencies);
            all.errors += run.errors;
            all.first_error = all.first_error.or(run.first_error);
            all.lag = all.lag.max(run.lag);
        }
        pacer.join().expect("pacer thread");
        Ok::<_, anyhow::Error>(all)
    })?;
    result.latencies.sort();
    Ok(result)
}
