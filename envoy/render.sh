#!/usr/bin/env bash
# Renders Envoy templates: replaces every ${NAME} placeholder with the environment variable of
# that name, ${NAME:-default} with it or, when it is unset or empty, the default, and
# ${NAME:origins} with the comma-separated web origins of NAME as a YAML list of exact matchers
# (`[]` when unset; '*', paths and wildcards are refused). Several
# templates are rendered one after the other (envoy/envoy.yaml, then a fragment such as
# envoy/authz-mtls.yaml that continues its cluster list).
# Usage: NAME=value ... envoy/render.sh [template...] > out.yaml
# Fails (exit 64) naming every placeholder without a default whose variable is unset, and every
# refused origin.
set -euo pipefail
[ "$#" -gt 0 ] || set -- "$(dirname "$0")/envoy.yaml"
python3 - "$@" <<'PY'
import os, re, sys
text = "".join(open(p).read() for p in sys.argv[1:])
pattern = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*)|(:origins))?\}")
origin = re.compile(r"https?://([a-z0-9.-]+|\[[0-9a-f:]+\])(:([0-9]{1,5}))?")
problems = []
missing = sorted({m.group(1) for m in pattern.finditer(text)
                  if m.group(2) is None and m.group(3) is None and m.group(1) not in os.environ})
for name in missing:
    problems.append(f"{name} is not set")

def origins(name):
    out = []
    for o in (x.strip() for x in os.environ.get(name, "").split(",")):
        if not o:
            continue
        m = origin.fullmatch(o)
        if not m or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
            problems.append(f"{name}: {o!r} is not an origin (scheme://host[:port], lower case, no '*', no path)")
            continue
        out.append('{exact: "%s"}' % o)
    return "[" + ", ".join(out) + "]"

def fill(m):
    if m.group(3) is not None:
        return origins(m.group(1))
    return os.environ.get(m.group(1)) or (m.group(2) if m.group(2) is not None else os.environ[m.group(1)])

rendered = pattern.sub(fill, text) if not missing else ""
for p in problems:
    print(f"render.sh: {p}", file=sys.stderr)
if problems:
    sys.exit(64)
sys.stdout.write(rendered)
PY
