#!/usr/bin/env bash
# What a dependency costs the `skiff` binary, commit against commit: binary size (as built,
# which is what the image ships, and stripped), crates in the build, the image, RSS idle
# with a minimal config, and a cold release build's time and peak compiler memory.
#
#   bash benches/load/dependency.sh 4fbe5ad HEAD     # before and after kube-rs (b9a3a8d)
#   COLD=0 bash benches/load/dependency.sh A B       # reuse the target dirs: no build times
#   KEEP=1 ...                                        # keep the worktrees (/tmp/skiff-worktree-SHA)
#
# Each commit is checked out in a worktree of its own under /tmp and built with
# `cargo build --release --locked -p skiff` into a target directory of its own
# (TARGET_BASE/skiff-target-COMMIT, default under /tmp). With COLD=1 (the default) that
# directory is emptied first, so the build compiles every crate (the registry's sources stay
# downloaded: no network time is counted). Build times are wall-clock on a shared machine:
# the script waits (up to QUIET_WAIT seconds) until no other cargo runs before each build,
# and reports how many of its samples during the build saw another cargo anyway.
#
# The image is the Dockerfile's final stage (FROM scratch, the binary, user 2102) built with
# buildah from the binary as built, plus the shared libraries it links (the Dockerfile's own
# build stage needs the rust:alpine image from a registry, and its `prebuilt` stage a static
# musl binary). Loopback only; every wait is bounded; what it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
[ $# -eq 2 ] || { echo "usage: $0 BEFORE AFTER (commits)" >&2; exit 2; }
COLD=${COLD:-1}
QUIET_WAIT=${QUIET_WAIT:-1800}
TARGET_BASE=${TARGET_BASE:-/tmp}
WORK=$(mktemp -d /tmp/skiff-dependency.XXXXXX)
log() { echo "[dependency] $*" >&2; }

PIDS=()
WORKTREES=()
IMAGES=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in "${IMAGES[@]}"; do buildah rmi -f "$i" >/dev/null 2>&1 || true; done
  if [ "${KEEP:-0}" != 1 ]; then
    for w in "${WORKTREES[@]}"; do git -C "$ROOT" worktree remove --force "$w" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

descends_from() { # pid ancestor
  local p=$1
  while [ "$p" -gt 1 ]; do
    [ "$p" = "$2" ] && return 0
    p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1)
  done
  return 1
}
others_cargo() { # cargo processes not started by process $1 (0: every cargo)
  local p
  for p in $(pgrep -x cargo || true); do
    descends_from "$p" "${1:-0}" || echo "$p"
  done
}
wait_quiet() {
  local deadline=$(($(date +%s) + QUIET_WAIT))
  while [ -n "$(others_cargo)" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "another cargo still runs after ${QUIET_WAIT}s; building anyway"; return; fi
    sleep 5
  done
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

for port in 19940 19943 19991; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: stop what listens there first" >&2; exit 1
  fi
done
cat >"$WORK/minimal.yaml" <<'EOF'
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: bench
  workers: 1
  outbound: {listen: 127.0.0.1:19940}
  inbound: {listen: 127.0.0.1:19943, appPort: 1}
  admin: {listen: 127.0.0.1:19991}
  services:
    backend: {endpoints: [127.0.0.1:1]}
EOF

declare -A SHA SIZE STRIPPED CRATES RSS WALL CPU PEAK BUSY IMAGE
for name in before after; do
  if [ "$name" = before ]; then ref=$1; else ref=$2; fi
  sha=$(git -C "$ROOT" rev-parse --short "$ref^{commit}")
  SHA[$name]=$sha
  tree=/tmp/skiff-worktree-$sha
  target=$TARGET_BASE/skiff-target-$sha
  if [ ! -e "$tree" ]; then git -C "$ROOT" worktree add --detach "$tree" "$sha" >/dev/null 2>&1; fi
  WORKTREES+=("$tree")

  if [ "$COLD" = 1 ]; then rm -rf "$target"; fi
  wait_quiet
  log "$name ($sha): cargo build --release --locked -p skiff into $target"
  (cd "$tree" && CARGO_TARGET_DIR=$target /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.$name" \
    cargo build --release --locked -q -p skiff) &
  build=$!
  samples=0 busy=0
  while kill -0 "$build" 2>/dev/null; do
    samples=$((samples + 1))
    if [ -n "$(others_cargo "$build")" ]; then busy=$((busy + 1)); fi
    sleep 5
  done
  wait "$build"
  read -r wall user sys peak_kb <"$WORK/time.$name"
  if [ "$COLD" = 1 ]; then
    WALL[$name]=$(awk -v s="$wall" 'BEGIN { printf "%dm%02ds", s / 60, s % 60 }')
    CPU[$name]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%dm%02ds", (u + s) / 60, (u + s) % 60 }')
    PEAK[$name]=$(awk -v k="$peak_kb" 'BEGIN { printf "%.0f", k / 1024 }')
    BUSY[$name]="$busy of $samples"
  fi

  bin=$target/release/skiff
  SIZE[$name]=$(stat -c %s "$bin")
  strip -o "$WORK/skiff.stripped.$name" "$bin"
  STRIPPED[$name]=$(stat -c %s "$WORK/skiff.stripped.$name")
  CRATES[$name]=$(cd "$tree" && cargo tree --locked -q -p skiff -e normal --prefix none \
    | sed 's/ (\*)$//; s/ (proc-macro)$//' | sort -u | wc -l)

  log "$name: idle RSS, three runs"
  runs=""
  for _ in 1 2 3; do
    "$bin" run --config "$WORK/minimal.yaml" >"$WORK/run.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://127.0.0.1:19991/ready)" = 200 ] && break
      sleep 0.1
    done
    sleep 2
    runs+="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") "
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  RSS[$name]=$(awk -v k="$(median <<<"$runs")" 'BEGIN { printf "%.1f", k / 1024 }')

  IMAGE[$name]="-"
  if command -v buildah >/dev/null && command -v podman >/dev/null; then
    ctx=$WORK/image.$name
    mkdir -p "$ctx/rootfs"
    cp "$bin" "$ctx/rootfs/skiff"
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
      mkdir -p "$ctx/rootfs$(dirname "$lib")"
      cp -L "$lib" "$ctx/rootfs$lib"
    done
    printf 'FROM scratch\nCOPY rootfs/ /\nUSER 2102:2102\nENTRYPOINT ["/skiff"]\n' >"$ctx/Containerfile"
    tag=localhost/skiff-dependency:$sha
    if buildah bud --quiet --isolation chroot -t "$tag" "$ctx" >"$WORK/buildah.log" 2>&1; then
      IMAGES+=("$tag")
      IMAGE[$name]=$(podman image inspect "$tag" --format '{{.Size}}')
    else
      log "buildah could not build the image: $(tail -1 "$WORK/buildah.log")"
    fi
  fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (a / b - 1) * 100 }'; }
