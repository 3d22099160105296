#!/usr/bin/env bash
# `make demo`: Envoy + mcp-authz + stand-in Entra + a sample MCP server, all on localhost.
#
# Ports (override with the environment): Envoy 8080 (DEMO_PORT), Envoy admin 9901, mcp-authz
# gRPC 19001, admin 19002, metadata 19003, the sample MCP servers github 19101 (GITHUB_PORT)
# and jira 19102 (JIRA_PORT). The stand-in Entra takes a free port. State and logs go to .demo/.
# Ctrl-C stops everything.
#
# Envoy has no hand-written route: mcp-authz serves its routes and clusters (xDS) from the
# servers' `upstream` in deploy/examples/policy.yaml, each server on its own port.
# `--check` runs the sample requests, verifies each answer, and exits (0 when all held).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/demo}
ENVOY_BIN=${ENVOY_BIN:-envoy}
DEMO_PORT=${DEMO_PORT:-8080}
ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
AUTHZ_PORT=${AUTHZ_PORT:-19001}
ADMIN_PORT=${ADMIN_PORT:-19002}
METADATA_PORT=${METADATA_PORT:-19003}
GITHUB_PORT=${GITHUB_PORT:-19101}
JIRA_PORT=${JIRA_PORT:-19102}
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

TID=3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c      # the demo directory (deploy/examples/config.yaml)
API=c0ffee00-1234-4abc-8def-0123456789ab      # the API's client id (audience)
ENG_GROUP=e0000000-0000-4000-8000-0000000000e1
SALES_GROUP=50000000-0000-4000-8000-000000000051
GATEWAY_APP=6a7e3a1e-0b5c-4d2e-9f80-5a1e6a7e3a1e  # the gateway's own app (the login facade)
GATEWAY_SECRET=demo-gateway-secret
ALICE=00000000-0000-4000-8000-0000000a11ce
DEMO_PYTHON=${DEMO_PYTHON:-}
GW=http://127.0.0.1:$DEMO_PORT

STATE=${DEMO_STATE:-$ROOT/.demo}
rm -rf "$STATE"; mkdir -p "$STATE"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
# Processes start here, in this shell, so that `pids` (and the cleanup) sees them: a `$(…)`
# around the start would run it in a subshell whose `pids` is lost, orphaning the process.
start() { # name, command...; the command prints {"url": ...} first
  local name=$1; shift
  "$@" > "$STATE/$name.out" 2> "$STATE/$name.log" &
  pids+=($!)
}
read_url() { # name
  for _ in $(seq 1 200); do
    if [ -s "$STATE/$1.out" ]; then json_field url < "$STATE/$1.out"; return; fi
    sleep 0.05
  done
  echo "demo: $1 did not start; see $STATE/$1.log" >&2; exit 1
}
wait_http() { # url, what
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return; fi
    sleep 0.05
  done
  echo "demo: $2 not ready ($1); see logs in $STATE" >&2; exit 1
}

start entra-standin "$BIN/entra-standin" --tenant "$TID" \
  --api "$API,api://mcp-gateway,mcp.access" \
  --client "$GATEWAY_APP:$GATEWAY_SECRET" --redirect-uri "$GATEWAY_APP=$GW/oauth/callback"
start github-server "$BIN/mcp-sample-server" --listen "127.0.0.1:$GITHUB_PORT" --name github
start jira-server "$BIN/mcp-sample-server" --listen "127.0.0.1:$JIRA_PORT" --name jira
IDP=$(read_url entra-standin)
echo "stand-in Entra:     $IDP"
echo "sample MCP servers: github $(read_url github-server), jira $(read_url jira-server)"
# The example policy, with the servers' ports as this run chose them.
sed -e "s/127.0.0.1:19101/127.0.0.1:$GITHUB_PORT/; s/127.0.0.1:19102/127.0.0.1:$JIRA_PORT/" \
  deploy/examples/policy.yaml > "$STATE/policy.yaml"
# alice (engineering) is the user who signs in at the stand-in's authorize page.
curl -fsS "$IDP/_standin/users" -H 'content-type: application/json' \
  -d "{\"tid\":\"$TID\",\"oid\":\"$ALICE\",\"upn\":\"alice@contoso.example\",\"name\":\"Alice\",\"groups\":[\"$ENG_GROUP\"]}"
