#!/usr/bin/env bash
# Build everything and run the main job: the runtime on its embedded log,
# with the reference plugins loaded and a sample inbox stream replayed.
# Idempotent: a second run resumes where the first stopped.
# With --serve it then keeps running: following the log and serving the read
# API on 127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh --without-aot
cargo build --quiet --release -p projector -p projector-tests
mkdir -p target/demo
[ -s target/demo/inbox-sample.ndjson ] || target/release/gen-inbox 20000 50 500 > target/demo/inbox-sample.ndjson
# The sample goes into the embedded log once; later runs resume from the log.
ingest=()
[ -d target/demo-data ] || ingest=(--ingest target/demo/inbox-sample.ndjson)
target/release/projector --config examples/projector.toml run "${ingest[@]}" --exit-when-idle
echo
echo "Views are in target/demo-data. Query one:"
echo "  target/release/projector --config examples/projector.toml get inbox-unread u0:s0"
target/release/projector --config examples/projector.toml get inbox-unread u0:s0 2>/dev/null | head -20
echo "  ..."
if [ "${1:-}" = "--serve" ]; then
  echo
  echo "Serving the read API on http://127.0.0.1:8080 (Ctrl-C stops). Try:"
  echo "  curl -s http://127.0.0.1:8080/v1/views/inbox-unread/u0:s0"
  echo "  curl -s http://127.0.0.1:8080/metrics"
  exec target/release/projector --config examples/projector.toml run
fi
echo "Keep it running, following the log and serving the read API on 127.0.0.1:8080:"
echo "  ./scripts/demo.sh --serve"
