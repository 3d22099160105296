#!/usr/bin/env bash
# Renders Envoy templates: replaces every ${NAME} placeholder with the environment variable of
# that name, and ${NAME:-default} with it or, when it is unset or empty, the default. Several
# templates are rendered one after the other (envoy/envoy.yaml, then a fragment such as
# envoy/authz-mtls.yaml that continues its cluster list).
# Usage: NAME=value ... envoy/render.sh [template...] > out.yaml
# Fails (exit 64) naming every placeholder without a default whose variable is unset.
set -euo pipefail
[ "$#" -gt 0 ] || set -- "$(dirname "$0")/envoy.yaml"
python3 - "$@" <<'PY'
import os, re, sys
text = "".join(open(p).read() for p in sys.argv[1:])
pattern = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
missing = sorted({m.group(1) for m in pattern.finditer(text)
                  if m.group(2) is None and m.group(1) not in os.environ})
for name in missing:
    print(f"render.sh: {name} is not set", file=sys.stderr)
if missing:
    sys.exit(64)
sys.stdout.write(pattern.sub(
    lambda m: os.environ.get(m.group(1)) or (m.group(2) if m.group(2) is not None else os.environ[m.group(1)]),
    text))
PY