curl -fsS "$IDP/_standin/signin" -H 'content-type: application/json' -d "{\"oid\":\"$ALICE\"}"

# The example config as shipped, pointed at the stand-in through environment overrides.
export MCP_AUTHZ__ENTRA__AUTHORITY="$IDP"
export MCP_AUTHZ__ENTRA__ALLOW_INSECURE_AUTHORITY=true
export MCP_AUTHZ__LISTEN__GRPC="127.0.0.1:$AUTHZ_PORT"
export MCP_AUTHZ__LISTEN__ADMIN="127.0.0.1:$ADMIN_PORT"
export MCP_AUTHZ__LISTEN__METADATA="127.0.0.1:$METADATA_PORT"
export MCP_AUTHZ__MCP__PUBLIC_BASE_URL="http://127.0.0.1:$DEMO_PORT"
export MCP_AUTHZ__LOG__FORMAT=text
export MCP_AUTHZ__POLICY__FILE="$STATE/policy.yaml"
# Envoy's routes and clusters from the policy (README "Servers from rows").
export MCP_AUTHZ__XDS__ENABLED=true
export MCP_AUTHZ__XDS__CORS_ALLOWED_ORIGINS="[${CORS_ALLOWED_ORIGINS:-http://localhost:6274}]"
# The login facade (README "Login"): the gateway's app at the stand-in, a fresh seal key.
export MCP_AUTHZ__OAUTH__CLIENT_ID=$GATEWAY_APP
export MCP_AUTHZ__OAUTH__CLIENT_SECRET=$GATEWAY_SECRET
export MCP_AUTHZ__OAUTH__API_SCOPE=api://mcp-gateway/mcp.access
MCP_AUTHZ__OAUTH__SEAL_KEYS="[\"$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')\"]"
export MCP_AUTHZ__OAUTH__SEAL_KEYS
"$BIN/mcp-authz" check-config --config deploy/examples/config.yaml | sed 's/^/check-config: /'
"$BIN/mcp-authz" serve --config deploy/examples/config.yaml 2> "$STATE/mcp-authz.log" &
pids+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" mcp-authz

ENVOY_ADMIN_PORT=$ENVOY_ADMIN_PORT ENVOY_LISTEN_ADDRESS=127.0.0.1 ENVOY_LISTEN_PORT=$DEMO_PORT \
AUTHZ_CLUSTER=mcp_authz_tcp AUTHZ_HOST=127.0.0.1 AUTHZ_PORT=$AUTHZ_PORT AUTHZ_SOCKET=$STATE/unused.sock \
METADATA_HOST=127.0.0.1 METADATA_PORT=$METADATA_PORT PUBLIC_BASE_URL="http://127.0.0.1:$DEMO_PORT" \
ENVOY_NODE_ID=demo-gateway \
  envoy/render.sh envoy/envoy-xds.yaml > "$STATE/envoy.yaml"
"$ENVOY_BIN" -c "$STATE/envoy.yaml" --disable-hot-restart --concurrency 2 -l warning 2> "$STATE/envoy.log" &
pids+=($!)
wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" Envoy

mint() { # oid, groups-json
  curl -fsS "$IDP/_standin/tokens" -H 'content-type: application/json' \
    -d "{\"tid\":\"$TID\",\"oid\":\"$1\",\"aud\":\"$API\",\"scp\":\"mcp.access\",\"groups\":$2,\"upn\":\"$3\"}" | json_field access_token
}
TOKEN=$(mint 00000000-0000-4000-8000-000000000b0b "[\"$ENG_GROUP\"]" bob@contoso.example)
SALES_TOKEN=$(mint 00000000-0000-4000-8000-00000000ca01 "[\"$SALES_GROUP\"]" carol@contoso.example)
echo "$TOKEN" > "$STATE/token"

