#!/usr/bin/env bash
# `make fuzz`: each cargo-fuzz target (fuzz/fuzz_targets) for SECONDS, with the committed seeds
# (fuzz/seeds/<target>) and a growing corpus (fuzz/corpus/<target>, not committed). Prints a
# table and writes it into BENCHMARKS.md between the fuzzing markers. A crash stops the run and
# leaves its input in fuzz/artifacts/<target>/: make it a regression test.
# This machine's toolchain is stable; libFuzzer's -Z flags are allowed with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi
export RUSTC_BOOTSTRAP=1
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v mcp-authz-fuzz)
cargo fuzz build --fuzz-dir fuzz -O >&2
rows=""
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log=$(mktemp)
  if ! cargo fuzz run --fuzz-dir fuzz -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=5 -rss_limit_mb=2048 > "$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz.sh: $t FOUND A CRASH; input in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  persec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | tr -dc 0-9)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  rows+="| \`$t\` | ${SECONDS_EACH} s | ${execs:-?} | ${persec:-?} | ${cov:-?} | $corpus | 0 |"$'\n'
  rm -f "$log"
done
table="Latest \`make fuzz\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); command: \`make fuzz FUZZ_SECONDS=$SECONDS_EACH\`):

| target | time | executions | per second | coverage (edges) | corpus | crashes |
| --- | --- | --- | --- | --- | --- | --- |
$rows"
echo "$table"
python3 - "$table" <<'PY'
import re, sys
path = "BENCHMARKS.md"
text = open(path).read()
block = "<!-- fuzz:start -->\n" + sys.argv[1] + "<!-- fuzz:end -->"
if "<!-- fuzz:start -->" in text:
    text = re.sub(r"<!-- fuzz:start -->.*?<!-- fuzz:end -->", lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## Fuzzing\n\n" + block + "\n"
open(path, "w").write(text)
PY
