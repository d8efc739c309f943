# Helpers the load scripts share, sourced after they set WORK: the processes they start are
# killed (and WORK removed) on exit, and ports are waited for or checked free.

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Waits until something listens on 127.0.0.1:PORT (20 s at most).
wait_port() { # port
  for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1" >&2; return 1
}

# Fails unless every port given is free: a stale server from an earlier run would be
# measured instead.
ports_free() { # port...
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is in use (a server from an earlier run?): stop it first" >&2; exit 1
    fi
  done
}
