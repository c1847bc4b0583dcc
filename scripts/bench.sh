#!/usr/bin/env bash
# Benchmarks: inbox projection over ~1M events, Wasm against native, in one
# run. BENCH_EVENTS=N changes the stream length.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo bench -p projector-tests --bench inbox
