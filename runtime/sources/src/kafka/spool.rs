//! The spool's producer: every record the runtime produces (retries,
//! dead letters) is written to the store's spool in the same atomic batch
//! as the work that made it, and sent from there by an idempotent
//! producer.

use super::config::{header, KafkaConfig};
use super::stats::KafkaStats;
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::source::Spool;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delivery reports of the spool's producer, by spool sequence number.
#[derive(Default)]
struct SpoolCtx {
    acked: Mutex<Vec<u64>>,
    failed: Mutex<Vec<(u64, String)>>,
}

impl ClientContext for SpoolCtx {}

impl ProducerContext for SpoolCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.acked.lock().recover().push(seq as u64),
            Err((e, _)) => self
                .failed
                .lock()
                .recover()
                .push((seq as u64, e.to_string())),
        }
    }
}

/// Drop from the spool what the broker already holds (sent before a kill
/// whose removal never became durable). Reading back is best effort: if
/// it fails, everything spooled is sent, at least once as before.
fn forget_delivered(spool: &dyn Spool, config: &KafkaConfig, id: &str) -> anyhow::Result<()> {
    if spool.pending() == 0 {
        return Ok(());
    }
    match super::delivered::already_delivered(spool, config, id) {
        Ok(seqs) if !seqs.is_empty() => {
            spool.remove(&seqs)?;
            tracing::info!(
                records = seqs.len(),
                "spooled records the broker already holds are not sent again"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "reading back what the spool sent before its last stop: {e:#}; sending all it holds"
        ),
    }
    Ok(())
}

/// Most records in flight to the broker at once.
const SPOOL_IN_FLIGHT: usize = 50_000;

/// The spool's producer: send what the store's spool holds, oldest first,
/// with idempotence; remove each record once the broker acknowledged it.
/// On stop, send what is spooled once more and wait a little (5 s) for
/// what is in flight; the rest stays spooled for the next start.
pub(crate) fn run_spool(
    spool: &dyn Spool,
    config: &KafkaConfig,
    stats: &KafkaStats,
    stop: &Shutdown,
) -> anyhow::Result<()> {
    let producer: BaseProducer<SpoolCtx> = config
        .client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ])
        .create_with_context(SpoolCtx::default())?;
    let id = spool.id()?;
    forget_delivered(spool, config, &id)?;
    let mut in_flight: HashSet<u64> = HashSet::new();
    // The highest seq sent: the next scan starts after it, instead of
    // stepping over every record in flight again. Reset to rescan from
    // the start after a failure, and whenever nothing is in flight.
    let mut cursor: Option<u64> = None;
    let mut idle_since: Option<Instant> = None;
    // Stopping, one more pass sends what the last commit spooled.
    let mut last_pass = false;
    loop {
        let stopping = stop.is_stopped();
        let send = !stopping || !std::mem::replace(&mut last_pass, true);
        // A full pass: more may wait, so the poll below does not wait.
        let mut full = false;
        if send && in_flight.len() < SPOOL_IN_FLIGHT {
            let room = (SPOOL_IN_FLIGHT - in_flight.len()).min(5000);
            if in_flight.is_empty() {
                cursor = None;
            }
            let records = spool.read(cursor, &in_flight, room)?;
            full = records.len() == room;
            for record in records {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
                let spooled = super::delivered::spool_header(&id, record.seq);
                headers = headers.insert(Header {
                    key: header::SPOOL,
                    value: Some(spooled.as_bytes()),
                });
                for (k, v) in &record.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let mut r: BaseRecord<'_, Vec<u8>, Vec<u8>, usize> =
                    BaseRecord::with_opaque_to(&record.topic, record.seq as usize).headers(headers);
                if let Some(p) = &record.payload {
                    r = r.payload(p);
                }
                if let Some(k) = &record.key {
                    r = r.key(k);
                }
                if let Some(p) = record.partition {
                    r = r.partition(p);
                }
                match producer.send(r) {
                    Ok(()) => {
                        in_flight.insert(record.seq);
                        cursor = cursor.max(Some(record.seq));
                    }
                    Err((KafkaError::MessageProduction(_), _)) => break, // queue full
                    Err((e, _)) => {
                        stats.produce_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = record.topic, "produce: {e}");
                        break;
                    }
                }
            }
        }
        producer.poll(if full {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        });
        let acked: Vec<u64> = std::mem::take(&mut *producer.context().acked.lock().recover());
        if !acked.is_empty() {
            spool.remove(&acked)?;
            for s in &acked {
                in_flight.remove(s);
            }
            stats
                .produced
                .fetch_add(acked.len() as u64, Ordering::Relaxed);
        }
        let failed = std::mem::take(&mut *producer.context().failed.lock().recover());
        for (seq, e) in failed {
            // Sent again on a later round.
            stats.produce_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(seq, "delivery failed, kept in the spool: {e}");
            in_flight.remove(&seq);
            cursor = None;
        }
        if stopping {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if in_flight.is_empty() || since.elapsed() > Duration::from_secs(5) {
                break;
            }
        } else if in_flight.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    spool.flush()?;
    if !in_flight.is_empty() {
        tracing::info!(
            records = in_flight.len(),
            "stopping with unacknowledged records; they stay spooled"
        );
    }
    // Anything librdkafka still holds is dropped: the spool has it.
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    Ok(())
}
