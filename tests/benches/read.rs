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
//!     10k requests/s for 10 s, in 3 rounds) from a loopback load
//!     generator in this process (`tests/common/load.rs`), on the plugin
//!     as it ships (views bounded to 1000 conversations; the report gives
//!     the answers' sizes). The generator is one thread pinned to the
//!     last core, like a client on another machine: 64 HTTP/1 connections (hyper, no pooling layer)
//!     take the scheduled requests in turn, released at their times by a
//!     pacer task that checks the clock between the connections' turns
//!     (not the runtime's 1 ms timer, which would send them in bursts).
//!     Latency is from send to the last byte of the answer, and also from
//!     the scheduled time (which counts a request's wait to be sent); the
//!     report gives how late the latest request started, which would show
//!     the generator falling behind a slow server. Each round runs
//!     `GET /healthz` first, the HTTP floor of this machine; the median
//!     round (by the views' p99) is the figure.
//! (c) reads under writes: the same reads with no writes, then while
//!     events flow through the same engine at the highest rate it takes
//!     (commits and the store's materializer included); p99 against p99.
//!
//! Knobs: `BENCH_CONVERSATIONS` (100000), `BENCH_RPS` (10000),
//! `BENCH_SECONDS` (10), `BENCH_ROUNDS` (3), `BENCH_WRITE_RATE` (events/s
//! written in (c); 0, the default, writes as fast as the engine takes them),
//! `BENCH_PROCESSING_NICE` (the writer's nice value in (c), as `[engine]
//! processing_nice` sets the pipeline's; 0). Run with
//! `./scripts/bench.sh read`.

use load::{drive, micros, percentile};
use projector::config::Config;
use projector_api::{ServeState, Serving};
use projector_core::engine::Engine;
use projector_host::wasm::WasmHost;
use projector_host::Limits;
use projector_tests::knob;
use projector_tests::legacy::Model;
use projector_tests::unread::{self, PLUGIN};
use projector_tests::{plugin_wasm, records, rendered};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../common/load.rs"]
mod load;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// A Wasm inbox-unread engine over `events` with its store in `dir`, with
/// the plugin's `settings`. The caller keeps `dir` until the engine is
/// dropped: its store closes into it.
fn project(
    host: &WasmHost,
    dir: &std::path::Path,
    limits: Limits,
    settings: serde_json::Value,
    events: &[String],
) -> anyhow::Result<Arc<Engine>> {
    let bytes = std::fs::read(plugin_wasm(PLUGIN))?;
    let engine = unread::engine(host, &bytes, limits, &settings, dir)?;
    let started = Instant::now();
    for (i, chunk) in events.chunks(4096).enumerate() {
        let values = chunk.iter().map(|e| e.as_bytes().to_vec()).collect();
        engine.process("bench", 0, &records((i * 4096) as u64, values))?;
    }
    engine.commit()?;
    eprintln!(
        "projection ({settings}): {} events applied in {:.1?}",
        events.len(),
        started.elapsed()
    );
    Ok(engine)
}

