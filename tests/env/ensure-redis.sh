#!/usr/bin/env bash
# Prints the path of a redis-server binary, installing Debian's redis-server when there is none.
# The tests start their own servers from it, on loopback, without persistence.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis.sh: installing redis-server (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
  # The package starts a system service; the tests do not use it.
  (service redis-server stop || systemctl stop redis-server || true) >/dev/null 2>&1
fi
command -v redis-server
