//! The peer bench's broker: a real Apache Kafka broker
//! (`PROJECTOR_KAFKA_BOOTSTRAP`'s or `scripts/kafka.sh`'s), its admin API,
//! and a reader of a group's committed offsets and of topics' ends. It
//! never produces or consumes records.

use projector_tests::root;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The broker: `PROJECTOR_KAFKA_BOOTSTRAP`'s, or `scripts/kafka.sh`'s,
/// stopped on drop when this bench started it.
pub(crate) struct Broker {
    pub(crate) bootstrap: String,
    pub(crate) started_here: bool,
}

impl Broker {
    pub(crate) fn up() -> anyhow::Result<Broker> {
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
    pub(crate) fn pid(&self) -> Option<u32> {
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

pub(crate) fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

pub(crate) fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// A group's committed offsets and topics' ends, read with one client.
pub(crate) struct GroupOffsets {
    pub(crate) consumer: BaseConsumer,
}

impl GroupOffsets {
    pub(crate) fn new(bootstrap: &str, group: &str) -> anyhow::Result<GroupOffsets> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(GroupOffsets { consumer })
    }

    /// Each partition's end (its high watermark: transaction markers
    /// included).
    pub(crate) fn ends(&self, topic: &str, partitions: u32) -> anyhow::Result<Vec<u64>> {
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
    pub(crate) fn nonempty(&self, topic: &str, partitions: u32) -> anyhow::Result<u64> {
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
    pub(crate) fn at_least(&self, topic: &str, ends: &[u64]) -> anyhow::Result<bool> {
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
