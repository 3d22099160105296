#!/usr/bin/env bash
# Renders Envoy templates: replaces every ${…} placeholder with the environment variable of that
# name. Several templates are rendered one after the other (envoy/envoy.yaml, then a fragment such
# as envoy/authz-mtls.yaml that continues its cluster list).
# Usage: NAME=value ... envoy/render.sh [template...] > out.yaml
# Fails (exit 64) naming any placeholder whose variable is unset.
set -euo pipefail
[ "$#" -gt 0 ] || set -- "$(dirname "$0")/envoy.yaml"
missing=0
for name in $(cat "$@" | grep -o '\${[A-Z_][A-Z0-9_]*}' | sort -u | tr -d '${}'); do
  if [ -z "${!name+x}" ]; then
    echo "render.sh: $name is not set" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 64
python3 - "$@" <<'PY'
import os, re, sys
text = "".join(open(p).read() for p in sys.argv[1:])
sys.stdout.write(re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: os.environ[m.group(1)], text))
PY
