//! Kafka Streams' side of the peer bench: `benchmarks/kafka-streams-inbox`
//! in a JVM of its own ([`Streams`], killed on drop), started on the
//! run's topic with an application id and a state directory
//! ([`StreamsApp`]). It times (a) the replay from offset 0 and (b) the
//! restore into a wiped state directory, from the application's
//! `/progress`; `main` calls it and reads its interactive queries.

use crate::broker::GroupOffsets;
use crate::cpu::Cpu;
use crate::{epoch_ms, Run, PHASE_LIMIT};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The Kafka Streams application's store and repartition topic names.
const KS_STORE: &str = "inbox-unread";
const KS_BY_VIEW: &str = "by-view";

/// Kafka Streams' side: the application, its id and its state directory.
pub(crate) struct StreamsApp {
    pub(crate) jar: PathBuf,
    pub(crate) app: String,
    pub(crate) state: PathBuf,
    pub(crate) guarantee: String,
}

impl StreamsApp {
    pub(crate) fn start(&self, run: &Run) -> anyhow::Result<Streams> {
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

    pub(crate) fn repartition(&self) -> String {
        format!("{}-{KS_BY_VIEW}-repartition", self.app)
    }

    pub(crate) fn changelog(&self) -> String {
        format!("{}-{KS_STORE}-changelog", self.app)
    }

    /// (a) From its first event to its group's offsets committed at the
    /// end of the source topic and of the repartition topic: events/s.
    pub(crate) fn replay(&self, run: &Run, ks: &mut Streams) -> anyhow::Result<f64> {
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
    pub(crate) fn restore(&self, run: &Run) -> anyhow::Result<(f64, Streams)> {
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

/// The Kafka Streams application in a JVM of its own, killed on drop.
pub(crate) struct Streams {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) said: Arc<Mutex<Vec<String>>>,
    pub(crate) client: reqwest::blocking::Client,
}

impl Streams {
    /// Start it and wait for its first `running on http://…` line.
    pub(crate) fn start(jar: &Path, args: &[&str]) -> anyhow::Result<Streams> {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.base.trim_start_matches("http://").parse()?)
    }

    pub(crate) fn tail(&self) -> String {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said[said.len().saturating_sub(30)..].join("\n")
    }

    /// An error, with what it said, if it has exited.
    pub(crate) fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("Kafka Streams exited ({status}):\n{}", self.tail()),
        }
    }

    pub(crate) fn progress(&self) -> anyhow::Result<serde_json::Value> {
        let answer = self
            .client
            .get(format!("{}/progress", self.base))
            .send()?
            .error_for_status()?;
        Ok(serde_json::from_slice(&answer.bytes()?)?)
    }

    /// SIGTERM (it closes and leaves its group), and its end.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
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
