#!/usr/bin/env bash
# Renders envoy.yaml: replaces every ${…} placeholder with the environment variable of that name.
# Usage: NAME=value ... envoy/render.sh [template] > out.yaml
# Fails (exit 64) naming any placeholder whose variable is unset.
set -euo pipefail
template=${1:-$(dirname "$0")/envoy.yaml}
missing=0
for name in $(grep -o '\${[A-Z_][A-Z0-9_]*}' "$template" | sort -u | tr -d '${}'); do
  if [ -z "${!name+x}" ]; then
    echo "render.sh: $name is not set" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 64
python3 - "$template" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
sys.stdout.write(re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: os.environ[m.group(1)], text))
PY
