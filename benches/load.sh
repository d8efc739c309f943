#!/usr/bin/env bash
# A first throughput and CPU baseline: the demo's backend reached directly and through Skiff,
# with wrk, interleaved (direct, skiff, direct, skiff, ...) and repeated. Loopback only;
# every run is bounded by wrk's duration.
#
#   bash benches/load.sh [repetitions] [seconds]
#
# Appends a section to benches/RESULTS.md. Skiff and the backend share one process (the
# demo), so CPU is read for both paths and the difference per request is Skiff's cost.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
secs=${2:-5}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -p skiff >/dev/null 2>&1

./target/release/skiff demo --workers 1 >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:4191/ready && break; sleep 0.05; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
declare -A rps cpu
run() { # name url host
  local before after out reqs
  before=$(cpu_ticks)
  out=$(wrk -t1 -c64 -d"${secs}s" -H "Host: $3" "$2")
  after=$(cpu_ticks)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps[$1]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
  cpu[$1]+="$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}') "
}
for _ in $(seq "$reps"); do
  run direct http://127.0.0.1:18081/ hello
  run skiff http://127.0.0.1:4140/ hello
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
d_rps=$(median <<<"${rps[direct]}"); s_rps=$(median <<<"${rps[skiff]}")
d_cpu=$(median <<<"${cpu[direct]}"); s_cpu=$(median <<<"${cpu[skiff]}")
{
  echo
  echo "## $(date -u +%Y-%m-%d) baseline: direct vs Skiff (HTTP/1.1, wrk -t1 -c64 -d${secs}s, ${reps} reps)"
  echo
  echo "Command: \`bash benches/load.sh $reps $secs\` on $(nproc) cores ($(uname -r)); Skiff and the"
  echo "backend in one process with one worker thread (\`skiff demo --workers 1\`)."
  echo
  echo "| path | req/s (median) | runs | CPU us/request (process) |"
  echo "|---|---|---|---|"
  echo "| direct | $d_rps | ${rps[direct]}| $d_cpu |"
  echo "| Skiff | $s_rps | ${rps[skiff]}| $s_cpu |"
  echo
  echo "Skiff's own CPU per request: about $(awk -v a="$s_cpu" -v b="$d_cpu" 'BEGIN {printf "%.1f", a - b}') us; throughput ratio $(awk -v a="$s_rps" -v b="$d_rps" 'BEGIN {printf "%.2f", a / b}')x direct."
} | tee -a benches/RESULTS.md