fn main() -> anyhow::Result<()> {
    projector::alloc::tune();
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

    // The projection: the same events through the Wasm plugin, with
    // unbounded views so SQL and the view agree on every key: the busiest
    // owners have thousands of unread conversations, whose first render
    // takes longer than the default 10 ms.
    let host = WasmHost::new()?;
    let unbounded = Limits {
        epoch_deadline_ms: 200,
        ..Limits::default()
    };
    // Each store's directory is declared before its engine, so that it is
    // removed after the store closed (locals drop in reverse order): a
    // store whose directory is gone cannot write its blobs, and sled 0.34's
    // flush then never finishes.
    let dir = tempfile::tempdir()?;
    let engine = project(
        &host,
        dir.path(),
        unbounded,
        serde_json::json!({"max_unread": 1_000_000}),
        &events,
    )?;

    let keys = sample_keys(&model, conversations, &mut rng);
    let now = projector_core::now_ms();
    against_sql(&db, &engine, &keys, now)?;

    // (b) GET /v1/views under a fixed request rate, on the plugin as it
    // ships: views bounded to their newest 1000 conversations (the default
    // `max_unread`), so a read costs the same however busy the site. The
    // same keys; each is read once first, so the run measures steady
    // state, not first renders.
    let rps = knob("BENCH_RPS", 10_000);
    let seconds = knob("BENCH_SECONDS", 10);
    drop(engine);
    let dir = tempfile::tempdir()?;
    let engine = project(
        &host,
        dir.path(),
        Limits::default(),
        serde_json::json!({}),
        &events,
    )?;
    let sizes = answer_sizes(&engine, &keys, now)?;
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    let state = Arc::new(ServeState::new(
        &config.api_settings(),
        engine.clone(),
        projector_api::Feed::none(),
        None,
    )?);
    state.set_ready(true);
    let serving = Serving::start(state, &config.http.listen)?;
    let base = format!("/v1/views/{PLUGIN}/");
    let paths: Vec<String> = keys.iter().map(|(u, s)| format!("{base}{u}:{s}")).collect();
    println!(
        "(b) rendered answers of the keys read: median {} bytes, largest {} bytes",
        sizes[sizes.len() / 2],
        sizes.last().copied().unwrap_or(0)
    );
    let mut p99s = rounds(serving.addr(), &paths, rps, seconds)?;
    p99s.sort();
    let reads_under_writes = under_writes(&engine, &serving, &paths, (rps, seconds), || {
        history(&mut model, conversations, &mut rng)
    });
    serving.stop();
    reads_under_writes?;
    let all: Vec<String> = p99s.iter().map(|p| format!("{:.0}", micros(p.0))).collect();
    let (sent, scheduled) = p99s[p99s.len() / 2];
    println!(
        "(b) GET /v1/views p99, median round: {:.0} µs from send, {:.0} µs from the scheduled time \
         (all rounds from send, µs: {}) (target p99 < 1 ms)",
        micros(sent),
        micros(scheduled),
        all.join(", ")
    );
    Ok(())
}

/// Keys read: the owners of 1000 sites (drawn as traffic is: busy sites
/// more often) and up to 1000 visitors, as (user, site).
fn sample_keys(model: &Model, conversations: u64, rng: &mut StdRng) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = Vec::new();
    let sites = (conversations / 50).max(1);
    for _ in 0..1000 {
        let site = skewed(rng, sites);
        keys.push((format!("o{site}"), format!("s{site}")));
    }
    let participants: Vec<&(String, String)> = model.participants.keys().collect();
    for _ in 0..1000 {
        let (conv, user) = participants[rng.gen_range(0..participants.len())];
        if user.starts_with('v') {
            keys.push((user.clone(), model.conversations[conv].site.clone()));
        }
    }
    keys
}

