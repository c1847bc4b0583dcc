#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the wasm32-wasip2
# target if missing, builds the plugin components, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo build --quiet -p projector --bins
cargo test --workspace --no-fail-fast
