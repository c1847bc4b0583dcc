#!/usr/bin/env bash
# Soaks and fuzzing longer than the suite's, each printing its tally:
#   ./scripts/soak.sh run [KILLS]    `projector run` on the embedded log,
#                                    SIGKILLed KILLS times (default 100) while
#                                    clients POST events and read views
#   ./scripts/soak.sh kafka [KILLS]  `projector run` on Kafka (`kafka-dev` in
#                                    its own process), SIGKILLed KILLS times
#                                    (default 30) while a producer writes:
#                                    poison events, then retries through the
#                                    retry topic (a lagging enrichment service)
#   ./scripts/soak.sh fuzz [CASES]   the property tests of the decoders,
#                                    stored form and tokens with CASES cases
#                                    each (default 100000)
# SOAK_SEED picks other kill moments.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
case "$mode" in
  run | kafka | fuzz) ;;
  *) echo "usage: $0 run|kafka|fuzz [N]" >&2; exit 2 ;;
esac
./scripts/build-plugins.sh
cargo build --quiet -p projector --bins
case "$mode" in
  run)
    SOAK_KILLS=${2:-100} cargo test --quiet -p projector-tests --test soak -- --nocapture run_killed 2>&1 \
      | grep -E "^soak|panicked|assert|test result" ;;
  kafka)
    SOAK_KAFKA_KILLS=${2:-30} cargo test --quiet -p projector-tests --test soak -- --nocapture --test-threads=1 run_on_kafka 2>&1 \
      | grep -E "^soak|panicked|assert|test result" ;;
  fuzz)
    PROPTEST_CASES=${2:-100000} cargo test --quiet -p projector-core --test fuzz 2>&1 | grep -E "test result|panicked|minimal"
    PROPTEST_CASES=${2:-100000} cargo test --quiet -p projector-api token 2>&1 | grep -E "test result|panicked|minimal"
    PROPTEST_CASES=${2:-100000} cargo test --quiet -p projector-core unapplied 2>&1 | grep -E "test result|panicked|minimal" ;;
esac