/// (a) Every key's answer from SQLite and from the projection checked
/// equal, then each timed three times: medians, p99s and their ratios.
fn against_sql(
    db: &rusqlite::Connection,
    engine: &Engine,
    keys: &[(String, String)],
    now: i64,
) -> anyhow::Result<()> {
    let mut query = db.prepare(UNREAD)?;
    let mut run_sql = |user: &str, site: &str| -> anyhow::Result<Vec<(String, i64)>> {
        let rows = query.query_map(rusqlite::params![user, site], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let mut unread_total = 0usize;
    for (user, site) in keys {
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
        for (user, site) in keys {
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
    Ok(())
}

/// The rendered answers' sizes of `keys`, in bytes, sorted.
fn answer_sizes(
    engine: &Engine,
    keys: &[(String, String)],
    now: i64,
) -> anyhow::Result<Vec<usize>> {
    let mut sizes = Vec::with_capacity(keys.len());
    for (user, site) in keys {
        let view = engine.read(PLUGIN, &format!("{user}:{site}"), now)?;
        sizes.push(view.and_then(|v| v.body).map_or(0, |b| b.get().len()));
    }
    sizes.sort_unstable();
    Ok(sizes)
}

/// (b) `BENCH_ROUNDS` rounds of `GET /healthz` then `paths` at `rps`
/// for `seconds`, each printed: the views' p99 from send and from the
/// scheduled time, per round. Rounds alternate the floor and the views,
/// so a slow spell of this shared machine weighs on both; the median
/// round is the figure.
fn rounds(
    addr: std::net::SocketAddr,
    paths: &[String],
    rps: u64,
    seconds: u64,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let rounds = knob("BENCH_ROUNDS", 3).max(1) as usize;
    let mut p99s = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let floor = drive(addr, vec!["/healthz".into()], rps, seconds)?;
        let views = drive(addr, paths.to_vec(), rps, seconds)?;
        println!(
            "(b) round {round} of {rounds}, GET /healthz (this machine's HTTP floor) at {rps}/s for {seconds} s: {}",
            floor.summary()
        );
        println!(
            "(b) round {round} of {rounds}, GET /v1/views at {rps}/s for {seconds} s: {}",
            views.summary()
        );
        p99s.push((
            percentile(&views.latencies, 0.99),
            percentile(&views.from_schedule, 0.99),
        ));
    }
    Ok(p99s)
}

/// (c) The same reads with no writes, then while events flow through
/// the same engine as fast as it takes them (its commits included): the
/// p99 of both, and their ratio. `more` makes a fresh run of events.
fn under_writes(
    engine: &Arc<Engine>,
    serving: &Serving,
    paths: &[String],
    (rps, seconds): (u64, u64),
    mut more: impl FnMut() -> Vec<String>,
) -> anyhow::Result<()> {
    // Enough events for the whole read run at well over the rate seen.
    let mut events = Vec::new();
    while events.len() < 1_000_000 {
        events.extend(more());
    }
    let quiet = drive(serving.addr(), paths.to_vec(), rps, seconds)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Events per second to write; 0: as fast as the engine takes them.
    let pace = knob("BENCH_WRITE_RATE", 0);
    // The writer's nice value, as `[engine] processing_nice` sets the
    // pipeline's (0: the default).
    let nice = knob("BENCH_PROCESSING_NICE", 0) as i32;
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<(usize, Duration, u64)> {
            if nice > 0 {
                projector_common::priority::lower_this_thread(nice)?;
            }
            let started = Instant::now();
            let commits = engine.commit_stats().commits;
            let first = engine.resume_offset("bench", 0)?;
            let mut written = 0;
            for (i, chunk) in events.chunks(4096).enumerate() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let values = chunk.iter().map(|e| e.as_bytes().to_vec()).collect();
                engine.process("bench", 0, &records(first + (i * 4096) as u64, values))?;
                written += chunk.len();
                if pace > 0 {
                    // Paced: wait until this many events are due.
                    let due = started + Duration::from_secs_f64(written as f64 / pace as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            let elapsed = started.elapsed();
            engine.commit()?;
            Ok((written, elapsed, engine.commit_stats().commits - commits))
        })
    };
    let busy = drive(serving.addr(), paths.to_vec(), rps, seconds);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, elapsed, commits) = writer
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    let busy = busy?;
    println!(
        "(c) GET /v1/views at {rps}/s for {seconds} s, no writes: {}",
        quiet.summary()
    );
    println!(
        "(c) the same while {written} events flowed through the same engine in {:.1} s \
         ({:.0} events/s, {commits} commits): {}",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64().max(1e-9),
        busy.summary()
    );
    let (q99, b99) = (
        percentile(&quiet.latencies, 0.99),
        percentile(&busy.latencies, 0.99),
    );
    println!(
        "(c) reads' p99 under writes ÷ without: {:.1} ({:.0} µs ÷ {:.0} µs) (target <= 2; processing nice {nice})",
        b99.as_secs_f64() / q99.as_secs_f64().max(1e-9),
        micros(b99),
        micros(q99)
    );
    Ok(())
}
