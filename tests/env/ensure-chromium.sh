#!/usr/bin/env bash
# Prints the path of Debian's Chromium, installing the package when it is missing (as root). The
# one browser test (tests/e2e/login.rs, the consent page) drives it headless with Playwright
# (playwright-core from npm, tests/peers/typescript), which downloads no browser of its own.
set -euo pipefail
bin=/usr/bin/chromium
if [ ! -x "$bin" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium.sh: Chromium is missing (Debian: apt-get install chromium)" >&2
    exit 1
  fi
  echo "ensure-chromium.sh: installing chromium (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium >&2
fi
echo "$bin"
