#!/usr/bin/env bash
# weval 0.5.0 (the partial evaluator `projector-js-build --aot` runs), built
# from crates.io into target/tools once; prints the binary's path.
# Idempotent: a built binary of that version is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/target/tools"
bin="$root/bin/weval"
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q ' 0\.5\.0'; then
  echo "building weval 0.5.0 into $root (once, a few minutes)" >&2
  cargo install --quiet --locked --root "$root" weval --version 0.5.0 >&2
fi
echo "$bin"
