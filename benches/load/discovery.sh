#!/usr/bin/env bash
# What discovery from the Kubernetes API costs one proxy in a large cluster: API connections
# and watches held, events received per change, Pod reads, and memory, with the real `skiff`
# binary against the fake API server (tests/examples/fake_apiserver.rs) on loopback.
#
#   bash benches/load/discovery.sh          # SERVICES=1000 ENDPOINTS=10 USED=20 CALLS=50
#   SERVICES=5000 USED=50 bash benches/load/discovery.sh
#
# 1. Starts Skiff with spec.discovery.kubernetes (a kubeconfig with a token, plain HTTP)
#    while the API server is not up yet, and reads its RSS idle, before any list.
# 2. Starts the fake API server with SERVICES Services of ENDPOINTS ready endpoints each
#    (NAMESPACES namespaces; the endpoints of the first USED Services are real HTTP servers
#    in the fake's process), waits for /ready, and reads RSS, connections and watches.
# 3. Calls each of the USED Services CALLS times through the outbound listener (one
#    keep-alive connection per Service), then reads them again.
# 4. Replaces one endpoint of a used Service (a new Pod, then the slice), then one of an
#    unused Service, then changes a Service object, and counts what the proxy was sent and
#    what it asked for after each.
# 5. Reads the RSS of the same binary with a config without discovery, for comparison.
#
# Prints a Markdown report. Memory, counts and the proxy's CPU time (from /proc, in 10 ms
# ticks), no wall-clock timings, so it can run beside a build. Loopback only; every wait is
# bounded; every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SERVICES=${SERVICES:-1000}
ENDPOINTS=${ENDPOINTS:-10}
NAMESPACES=${NAMESPACES:-10}
USED=${USED:-20}
CALLS=${CALLS:-50}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/skiff-discovery.XXXXXX)
TOKEN=bench-token
API=127.0.0.1:19600
FAKE_ADMIN=127.0.0.1:19601
OUT=127.0.0.1:19740
ADMIN=127.0.0.1:19791
OFF_ADMIN=127.0.0.1:19891
log() { echo "[discovery] $*" >&2; }

[ "$USED" -le "$SERVICES" ] || { echo "USED must not exceed SERVICES" >&2; exit 1; }
for tool in curl ss; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
# The first endpoint's address stands for the fake's backends.
for addr in 127.0.0.1/19600 127.0.0.1/19601 127.0.0.1/19740 127.0.0.1/19743 127.0.0.1/19791 \
  127.0.0.1/19840 127.0.0.1/19843 127.0.0.1/19891 127.64.0.1/8080; do
  if (exec 3<>"/dev/tcp/$addr") 2>/dev/null; then
    echo "${addr/\//:} is in use (a server from an earlier run?): stop it first" >&2; exit 1
  fi
done

