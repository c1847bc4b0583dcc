//! The fixed-rate load generator of the read benchmarks (`read.rs`,
//! `peer`): `GET` requests at a fixed rate over a list of paths, open
//! loop, from one thread pinned to the last core, and their latency
//! percentiles. It only sends requests and measures their answers; it
//! never starts or judges a server.
//!
//! The generator is one thread, like a client on another machine:
//! [`CONNECTIONS`] HTTP/1 connections (hyper, no pooling layer) take the
//! scheduled requests in turn, released at their times by a pacer task
//! that checks the clock between the connections' turns. Latency is from
//! send to the last byte of the answer, and also from the scheduled time
//! (which counts a request's wait to be sent).
//!
//! hyper and `core_affinity` are dev-dependencies of this crate, so this
//! file is not a module of its library: a bench includes it with
//! `#[path = "../common/load.rs"] mod load;`.

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Connections the load generator keeps open (each sends its share of
/// the scheduled requests in turn).
pub const CONNECTIONS: usize = 64;

/// The `q` quantile of `sorted` durations (zero when there are none).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// A duration in microseconds.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// What a load run measured.
pub struct Load {
    /// Send to last byte, sorted.
    pub latencies: Vec<Duration>,
    /// Scheduled time to last byte, sorted: also counts the time a request
    /// waited to be sent (coordinated omission).
    pub from_schedule: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The latest a request started after its scheduled time.
    pub lag: Duration,
}

impl Load {
    fn new(capacity: usize) -> Load {
        Load {
            latencies: Vec::with_capacity(capacity),
            from_schedule: Vec::with_capacity(capacity),
            errors: 0,
            first_error: None,
            lag: Duration::ZERO,
        }
    }

    fn add(&mut self, other: Load) {
        self.latencies.extend(other.latencies);
        self.from_schedule.extend(other.from_schedule);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.lag = self.lag.max(other.lag);
    }

    /// One line: percentiles from send and from the scheduled time, the
    /// errors (and the first), and how late the latest request started,
    /// which would show the generator falling behind a slow server.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.1} ms, {} errors; from the scheduled time: \
             p50 {:.0} µs, p99 {:.0} µs; latest start {:.1} ms after schedule",
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

/// GET `paths` in turn at `rps` for `seconds`, open loop: each request
/// has a scheduled time; [`CONNECTIONS`] workers, each on its own HTTP/1
/// connection (hyper, no pool), take them in order.
///
/// The load runs on a thread of its own, pinned to the last core where
/// there are two or more: like a client on another machine, it takes one
/// core and leaves the rest to the server, instead of the scheduler
/// moving both about.
pub fn drive(addr: SocketAddr, paths: Vec<String>, rps: u64, seconds: u64) -> anyhow::Result<Load> {
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

/// The schedule of a run: when each of `total` requests is due.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    rps: u64,
    total: u64,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos(i * 1_000_000_000 / self.rps)
    }
}

/// [`drive`] on the calling thread, in a current-thread runtime of its own.
fn drive_here(
    addr: SocketAddr,
    paths: Vec<String>,
    rps: u64,
    seconds: u64,
) -> anyhow::Result<Load> {
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let paths = Arc::new(paths);
    let total = rps * seconds;
    let release = Arc::new(Semaphore::new(0));
    let mut result = load.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            connections.push(sender);
        }
        let schedule = Schedule {
            start: Instant::now(),
            rps,
            total,
        };
        let pacer = tokio::spawn(pace(schedule, release.clone()));
        let mut workers = Vec::new();
        for sender in connections {
            let (next, paths, release) = (next.clone(), paths.clone(), release.clone());
            workers.push(tokio::spawn(work(sender, schedule, next, paths, release)));
        }
        let mut all = Load::new(total as usize);
        for w in workers {
            all.add(w.await.expect("load worker"));
        }
        pacer.await.expect("pacer task");
        Ok::<_, anyhow::Error>(all)
    })?;
    result.latencies.sort();
    result.from_schedule.sort();
    Ok(result)
}

/// Release the requests at their times: a permit each, then one more
/// per connection (each takes an index past the end and stops).
///
/// The pacer is a task on the load thread itself, which checks the clock
/// between the other tasks' turns (yielding, so connections are served
/// in between): the runtime's timer (1 ms) would release them in bursts
/// of rps/1000, and a pacer thread of its own, woken for every request,
/// measured no better while leaving the generator on two threads that
/// the scheduler moves about.
async fn pace(schedule: Schedule, release: Arc<Semaphore>) {
    let total = schedule.total;
    let mut released = 0u64;
    while released < total {
        let now = Instant::now();
        let mut due_now = released;
        while due_now < total && schedule.due(due_now) <= now {
            due_now += 1;
        }
        release.add_permits((due_now - released) as usize);
        released = due_now;
        tokio::task::yield_now().await;
    }
    release.add_permits(CONNECTIONS);
}

/// One connection's share: take the next due request, send it, time it.
async fn work(
    mut sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    schedule: Schedule,
    next: Arc<AtomicU64>,
    paths: Arc<Vec<String>>,
    release: Arc<Semaphore>,
) -> Load {
    let mut run = Load::new(0);
    // A permit is one due request (taken in turn, so the index taken is
    // due by now).
    loop {
        release.acquire().await.expect("pacer semaphore").forget();
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= schedule.total {
            break;
        }
        let sent = Instant::now();
        let scheduled = schedule.due(i);
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
}