# MCP 2026-07-28, the newest revision the SDKs speak: no initialize handshake (server/discover
# instead), the protocol version and client capabilities in every request's _meta, and the
# Mcp-Method / Mcp-Name headers that mcp-authz checks against the body.
PV=2026-07-28
META='"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"curl","version":"0"}}'
DISCOVER='{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{'"$META"'}}'
CALL_ECHO='{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},'"$META"'}}'
CALL_DELETE='{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_repository","arguments":{"name":"prod"},'"$META"'}}'
LIST='{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{'"$META"'}}'
# The revision before it, with its initialize handshake: still served.
INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
H=(-H 'content-type: application/json' -H 'accept: application/json, text/event-stream')
H26=("${H[@]}" -H "mcp-protocol-version: $PV")

cat <<EOT

The gateway is up on $GW (Envoy → mcp-authz → the sample MCP servers, github on
:$GITHUB_PORT and jira on :$JIRA_PORT, routed from the policy's rows; see
curl -s http://127.0.0.1:$ADMIN_PORT/status for the routes mcp-authz serves Envoy).

A token for bob (engineering group) is in .demo/token. These requests speak MCP $PV.
bob asks the server what it offers (allowed):

  curl -i $GW/mcp/github -H "authorization: Bearer \$(cat .demo/token)" \\
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\
    -H 'mcp-protocol-version: $PV' -H 'mcp-method: server/discover' \\
    -d '$DISCOVER'

Without the token it is 401 with a WWW-Authenticate pointing at the metadata:
  curl -i $GW/mcp/github -H 'content-type: application/json' -d '$DISCOVER'
  curl -s $GW/.well-known/oauth-protected-resource/mcp/github

Calling the denied tool delete_repository is 403 (tool_denied):
  curl -i $GW/mcp/github -H "authorization: Bearer \$(cat .demo/token)" -H 'content-type: application/json' \\
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: $PV' \\
    -H 'mcp-method: tools/call' -H 'mcp-name: delete_repository' -d '$CALL_DELETE'

bob's tools/list holds only the tools he may call (delete_repository is filtered out):
  curl -s $GW/mcp/github -H "authorization: Bearer \$(cat .demo/token)" -H 'content-type: application/json' \\
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: $PV' \\
    -H 'mcp-method: tools/list' -d '$LIST'

The servers bob may use (the server catalog):
  curl -s $GW/mcp -H "authorization: Bearer \$(cat .demo/token)"

An MCP client needs nothing but this URL: it discovers the gateway as its authorization
server, registers, and sends you through the consent page and Entra's sign-in:

  $GW/mcp/github

(e.g. MCP Inspector: Transport "Streamable HTTP", that URL, "Connect"; the stand-in signs you
in as alice.) The Python SDK's OAuth client does that below.

Logs: .demo/*.log. Ctrl-C stops everything.
EOT

status() { curl -s -o "$STATE/last.body" -D "$STATE/last.headers" -w '%{http_code}' "$@"; }
failed=0
expect() { # want, label, curl args...
  local want=$1 label=$2; shift 2
  local got; got=$(status "$@")
  if [ "$got" = "$want" ]; then echo "  ok   $label → $got"; else echo "  FAIL $label → $got (want $want)"; cat "$STATE/last.body"; echo; failed=1; fi
}
echo
echo "Running the sample requests:"
expect 200 "bob discovers /mcp/github ($PV)" "$GW/mcp/github" "${H26[@]}" -H 'mcp-method: server/discover' -H "authorization: Bearer $TOKEN" -d "$DISCOVER"
expect 200 "bob calls echo ($PV)" "$GW/mcp/github" "${H26[@]}" -H 'mcp-method: tools/call' -H 'mcp-name: echo' -H "authorization: Bearer $TOKEN" -d "$CALL_ECHO"
expect 401 "no token" "$GW/mcp/github" "${H26[@]}" -d "$DISCOVER"
grep -qi '^www-authenticate: Bearer resource_metadata=' "$STATE/last.headers" || { echo "  FAIL 401 without WWW-Authenticate"; failed=1; }
expect 403 "bob calls delete_repository" "$GW/mcp/github" "${H26[@]}" -H 'mcp-method: tools/call' -H 'mcp-name: delete_repository' -H "authorization: Bearer $TOKEN" -d "$CALL_DELETE"
expect 403 "carol (sales) on /mcp/github" "$GW/mcp/github" "${H26[@]}" -H 'mcp-method: server/discover' -H "authorization: Bearer $SALES_TOKEN" -d "$DISCOVER"
expect 200 "carol (sales) on /mcp/jira" "$GW/mcp/jira" "${H26[@]}" -H 'mcp-method: server/discover' -H "authorization: Bearer $SALES_TOKEN" -d "$DISCOVER"
expect 200 "bob initializes with 2025-11-25 (the older revision)" "$GW/mcp/github" "${H[@]}" -H "authorization: Bearer $TOKEN" -d "$INIT"
expect 200 "protected-resource metadata" "$GW/.well-known/oauth-protected-resource/mcp/github"
expect 200 "bob lists the tools" "$GW/mcp/github" "${H26[@]}" -H 'mcp-method: tools/list' -H "authorization: Bearer $TOKEN" -d "$LIST"
if grep -q delete_repository "$STATE/last.body" || ! grep -q '"echo"' "$STATE/last.body"; then
  echo "  FAIL bob's tools/list is not filtered:"; cat "$STATE/last.body"; echo; failed=1
else
  echo "  ok   bob's list holds echo, not delete_repository"
fi
# Each server on its own port, from its row alone: jira's requests reached the jira server.
jira_seen=$(curl -fsS "http://127.0.0.1:$JIRA_PORT/_received" | python3 -c 'import json,sys; print(sum(r["path"].startswith("/mcp/jira") for r in json.load(sys.stdin)))')
github_saw_jira=$(curl -fsS "http://127.0.0.1:$GITHUB_PORT/_received" | python3 -c 'import json,sys; print(sum(r["path"].startswith("/mcp/jira") for r in json.load(sys.stdin)))')
if [ "$jira_seen" -ge 1 ] && [ "$github_saw_jira" = 0 ]; then
  echo "  ok   /mcp/jira reached the jira server on :$JIRA_PORT (a route from its row; the github server saw none of it)"
else
  echo "  FAIL /mcp/jira: the jira server saw $jira_seen requests, the github server $github_saw_jira"; failed=1
fi
expect 200 "bob's server catalog" "$GW/mcp" -H "authorization: Bearer $TOKEN"
grep -q '"name":"github"' "$STATE/last.body" || { echo "  FAIL the catalog does not name github:"; cat "$STATE/last.body"; echo; failed=1; }

# A full login with the official Python SDK's OAuth client: discovery, registration, the consent
# page (answered by the script as a user would), Entra's sign-in, the token, tools, a refresh.
if [ -n "$DEMO_PYTHON" ]; then
  echo
  echo "Signing in with the Python MCP SDK's OAuth client (tests/peers/python/oauth_client.py):"
  "$DEMO_PYTHON" tests/peers/python/oauth_client.py "$GW/mcp/github" approve > "$STATE/login.json" 2> "$STATE/login.log" || true
  if python3 - "$STATE/login.json" "$ALICE" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
alice = sys.argv[2] in (r.get("whoami") or "")
ok = (r.get("consent_page") and r.get("initialized") and r.get("echo") == "hello from python"
      and alice and r.get("refreshed") and r.get("replayed_refresh", {}).get("error") == "invalid_grant")
print(f"  {'ok  ' if ok else 'FAIL'} registered as {r.get('client_id')}, consent approved, the upstream sees alice: {alice}")
print(f"  {'ok  ' if ok else 'FAIL'} tools {r.get('tools')}; echo said {r.get('echo')!r}; delete_repository refused: {not r.get('delete', {}).get('ok', True)}")
print(f"  {'ok  ' if ok else 'FAIL'} refreshed: {r.get('refreshed')}; the used refresh token replayed: {r.get('replayed_refresh')}")
if r.get("error"):
    print(f"  FAIL {r['error']}")
sys.exit(0 if ok else 1)
PY
  then :; else failed=1; cat "$STATE/login.log"; fi
else
  echo
  echo "  (the Python MCP SDK is not installed: DEMO_PYTHON unset, no login shown)"
fi

if [ "$CHECK" = 1 ]; then
  [ "$failed" = 0 ] && echo "demo check passed" || echo "demo check FAILED"
  exit "$failed"
fi
echo
echo "Press Ctrl-C to stop."
wait
