#!/usr/bin/env bash
# cargo deny over the workspace (deny.toml): licences, bans and sources always; advisories when
# the RustSec database can be fetched (it lives on GitHub), else skipped with a message.
# With --install, installs cargo-deny first when missing (a ~15-minute build on 2 cores, which
# is why `make test` does not: it runs this only when cargo-deny is already there).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! cargo deny --version >/dev/null 2>&1; then
  if [ "${1:-}" = "--install" ]; then
    echo "deny.sh: installing cargo-deny" >&2
    cargo install cargo-deny --locked >&2
  else
    echo "deny.sh: SKIPPED: cargo-deny is not installed (make deny installs it and runs it)"
    exit 0
  fi
fi
cargo deny --log-level error check licenses bans sources
echo "deny.sh: licences, bans and sources ok ($(cargo deny --version))"
if cargo deny --log-level error fetch >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
  echo "deny.sh: advisories ok"
else
  echo "deny.sh: SKIPPED advisories: the RustSec database (github.com/RustSec/advisory-db) cannot be fetched from here"
fi
