#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, on loopback, in a directory of its own.
#   tests/env/postgres.sh start DIR   → prints the admin URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   tests/env/postgres.sh stop DIR
#   tests/env/postgres.sh resume DIR  → starts a stopped server again on its port (outage tests)
# Installs Debian's postgresql when no server binaries are found. Runs the server as the
# `postgres` user when invoked as root (PostgreSQL refuses to run as root).
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
BIN=$(bindir || true)
case "$cmd" in
  start)
    if [ -z "$BIN" ]; then
      echo "postgres.sh: installing postgresql (Debian)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
      BIN=$(bindir)
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_pg "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo "$port" > "$dir/port"
    as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >&2 || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  resume)
    port=$(cat "$dir/port")
    as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >&2 || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -d "$dir/data" ] && as_pg "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    ;;
  *) echo "usage: $0 start|stop|resume DIR" >&2; exit 64 ;;
esac
