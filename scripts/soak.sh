#!/usr/bin/env bash
# Soak of the runtime under kills, longer than the suite's: `projector run`
# on the embedded log SIGKILLed KILLS times (default 100) while clients POST
# events and read views; prints the tally (kills, events acknowledged,
# lost, doubled). SOAK_SEED picks other kill moments.
#   ./scripts/soak.sh run [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
kills=${2:-100}
case "$mode" in
  run) ;;
  *) echo "usage: $0 run [KILLS]" >&2; exit 2 ;;
esac
./scripts/build-plugins.sh
cargo build --quiet -p projector --bins
SOAK_KILLS=$kills cargo test --quiet -p projector-tests --test soak -- --nocapture 2>&1 \
  | grep -E "^soak|panicked|assert|test result"
