#!/usr/bin/env bash
# Build the reference plugins as wasm32-wasip2 components into
# target/plugins/<name>.wasm, the test fixtures into target/test-plugins/,
# and the TypeScript plugins into target/ts-plugins/ (plain and compiled
# ahead of time; `--without-aot` leaves that one out, which needs weval,
# built once from crates.io in a few minutes). Idempotent.
set -euo pipefail
aot=1
[ "${1:-}" = "--without-aot" ] && aot=

cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --target wasm32-wasip2 --profile plugin -p inbox-unread -p subscriptions -p hostile-plugin
mkdir -p target/plugins target/test-plugins
cp target/wasm32-wasip2/plugin/inbox_unread.wasm target/plugins/inbox-unread.wasm
cp target/wasm32-wasip2/plugin/subscriptions.wasm target/plugins/subscriptions.wasm
cp target/wasm32-wasip2/plugin/hostile_plugin.wasm target/test-plugins/hostile.wasm
# The same fixture as a second version, for the registry tests.
cargo build --quiet --target wasm32-wasip2 --profile plugin -p hostile-plugin --features v2
cp target/wasm32-wasip2/plugin/hostile_plugin.wasm target/test-plugins/hostile-v2.wasm
cargo build --quiet --target wasm32-wasip2 --profile plugin -p hostile-plugin --features broken
cp target/wasm32-wasip2/plugin/hostile_plugin.wasm target/test-plugins/hostile-broken.wasm
# The fixture built against projector:plugin@0.2.0, as plugins made before
# 0.2.1 (no `prefetch` export) were: they must still load.
cargo build --quiet --target wasm32-wasip2 --profile plugin -p hostile-plugin --features projector-guest/wit-0-2-0
cp target/wasm32-wasip2/plugin/hostile_plugin.wasm target/test-plugins/hostile-0.2.0.wasm
for v in same drops; do
  cargo build --quiet --target wasm32-wasip2 --profile plugin -p hostile-plugin --features "$v"
  cp target/wasm32-wasip2/plugin/hostile_plugin.wasm "target/test-plugins/hostile-$v.wasm"
done
# The TypeScript plugins: the SDK's npm packages from the lock file (once
# per lock-file change), then each plugin bundled and componentized.
./scripts/js-deps.sh
mkdir -p target/ts-plugins
# Each is built again when a source is newer than its component; the
# second is the same plugin compiled ahead of time (weval, built once).
stale() {
  [ ! -s "$1" ] ||
    [ -n "$(find guest-sdk/js guest-sdk/wit plugins/inbox-unread-ts package-lock.json -newer "$1" -not -path '*/node_modules/*' -print -quit)" ]
}
if stale target/ts-plugins/inbox-unread-ts.wasm; then
  (cd plugins/inbox-unread-ts && npm run --silent build)
fi
if [ -n "$aot" ] && stale target/ts-plugins/inbox-unread-ts-aot.wasm; then
  weval=$(./scripts/weval.sh)
  (cd plugins/inbox-unread-ts && WEVAL="$weval" npm run --silent build:aot)
fi
