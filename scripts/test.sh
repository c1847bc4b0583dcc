#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the wasm32-wasip2
# target and the browser test's Chromium if missing, builds the plugin
# components, starts a Kafka broker (scripts/kafka.sh), then runs every
# test.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off run (CI, a fresh clone) gains nothing from incremental state,
# which costs gigabytes of disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
./scripts/browser-deps.sh
./scripts/build-plugins.sh
cargo build --quiet -p projector --bins
# A real Kafka broker for tests/tests/broker.rs; one this run starts, it
# stops, however the run ends.
broker_started=
./scripts/kafka.sh status >/dev/null || broker_started=1
log=$(mktemp)
trap 'rm -f "$log"; if [ -n "$broker_started" ]; then ./scripts/kafka.sh stop >/dev/null; fi' EXIT
PROJECTOR_KAFKA_BOOTSTRAP=$(./scripts/kafka.sh start)
export PROJECTOR_KAFKA_BOOTSTRAP
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole workspace.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
