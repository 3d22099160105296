#!/usr/bin/env bash
# Prints the path of a wrk binary (HTTP load for `make bench`), installing Debian's when there is
# none. Debian's wrk is built with LuaJIT, whose FFI the paced (fixed-load) script uses.
set -euo pipefail
if [ -n "${WRK_BIN:-}" ] && [ -x "$WRK_BIN" ]; then echo "$WRK_BIN"; exit 0; fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "ensure-wrk.sh: installing wrk (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
fi
command -v wrk
