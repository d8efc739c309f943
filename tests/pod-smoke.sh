#!/usr/bin/env bash
# Pod-level smoke test: Skiff injected into a Deployment, run as a pod by podman.
#
#   bash tests/pod-smoke.sh [BINARY]      # default: $CARGO_TARGET_DIR (or target)/debug/skiff, built if missing
#
# 1. Packages BINARY into an image with buildah (FROM scratch: the binary, plus the shared
#    libraries it links when it is not static), tagged localhost/skiff:smoke.
# 2. `skiff inject` adds the sidecar to an example Deployment (its app is the same image
#    running `skiff bench-backend` on 127.0.0.1:8080, reachable only inside the pod).
# 3. Adapts the output to what podman 4.3's `kube play` supports, saying what it changes:
#    no native sidecars (the sidecar becomes an ordinary container, as on clusters before
#    Kubernetes 1.29), no CSI or projected volumes (emptyDirs instead: no identity, so no
#    mTLS, and no Kubernetes API token, which the smoke test's config does not use), no
#    downward API for these fields (literal values), and host ports on loopback.
# 4. `podman kube play`s it with a ConfigMap, then checks through the sidecar: inbound to
#    the app, outbound to a service, /ready and /metrics counting both.
#
# Skips (exit 0, saying why) when podman, buildah or runc is missing or podman cannot run
# containers here. Needs root. Every wait is bounded; the pod and image are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
binary=${1:-${CARGO_TARGET_DIR:-target}/debug/skiff}
work=$(mktemp -d /tmp/skiff-pod-smoke.XXXXXX)

skip() {
    echo "pod smoke test SKIPPED: $*"
    exit 0
}

for tool in podman buildah runc; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (apt-get install podman buildah runc)"
done
python=/usr/bin/python3
"$python" -c 'import yaml' 2>/dev/null || skip "python3-yaml is not installed"

# crun (podman's default runtime) fails here on rlimits and cgroups; runc with lowered
# ulimits works.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

cleanup() {
    podman kube down "$work/pod.yaml" >/dev/null 2>&1 || true
    podman rmi -f localhost/skiff:smoke >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

podman info >/dev/null 2>&1 || skip "podman cannot run here ($(podman info 2>&1 | tail -1))"

if [ ! -x "$binary" ]; then
    cargo build -p skiff
fi

# 1. The image.
mkdir -p "$work/rootfs"
cp "$binary" "$work/rootfs/skiff"
for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true); do
    mkdir -p "$work/rootfs$(dirname "$lib")"
    cp -L "$lib" "$work/rootfs$lib"
done
cat >"$work/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
USER 2102:2102
ENTRYPOINT ["/skiff"]
EOF
buildah bud --quiet --isolation chroot -t localhost/skiff:smoke "$work" >/dev/null
echo "image: $(podman image inspect localhost/skiff:smoke --format '{{.Size}}') bytes"

# 2. The workload, injected.
cat >"$work/app.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: smoke}
spec:
  replicas: 1
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      containers:
      - name: app
        image: localhost/skiff:smoke
        args: [bench-backend, --listen, 127.0.0.1:8080]
EOF
"$binary" inject "$work/app.yaml" --image localhost/skiff:smoke >"$work/injected.yaml"

cat >"$work/configmap.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata: {name: skiff-config}
data:
  skiff.yaml: |
    apiVersion: skiff.dev/v1alpha1
    kind: Proxy
    spec:
      namespace: smoke
      # Published ports reach the pod's interface, not its loopback.
      outbound: {listen: 0.0.0.0:4140}
      inbound: {listen: 0.0.0.0:4143, appPort: 8080}
      admin: {listen: 0.0.0.0:4191}
      services:
        app:
          endpoints: [127.0.0.1:8080]
EOF

# 3. What podman 4.3 cannot play, adapted; free loopback ports for the published ones.
read -r out_port in_port admin_port < <("$python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
"$python" - "$work/injected.yaml" "$work/pod.yaml" "$out_port" "$in_port" "$admin_port" <<'EOF'
import sys, yaml
src, dst, out_port, in_port, admin_port = sys.argv[1:]
docs = list(yaml.safe_load_all(open(src)))
for doc in docs:
    spec = doc["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        for kind in ("csi", "projected"):
            if kind in volume:
                del volume[kind]
                volume["emptyDir"] = {}
    sidecars = [c for c in spec["initContainers"] if c.get("restartPolicy") == "Always"]
    assert [c["name"] for c in sidecars] == ["skiff"], "inject made a native sidecar"
    spec["initContainers"] = [c for c in spec["initContainers"] if c not in sidecars]
    if not spec["initContainers"]:
        del spec["initContainers"]
    values = {"POD_NAMESPACE": "smoke", "POD_NAME": "smoke", "POD_SERVICE_ACCOUNT": "default"}
    for c in sidecars:
        del c["restartPolicy"]
        # Downward API fields become the values a pod would get; plain values stay.
        c["env"] = [{"name": e["name"], "value": e.get("value", values.get(e["name"]))} for e in c["env"]]
        c["ports"] = [
            {"name": name, "containerPort": inner, "hostPort": int(outer), "hostIP": "127.0.0.1"}
            for name, inner, outer in [
                ("skiff-outbound", 4140, out_port),
                ("skiff-inbound", 4143, in_port),
                ("skiff-admin", 4191, admin_port),
            ]
        ]
    spec["containers"] = sidecars + spec["containers"]
yaml.safe_dump_all(docs, open(dst, "w"))
EOF

# 4. Play it and call through the sidecar.
podman kube play --configmap "$work/configmap.yaml" "$work/pod.yaml" >"$work/play.log" 2>&1 \
    || { cat "$work/play.log"; echo "pod smoke test FAILED: podman kube play"; exit 1; }
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
        podman logs smoke-pod-0-skiff 2>&1 | tail -20
        echo "pod smoke test FAILED: Skiff never became ready"
        exit 1
    fi
    sleep 0.2
done

fail() {
    echo "pod smoke test FAILED: $*"
    podman logs smoke-pod-0-skiff 2>&1 | tail -20
    exit 1
}
inbound=$(curl -s --max-time 10 "http://127.0.0.1:$in_port/")
[ "$inbound" = "hello from the demo app" ] || fail "inbound answered '$inbound'"
outbound=$(curl -s --max-time 10 -H 'Host: app' "http://127.0.0.1:$out_port/")
[ "$outbound" = "hello from the demo app" ] || fail "outbound answered '$outbound'"
metrics=$(curl -s --max-time 10 "http://127.0.0.1:$admin_port/metrics")
grep -q '^request_total{namespace="smoke",pod="smoke",direction="inbound",.*target_addr="127.0.0.1:8080".* 1$' <<<"$metrics" \
    || fail "no inbound request counted"
grep -q '^request_total{.*direction="outbound",authority="app.smoke.svc.cluster.local:80".* 1$' <<<"$metrics" \
    || fail "no outbound request counted"
user=$(podman top smoke-pod-0-skiff huser user | tail -1)
echo "sidecar runs as: $user"
echo "pod smoke test passed: inbound and outbound through the sidecar, counted in /metrics"