cat <<EOF

Written by \`bash benches/load/dependency.sh $1 $2\` (COLD=$COLD) on $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs, $(rustc --version).

| | before (${SHA[before]}) | after (${SHA[after]}) | change |
|---|---|---|---|
| binary as built (release, line tables), MB | $(mb "${SIZE[before]}") | $(mb "${SIZE[after]}") | $(ratio "${SIZE[after]}" "${SIZE[before]}") |
| binary stripped, MB | $(mb "${STRIPPED[before]}") | $(mb "${STRIPPED[after]}") | $(ratio "${STRIPPED[after]}" "${STRIPPED[before]}") |
| crates linked (cargo tree -e normal) | ${CRATES[before]} | ${CRATES[after]} | +$((CRATES[after] - CRATES[before])) |
| image (FROM scratch: binary as built + its shared libraries), MB | $( [ "${IMAGE[before]}" = - ] && echo - || mb "${IMAGE[before]}") | $( [ "${IMAGE[after]}" = - ] && echo - || mb "${IMAGE[after]}") | $( [ "${IMAGE[before]}" = - ] && echo - || ratio "${IMAGE[after]}" "${IMAGE[before]}") |
| RSS idle, minimal config (median of 3), MB | ${RSS[before]} | ${RSS[after]} | $(ratio "${RSS[after]}" "${RSS[before]}") |
EOF
if [ "$COLD" = 1 ]; then
  cat <<EOF
| cold release build, wall | ${WALL[before]} | ${WALL[after]} | |
| cold release build, CPU (user + sys) | ${CPU[before]} | ${CPU[after]} | |
| peak memory of one compiler process, MB | ${PEAK[before]} | ${PEAK[after]} | |
| samples (every 5 s) that saw another cargo running | ${BUSY[before]} | ${BUSY[after]} | |
EOF
fi
