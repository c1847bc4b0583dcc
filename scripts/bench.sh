#!/usr/bin/env bash
# Benchmarks, each printing ratios measured in one run:
#   inbox  projection throughput over ~1M events, Wasm against native
#          (BENCH_EVENTS=N changes the stream length);
#   read   the legacy SQL query against the projection read, and HTTP read
#          latency under a fixed request rate (BENCH_CONVERSATIONS, BENCH_RPS,
#          BENCH_SECONDS, BENCH_ROUNDS);
#   enrich aggregation with enrichment from four local services: events/s,
#          cache hit ratio, fetch latency (BENCH_ASSETS, BENCH_EVENTS,
#          BENCH_WORKERS);
#   kafka  Kafka (the mock cluster, then Apache Kafka) → Wasm inbox
#          projection → sled against a raw rdkafka consume of the same
#          topic, and the same projection from the embedded log, in
#          alternating rounds (BENCH_EVENTS, BENCH_ROUNDS);
#   swap   the largest stall of a replace deploy while events flow, against
#          steady state (BENCH_EVENTS);
#   restore  about 1M views restored from a changelog against rebuilt by
#          replaying the source, on the mock cluster (BENCH_EVENTS,
#          BENCH_PARTITIONS);
#   history  what a view history costs: the inbox stream with history off
#          and on (events/s, commit time, entries and bytes, store size) and
#          the latency of as_of reads (BENCH_EVENTS, BENCH_COMMIT_MS,
#          BENCH_READS);
#   growth   cost as the data grows: `projector replay` of 1M events and of
#          4M with four times the keys, events/s, cost per event, peak RSS,
#          store size (BENCH_SCALE);
#   peer   Kafka Streams beside projector on a real Kafka broker
#          (scripts/kafka.sh): events/s, restore from the changelog, read
#          latency, and a sample of views compared (BENCH_EVENTS,
#          BENCH_PARTITIONS, BENCH_RPS, BENCH_SECONDS, BENCH_GUARANTEE).
# Usage: ./scripts/bench.sh [inbox|read|enrich|kafka|swap|restore|history|growth|peer]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
# The Kafka Streams application it runs beside projector, then the bench.
peer() {
  mvn -q -B -f benchmarks/kafka-streams-inbox/pom.xml package
  cargo bench -p projector-tests --bench peer
}
# The bench on the mock cluster, then on Apache Kafka (scripts/kafka.sh's
# broker, started here when none runs, and stopped after).
kafka() {
  local started=
  ./scripts/kafka.sh status >/dev/null || started=1
  PROJECTOR_KAFKA_BOOTSTRAP=$(./scripts/kafka.sh start) cargo bench -p projector-tests --bench kafka
  if [ -n "$started" ]; then ./scripts/kafka.sh stop >/dev/null; fi
}
# The release binary it replays with, then the bench.
growth() {
  cargo build --release -p projector
  cargo bench -p projector-tests --bench growth
}
case "${1:-all}" in
  inbox) cargo bench -p projector-tests --bench inbox ;;
  read) cargo bench -p projector-tests --bench read ;;
  enrich) cargo bench -p projector-tests --bench enrich ;;
  kafka) kafka ;;
  swap) cargo bench -p projector-tests --bench swap ;;
  restore) cargo bench -p projector-tests --bench restore ;;
  history) cargo bench -p projector-tests --bench history ;;
  growth) growth ;;
  peer) peer ;;
  all)
    cargo bench -p projector-tests --bench inbox
    cargo bench -p projector-tests --bench read
    cargo bench -p projector-tests --bench enrich
    kafka
    cargo bench -p projector-tests --bench swap
    cargo bench -p projector-tests --bench restore
    cargo bench -p projector-tests --bench history
    growth
    peer
    ;;
  *) echo "usage: $0 [inbox|read|enrich|kafka|swap|restore|history|growth|peer]" >&2; exit 2 ;;
esac
