#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver, for the console's browser
# test; installed only when missing. Needs root (or sudo) the first time.
set -euo pipefail
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && exit 0
echo "installing chromium and chromium-driver for the console's browser test" >&2
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
