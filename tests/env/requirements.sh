#!/usr/bin/env bash
# Checks what `make test` or `make demo` needs from the machine before anything is built, and
# names every missing piece with the Debian package (or installer) that provides it.
# Usage: tests/env/requirements.sh test|demo|bench. Exit 1 when something is missing.
# What the scripts install themselves (PostgreSQL, Redis, promtool, wrk, python3-venv when run
# as root, Envoy and the SDKs into project-local directories) is not asked for here.
set -uo pipefail
what=${1:-test}
missing=()
need() { # command, what provides it
  command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)")
}
need cargo "the Rust toolchain: https://rustup.rs"
need cc "a C compiler for the linker and the aws-lc build: apt-get install gcc"
need python3 "apt-get install python3"
need curl "apt-get install curl"
case "$what" in
  test)
    cargo nextest --version >/dev/null 2>&1 || missing+=("cargo-nextest (cargo install cargo-nextest --locked)")
    need objdump "binutils, for the test of the binary's libraries: apt-get install binutils"
    need node "Node.js >= 20 for the TypeScript MCP SDK peers: apt-get install nodejs"
    need npm "apt-get install npm"
    ;;
  demo | bench) ;;
  *) echo "requirements.sh: test, demo or bench, not '$what'" >&2; exit 64 ;;
esac
if [ "${#missing[@]}" -gt 0 ]; then
  echo "make $what: missing from this machine:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
