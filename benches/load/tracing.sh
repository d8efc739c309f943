#!/usr/bin/env bash
# What tracing costs on the data path: one proxy (one worker, CPU 1, beside the bench
# backend) loaded by wrk -t1 -c64 (CPU 0) with tracing off; on with a sampling ratio of 0;
# on with 1% and with 100% of requests sampled and exported to a real OTLP receiver
# (tests/otlp/receiver.py, which decodes with the official protobuf definitions; it runs on
# CPU 0 beside wrk, and at 100% it cannot keep up, so spans are dropped and counted); and on
# with 100% sampled and a collector that accepts connections and never answers. Rounds are
# interleaved; medians of REPS. Prints a Markdown table for benches/RESULTS.md.
#
#   bash benches/load/tracing.sh            # REPS=3 SECS=8 by default
#
# Loopback only; every load is bounded by -d.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REPS=${REPS:-3}
SECS=${SECS:-8}
WORK=$(mktemp -d)
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
python3 -c 'import opentelemetry.proto' 2>/dev/null || python3 -m pip install -q opentelemetry-proto

cargo build --release -q -p skiff
SKIFF=$ROOT/target/release/skiff
if [ "$(nproc)" -ge 2 ]; then SRV="taskset -c 1"; GEN="taskset -c 0"; else SRV=""; GEN=""; fi

. "$ROOT/benches/load/lib.sh"
ports_free 19000 19140 19141 19142 19143 19144 19191 19192 19193 19194 19195 19400

$SRV "$SKIFF" bench-backend --listen 127.0.0.1:19000 >"$WORK/backend.log" 2>&1 & PIDS+=($!)
wait_port 19000
# The receiver runs on the load generator's core, so it does not take the proxy's.
$GEN python3 "$ROOT/tests/otlp/receiver.py" >"$WORK/receiver.out" 2>&1 & PIDS+=($!)
for _ in $(seq 200); do grep -q listening "$WORK/receiver.out" 2>/dev/null && break; sleep 0.05; done
RECEIVER=$(awk '/listening/ {print $2}' "$WORK/receiver.out")
# A collector that accepts and never answers.
python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 19400)); s.listen(1024); held = []
while True:
    held.append(s.accept()[0])
' >/dev/null 2>&1 & PIDS+=($!)
wait_port 19400

config() { # name outbound admin tracing-yaml
  cat > "$WORK/$1.yaml" <<YAML
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  workers: 1
  outbound: {listen: 127.0.0.1:$2}
  inbound: {listen: 127.0.0.1:$(( $2 + 1000 )), appPort: 19000}
  admin: {listen: 127.0.0.1:$3}
$4
  services:
    backend: {endpoints: [127.0.0.1:19000]}
YAML
}
config off 19140 19191 ""
config ratio0 19141 19192 "  tracing: {collector: 'http://127.0.0.1:19400', sampling: 0}"
config onepct 19144 19195 "  tracing: {collector: 'http://127.0.0.1:$RECEIVER', sampling: 0.01}"
config exported 19142 19193 "  tracing: {collector: 'http://127.0.0.1:$RECEIVER', sampling: 1}"
config silent 19143 19194 "  tracing: {collector: 'http://127.0.0.1:19400', sampling: 1, exportTimeout: 1s}"
declare -A PORT=([off]=19140 [ratio0]=19141 [onepct]=19144 [exported]=19142 [silent]=19143)
declare -A ADMIN=([off]=19191 [ratio0]=19192 [onepct]=19195 [exported]=19193 [silent]=19194)
# The order of each round; TARGETS="ratio0 off" checks that order does not decide.
read -r -a TARGETS <<<"${TARGETS:-off ratio0 onepct exported silent}"
for t in "${TARGETS[@]}"; do
  $SRV "$SKIFF" run --config "$WORK/$t.yaml" >"$WORK/$t.log" 2>&1 & PIDS+=($!)
  wait_port "${PORT[$t]}"
done

declare -A RPS
for rep in $(seq "$REPS"); do
  for t in "${TARGETS[@]}"; do
    out=$($GEN wrk -t1 -c64 -d"${SECS}s" -H "Host: backend" "http://127.0.0.1:${PORT[$t]}/")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    RPS[$t]="${RPS[$t]:-} $rps"
    echo "rep $rep $t: $rps req/s" >&2
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
metric() { # admin name
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($0, n) == 1 {s += $NF} END {printf "%d", s}'
}
echo "| tracing | req/s (median of $REPS) | vs off | spans exported | dropped: queue-full | dropped: export-failed |"
echo "|---|---|---|---|---|---|"
base=$(median "${RPS[off]}")
for t in "${TARGETS[@]}"; do
  m=$(median "${RPS[$t]}")
  a=${ADMIN[$t]}
  echo "| $t | $m | $(awk -v m="$m" -v b="$base" 'BEGIN {printf "%.2f", m / b}') | $(metric "$a" skiff_trace_spans_exported_total) | $(metric "$a" 'skiff_trace_spans_dropped_total{reason="queue-full"}') | $(metric "$a" 'skiff_trace_spans_dropped_total{reason="export-failed"}') |"
done
