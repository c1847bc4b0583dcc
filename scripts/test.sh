#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the wasm32-wasip2
# target and the browser test's Chromium if missing, builds the plugin
# components, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off run (CI, a fresh clone) gains nothing from incremental state,
# which costs gigabytes of disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
./scripts/browser-deps.sh
./scripts/build-plugins.sh
cargo build --quiet -p projector --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole workspace.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
