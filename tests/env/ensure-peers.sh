#!/usr/bin/env bash
# Installs the MCP peers of the conformance matrix (tests/e2e/matrix.rs) when missing:
# - the official Python SDK (PyPI `mcp`, tests/peers/python/requirements.txt) into the project's
#   venv (tests/env/venv.sh);
# - the official TypeScript SDK (npm `@modelcontextprotocol/sdk`, tests/peers/typescript/
#   package-lock.json) with the machine's npm, into tests/peers/typescript/node_modules.
# Prints the venv's Python. Diagnostics go to stderr; a missing tool is named.
# `ensure-peers.sh python` installs the Python SDK only (what `make demo` needs).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
python=$("$root/tests/env/venv.sh")
req="$root/tests/peers/python/requirements.txt"
stamp="$root/.venv/.peers-installed"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ]; then
  echo "ensure-peers.sh: installing the Python MCP SDK into .venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$stamp"
fi
if [ "${1:-}" = python ]; then
  echo "$python"
  exit 0
fi
ts="$root/tests/peers/typescript"
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-peers.sh: $tool is missing (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done
if [ ! -f "$ts/node_modules/.package-lock.json" ] || [ "$ts/package-lock.json" -nt "$ts/node_modules/.package-lock.json" ]; then
  echo "ensure-peers.sh: installing the TypeScript MCP SDK (npm ci)" >&2
  (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
echo "$python"
