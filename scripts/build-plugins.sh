#!/usr/bin/env bash
# Build the reference plugins as wasm32-wasip2 components into
# target/plugins/<name>.wasm, and the test fixtures into
# target/test-plugins/. Idempotent.
set -euo pipefail
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