log "building release binaries (skiff, the fake API server)"
cargo build --release -q -p skiff
cargo build --release -q -p skiff-e2e --example fake_apiserver
SKIFF=$TARGET/release/skiff
FAKE=$TARGET/release/examples/fake_apiserver

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- helpers ----
# RSS as "total (anonymous)" MB: file-backed pages are the binary's, shared between
# processes that map the same file.
rss_mb() { awk '/^VmRSS:/ {t = $2} /^RssAnon:/ {a = $2} END {printf "%.1f (%.1f)", t / 1024, a / 1024}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# Waits until the command succeeds, for at most $1 seconds.
wait_until() { # seconds description command...
  local secs=$1 what=$2; shift 2
  local deadline=$(($(date +%s) + secs))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out after ${secs}s waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1$2" || true; }
is_status() { [ "$(status_of "$2" "$3")" = "$1" ]; }
TICK_MS=$((1000 / $(getconf CLK_TCK)))
cpu_ms() { awk -v t="$TICK_MS" '{print ($14 + $15) * t}' "/proc/$1/stat"; }
# The fake's counters, as `key value` lines, and the proxy's CPU time (user + system, in
# the kernel's 10 ms ticks); a missing key is 0.
snapshot() {
  curl -sf --max-time 5 "http://$FAKE_ADMIN/counts" >"$WORK/counts.$1"
  echo "cpu.ms $(cpu_ms "$SKIFF_PID")" >>"$WORK/counts.$1"
}
count() { awk -v k="$2" '$1 == k {v = $2} END {print v + 0}' "$WORK/counts.$1"; }
delta() { echo $(($(count "$2" "$3") - $(count "$1" "$3"))); }
sum() { awk -v p="$2" 'index($1, p) == 1 {s += $2} END {print s + 0}' "$WORK/counts.$1"; }
# Watches open: Services + the route and access kinds + EndpointSlices.
watches() {
  local s e
  s=$(count "$1" watches.open.services) e=$(count "$1" watches.open.endpointslices)
  echo "$s + $(($(count "$1" watches.open) - s - e)) + $e"
}
requests() { echo "$(sum "$1" requests.list.), $(sum "$1" requests.watch.), $(count "$1" requests.get.pods)"; }
count_now_is() { snapshot now && [ "$(count now "$1")" -ge "$2" ]; }
# Established TCP connections from process $1 to the API server.
api_connections() { ss -tnpH state established "( dport = :${API##*:} )" | grep -c "pid=$1," || true; }
host_of() { printf 'svc-%04d.ns-%d' "$1" $(($1 % NAMESPACES)); }

# ---- configs ----
cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {server: 'http://$API'}
users:
- name: skiff
  user: {token: $TOKEN}
contexts:
- name: fake
  context: {cluster: fake, user: skiff, namespace: ns-0}
current-context: fake
EOF
proxy_yaml() { # outbound inbound admin extra-spec
  cat <<EOF
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: ns-0
  workers: 1
  outbound: {listen: 127.0.0.1:$1, passthrough: false}
  inbound: {listen: 127.0.0.1:$2, appPort: 1}
  admin: {listen: 127.0.0.1:$3}
$4
EOF
}
proxy_yaml 19740 19743 19791 "  discovery:
    kubernetes: {kubeconfig: $WORK/kubeconfig}" >"$WORK/discovery.yaml"
proxy_yaml 19840 19843 19891 "" >"$WORK/off.yaml"

# ---- 1. Skiff, before the API server is up ----
log "starting skiff with discovery (the API server is not up yet)"
"$SKIFF" run --config "$WORK/discovery.yaml" >"$WORK/skiff.log" 2>&1 &
SKIFF_PID=$!
PIDS+=("$SKIFF_PID")
wait_until 10 "skiff's admin listener" is_status 200 "$ADMIN" /live
is_status 503 "$ADMIN" /ready || { echo "skiff was ready before any list" >&2; exit 1; }
sleep 2
RSS_IDLE=$(rss_mb "$SKIFF_PID")
CPU_IDLE=$(cpu_ms "$SKIFF_PID")

# ---- 2. The cluster, listed ----
log "starting the fake API server: $SERVICES Services x $ENDPOINTS endpoints"
"$FAKE" --listen "$API" --admin "$FAKE_ADMIN" --token "$TOKEN" --services "$SERVICES" \
  --endpoints-per-service "$ENDPOINTS" --namespaces "$NAMESPACES" --backends "$USED" \
  >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
PIDS+=("$FAKE_PID")
fake_up() {
  grep -q '^fake API server' "$WORK/fake.log" && return 0
  kill -0 "$FAKE_PID" 2>/dev/null || { cat "$WORK/fake.log" >&2; echo "the fake API server exited" >&2; exit 1; }
  return 1
}
wait_until 120 "the fake API server" fake_up
log "$(cat "$WORK/fake.log")"
# kube-rs retries with backoff (800 ms doubling to 30 s) after the refused connections.
wait_until 90 "skiff /ready after the first list" is_status 200 "$ADMIN" /ready
wait_until 10 "the Service watch" count_now_is watches.open.services 1
sleep 2
snapshot listed
RSS_LISTED=$(rss_mb "$SKIFF_PID")
CONN_LISTED=$(api_connections "$SKIFF_PID")

# ---- 3. USED Services in use ----
log "calling $USED Services $CALLS times each"
OK=0
for i in $(seq 0 $((USED - 1))); do
  urls=()
  for _ in $(seq "$CALLS"); do urls+=(-o /dev/null "http://$OUT/"); done
  codes=$(curl -s --max-time 30 -w '%{http_code}\n' -H "Host: $(host_of "$i")" "${urls[@]}" || true)
  OK=$((OK + $(grep -c '^200$' <<<"$codes" || true)))
done
[ "$OK" -eq $((USED * CALLS)) ] || log "only $OK of $((USED * CALLS)) calls answered 200"
wait_until 10 "$USED EndpointSlice watches" count_now_is watches.open.endpointslices "$USED"
sleep 2
snapshot used
RSS_USED=$(rss_mb "$SKIFF_PID")
# The proxy's own count, where it has one.
OWN_WATCHES=$(curl -s --max-time 5 "http://$ADMIN/metrics" | awk '/^skiff_discovery_watches\{/ {sub(/.*resource="/, ""); sub(/"\}/, ""); printf "%s%s", sep, $0; sep = ", "}')
CONN_USED=$(api_connections "$SKIFF_PID")
# What the proxy holds of the cluster: connections, watches and Pod reads so far.

# ---- 4. Changes ----
changed_lines() { grep -c "Kubernetes endpoints changed.*service=$1" "$WORK/skiff.log" || true; }
log "replacing an endpoint of a used Service"
snapshot before_move
curl -sf --max-time 5 "http://$FAKE_ADMIN/move?service=svc-0000" >&2
# The proxy got the slice's event when it has read the new endpoint's Pod and applied it.
wait_until 10 "the new endpoint's Pod read" count_now_is requests.get.pods $(($(count before_move requests.get.pods) + 1))
wait_until 10 "the new endpoints applied" test "$(changed_lines svc-0000)" -ge 2
sleep 2
snapshot after_move
UNUSED=$((SERVICES - 1))
log "replacing an endpoint of an unused Service, svc-$(printf %04d $UNUSED)"
snapshot before_unused
curl -sf --max-time 5 "http://$FAKE_ADMIN/move?service=$(printf svc-%04d $UNUSED)" >&2
# Nothing to wait for: what the proxy does not watch it is not sent. Two seconds for a
# stray event to show.
sleep 2
snapshot after_unused
log "changing a Service object"
snapshot before_relabel
curl -sf --max-time 5 "http://$FAKE_ADMIN/relabel?service=$(printf svc-%04d $UNUSED)" >&2
wait_until 10 "the Service event" count_now_is watch.events.services $(($(count before_relabel watch.events.services) + 1))
sleep 2
snapshot after_relabel
RSS_END=$(rss_mb "$SKIFF_PID")
HWM_END=$(hwm_kb "$SKIFF_PID")
CONN_END=$(api_connections "$SKIFF_PID")

# ---- 5. The same binary without discovery ----
log "starting skiff without discovery"
"$SKIFF" run --config "$WORK/off.yaml" >"$WORK/off.log" 2>&1 &
OFF_PID=$!
PIDS+=("$OFF_PID")
wait_until 10 "skiff without discovery" is_status 200 "$OFF_ADMIN" /ready
sleep 2
RSS_OFF=$(rss_mb "$OFF_PID")

# ---- report ----
row() { # label snapshot-before snapshot-after
  echo "| $1 | $(delta "$2" "$3" watch.events) | $(delta "$2" "$3" watch.events.endpointslices) | $(delta "$2" "$3" watch.events.services) | $(delta "$2" "$3" requests.get.pods) | $(delta "$2" "$3" requests) | $(delta "$2" "$3" cpu.ms) |"
}
cat <<EOF

Written by \`bash benches/load/discovery.sh\` (SERVICES=$SERVICES ENDPOINTS=$ENDPOINTS NAMESPACES=$NAMESPACES USED=$USED CALLS=$CALLS) on $(date -u '+%Y-%m-%d %H:%M UTC'), $("$SKIFF" version), one worker thread.
$(sed 's/^fake API server [^ ]* ([^)]*): /Cluster: /' "$WORK/fake.log")

| state | RSS, MB (anonymous) | API connections | watches open (Services + route and access kinds + EndpointSlices) | API requests so far (list, watch, get) | proxy CPU so far (ms) |
|---|---|---|---|---|---|
| discovery off (same binary) | $RSS_OFF | 0 | 0 | - | - |
| discovery on, before the first list | $RSS_IDLE | 0 | 0 | 0 | $CPU_IDLE |
| after the first list ($SERVICES Services) | $RSS_LISTED | $CONN_LISTED | $(watches listed) | $(requests listed) | $(count listed cpu.ms) |
| $USED Services in use ($((USED * ENDPOINTS)) endpoints), $OK calls | $RSS_USED | $CONN_USED | $(watches used) | $(requests used) | $(count used cpu.ms) |
| after the changes below | $RSS_END (peak $(mb "$HWM_END")) | $CONN_END | $(watches after_relabel) | $(requests after_relabel) | $(count after_relabel cpu.ms) |

| change | events sent to the proxy | on EndpointSlice watches | on the Service watch | Pod gets | API requests | proxy CPU (ms) |
|---|---|---|---|---|---|---|
$(row "one endpoint of a used Service replaced (new Pod, slice updated)" before_move after_move)
$(row "one endpoint of an unused Service replaced" before_unused after_unused)
$(row "a Service object changed (a label)" before_relabel after_relabel)

The proxy's own gauge with $USED Services in use (skiff_discovery_watches by resource): ${OWN_WATCHES:--}.
Bookmarks sent meanwhile (one a minute per watch, as a real API server's watch cache): $(count after_relabel watch.bookmarks.services) on the Service watch, $(count after_relabel watch.bookmarks.endpointslices) on the EndpointSlice watches.
EOF
