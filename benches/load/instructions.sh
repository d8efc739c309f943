#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable where
# wall-clock numbers are not (this machine's throughput moves 10-15% between identical runs).
#
#   bash benches/load/instructions.sh              # the release build of this tree
#   SKIFF=/path/to/skiff bash benches/load/instructions.sh   # another build, for before/after
#
# For each config (a bare route, and the full stack: an HTTPRoute with two rules, a 90/10
# split, retries, a breaker, timeouts and a concurrency limit), Skiff runs under callgrind
# with instrumentation off; after a warm-up of WARM requests it is switched on, N requests
# are sent (h2load --h1, 16 connections, bounded by count), and the total is divided by N.
# benches/load/layers.py then splits the counts by layer (the source file each instruction's
# code is in). Prints a Markdown section for benches/RESULTS.md; progress goes to stderr.
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
WARM=${WARM:-500}
WORK=$(mktemp -d /tmp/skiff-instr.XXXXXX)
log() { echo "[instr] $*" >&2; }

command -v h2load >/dev/null || { apt-get update -qq >/dev/null && apt-get install -y -qq nghttp2-client >/dev/null; }
command -v valgrind >/dev/null || { apt-get update -qq >/dev/null && apt-get install -y -qq valgrind >/dev/null; }
if [ -z "${SKIFF:-}" ]; then
  log "building Skiff (release)"
  cargo build --release -q -p skiff
  SKIFF=$(pwd)/target/release/skiff
fi

. "$(pwd)/benches/load/lib.sh"

"$SKIFF" bench-backend --listen 127.0.0.1:19000 >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_port 19000

head() { cat <<YAML
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: bench
  workers: 1
  outbound: {listen: 127.0.0.1:19140}
  inbound: {listen: 127.0.0.1:19143, appPort: 19000}
  admin: {listen: 127.0.0.1:19191}
  services:
YAML
}
{ head; echo "    backend: {endpoints: [127.0.0.1:19000]}"; } > "$WORK/bare.yaml"
. benches/load/full-stack.sh
{ head; echo "$FULL_STACK_SERVICES"; full_stack_route; } > "$WORK/full.yaml"

TOTALS=""
for config in bare full; do
  out="$WORK/callgrind.$config"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$SKIFF" run --config "$WORK/$config.yaml" >"$WORK/$config.log" 2>&1 &
  pid=$!
  wait_port 19140
  h2load --h1 -n "$WARM" -c 16 --connect-to=127.0.0.1:19140 http://backend/api/x >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  codes=$(h2load --h1 -n "$N" -c 16 --connect-to=127.0.0.1:19140 http://backend/api/x | grep -E '^status codes:')
  log "$config: $codes"
  grep -q "status codes: $N 2xx" <<<"$codes" || { echo "not every request succeeded under callgrind: $codes" >&2; exit 1; }
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  total=$(cat "$out"* | awk '/^summary:/ {s += $2} END {print s}')
  TOTALS+="- $config: $((total / N)) instructions per request ($total over $N requests)"$'\n'
done
echo "## Instructions per request, by layer (callgrind)"
echo
echo "\`bash benches/load/instructions.sh\`: user-space instructions per proxied request, counted by"
echo "callgrind over $N requests after a $WARM-request warm-up (h2load --h1 -c16); repeatable to about"
echo "0.3% for the same binary. Each instruction is charged to the source file its code is in,"
echo "inlined code included (\`benches/load/layers.py\`); \`skiff: X\` is the folder of that name."
echo "Measure a change against this table rather than against req/s."
echo
echo -n "$TOTALS"
echo
python3 benches/load/layers.py --requests "$N" bare="$WORK/callgrind.bare" full="$WORK/callgrind.full"
