#!/usr/bin/env bash
# Prints the path of promtool, installing Debian's prometheus package (which ships it) when
# missing. The package starts a system Prometheus; the tests do not use it, so it is stopped.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-promtool.sh: promtool is missing (Debian: apt-get install prometheus)" >&2
    exit 1
  fi
  echo "ensure-promtool.sh: installing prometheus (Debian) for promtool" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2
  (service prometheus stop || systemctl stop prometheus || true) >/dev/null 2>&1
fi
command -v promtool
