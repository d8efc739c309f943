#!/usr/bin/env python3
"""Skiff's cost curves: how CPU per request and memory grow as the mesh grows.

run.sh measures one small config, but a sidecar in a real mesh carries many routes,
services, endpoints and client connections. This sweeps each of those sizes, with a fresh
Skiff (one worker) per point, and shows whether the cost stays flat or grows:

    python3 benches/load/curves.py --skiff target/release/skiff --out benches [--quick]

  1. instructions per request (callgrind: repeatable on a noisy machine) and CPU s per 100k
     requests (wrk) vs HTTPRoute rules on one service;
  2. RSS vs services;  3. RSS vs endpoints of one service;  4. RSS vs open client connections.

Stdout gets a Markdown section (`## Cost curves`) with one table and one PNG (written into
--out) per curve; progress goes to stderr. Needs valgrind, h2load, wrk and matplotlib. Every
process started here is killed on exit, error or Ctrl-C; traffic stays on 127.0.0.0/8 and
every load loop is bounded in count and time. --quick shortens the runs for trying it out.
"""
import argparse, collections, glob, http.client, os, re, resource, selectors, shutil, signal
import socket, struct, subprocess, sys, tempfile, time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Skiff's listeners here: 19700-19799, clear of run.sh's, so both may share the backend.
OUT, IN, ADMIN = 19740, 19743, 19791
NPROC = os.cpu_count() or 1
HZ = os.sysconf("SC_CLK_TCK")
MAX_CONFIG = 4 << 20  # Skiff refuses a larger config file whole
PROCS = []  # everything started here and still running, killed in main's finally
ARGS = WORK = None


def log(*msg):
    print("[curves]", *msg, file=sys.stderr, flush=True)


def child_setup(cpu):
    # Servers on CPU 1 and load generators on CPU 0 (as run.sh's taskset does), so they do not
    # share a core; every child gets the hard limit of open files (10,000 connections need it).
    def setup():
        if cpu is not None and NPROC >= 2:
            os.sched_setaffinity(0, {cpu})
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return setup


def start(cmd, name, cpu=1):
    with open(os.path.join(WORK, name + ".log"), "ab") as f:
        # A session of its own: a Ctrl-C reaches only this script, whose finally stops it.
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=child_setup(cpu), start_new_session=True)
    p.name = name
    PROCS.append(p)
    return p


def stop(p, grace=10):
    # SIGTERM first: callgrind writes its last dump only when the process exits normally.
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def run(cmd, timeout, cpu=0):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=child_setup(cpu))
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout


def listening(host, port):
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


def wait_port(port, proc, secs=20, host="127.0.0.1"):
    # Bounded polling, as lib.sh's wait_port; a server that died says why at once.
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            with open(os.path.join(WORK, proc.name + ".log"), errors="replace") as f:
                tail = f.read()[-1500:]
            raise RuntimeError(f"{proc.name} exited ({proc.returncode}) before listening:\n{tail}")
        if listening(host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {secs} s")


def proc_kb(pid, *fields):
    with open(f"/proc/{pid}/status") as f:
        vals = dict(line.split(":", 1) for line in f)
    return [int(vals[k].split()[0]) for k in fields]


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()  # comm may hold spaces; fields after it
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14 and 15)


def config(name, services, extra="", docs=""):
    text = (f"apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  namespace: bench\n  workers: 1\n"
            f"  outbound: {{listen: 127.0.0.1:{OUT}}}\n"
            f"  inbound: {{listen: 127.0.0.1:{IN}, appPort: {BPORT}}}\n"
            f"  admin: {{listen: 127.0.0.1:{ADMIN}}}\n{extra}  services:\n{services}{docs}")
    if len(text) >= MAX_CONFIG:
        raise RuntimeError(f"{name}: config is {len(text)} bytes, over Skiff's 4 MiB limit")
    path = os.path.join(WORK, name + ".yaml")
    with open(path, "w") as f:
        f.write(text)
    run([ARGS.skiff, "check", "--config", path], 120)  # a refused config fails here, with its errors
    return path, len(text)


def ports_free():
    # A stale server from an earlier run would be measured instead.
    for port in (OUT, IN, ADMIN):
        if listening("127.0.0.1", port):
            raise RuntimeError(f"port {port} is in use (a server from an earlier run?): stop it first")


def skiff(cfg, name):
    ports_free()
    t0 = time.monotonic()
    p = start([ARGS.skiff, "run", "--config", cfg], name)
    wait_port(OUT, p, 60)
    return p, time.monotonic() - t0


def get(host, path="/", conn=None):
    # One request with http.client; returns (status, connection to reuse or None).
    try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", OUT, timeout=5)
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        r.read()
        return r.status, (None if r.will_close else conn)
    except (OSError, http.client.HTTPException) as e:
        if conn:
            conn.close()
        return type(e).__name__, None


# ---- 1. CPU per request vs routes ----

def h2load(n, path):
    out = run(["h2load", "--h1", "-n", str(n), "-c", "16", f"--connect-to=127.0.0.1:{OUT}",
               f"http://backend{path}"], timeout=900)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not ok or not codes or int(ok.group(1)) != n or int(codes.group(1)) != n:
        lines = [l for l in out.splitlines() if l.startswith(("requests:", "status codes:"))]
        raise RuntimeError(f"h2load: not all {n} requests succeeded with 2xx: {lines}")


def instructions(cfg, path, name):
    out = os.path.join(WORK, "callgrind." + name)
    ports_free()
    p = start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               ARGS.skiff, "run", "--config", cfg], name + "-callgrind")
    try:
        wait_port(OUT, p, 180)
        h2load(WARM, path)  # warm-up: pools, allocator and caches as under steady load
        run(["callgrind_control", "-i", "on", str(p.pid)], 60)
        h2load(N, path)
        run(["callgrind_control", "-d", str(p.pid)], 120)
    finally:
        stop(p, 60)
    total = 0
    for f in glob.glob(out + "*"):
        with open(f, errors="replace") as fh:
            total += sum(int(l.split()[1]) for l in fh if l.startswith("summary:"))
    return total / N


def wrk(pid, url, conns=64):
    t0 = ticks(pid)
    out = run(["wrk", "-t1", f"-c{conns}", f"-d{SECS}s", "-H", "Host: backend", url], SECS + 60)
    used = ticks(pid) - t0
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or "Socket errors" in out:
        raise RuntimeError(f"wrk {url}: errors:\n{out}")
    return used / HZ * 100_000 / n, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def curve_routes():
    rows = []
    for n in (1, 10, 100, 1000):
        log(f"routes: {n}")
        rules = "".join(f"  - matches: [{{path: {{type: PathPrefix, value: /r{i:05}/}}}}]\n"
                        f"    backendRefs: [{{name: backend}}]\n" for i in range(n))
        route = ("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: backend}\n"
                 "spec:\n  parentRefs: [{kind: Service, name: backend}]\n  rules:\n" + rules)
        cfg, _ = config(f"routes-{n}", f"    backend: {{endpoints: [{BACKEND}]}}\n", docs=route)
        path = f"/r{n - 1:05}/x"  # matches only the last rule
        ins = instructions(cfg, path, f"routes-{n}")
        p, _ = skiff(cfg, f"routes-{n}")
        try:
            cpu, rps = wrk(p.pid, f"http://127.0.0.1:{OUT}{path}")
        finally:
            stop(p)
        rows.append((n, ins, cpu, rps))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r[0] for r in rows]
    a.plot(xs, [r[1] for r in rows], "o-")
    a.set(xscale="log", xlabel="HTTPRoute rules on the service", ylabel="instructions per request (callgrind)")
    b.plot(xs, [r[2] for r in rows], "o-", color="C1")
    b.set(xscale="log", xlabel="HTTPRoute rules on the service", ylabel="CPU s per 100k requests (wrk, -c64)")
    for ax in (a, b):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=.3)
    fig.suptitle(f"Skiff CPU per proxied request vs routes (request matches the last rule); "
                 f"{NPROC} CPUs, 1 worker")
    fig.tight_layout()
    fig.savefig(os.path.join(ARGS.out, "curves-routes.png"), dpi=100)
    plt.close(fig)
    md = ["### CPU per request vs routes on one service", "",
          f"One service `backend` with an HTTPRoute of N rules, rule i matching `PathPrefix /r{{i:05}}/`; "
          f"every request matches the **last** rule (`/r{{N-1:05}}/x`), the worst case for a scan. "
          f"Instructions: callgrind, user space, {N:,} requests (h2load --h1 -c16) after {WARM} warm-up. "
          f"CPU and req/s: wrk -t1 -c64 -d{SECS}s, Skiff not under valgrind.", "",
          "| rules | instructions / request | CPU s / 100k req | req/s |", "|---|---|---|---|"]
    md += [f"| {n:,} | {ins:,.0f} | {cpu:.2f} | {rps:,.0f} |" for n, ins, cpu, rps in rows]
    return md + ["", "![instructions and CPU per request vs routes](curves-routes.png)"]


# ---- 2 and 3. RSS vs services, RSS vs endpoints ----

def rss_plot(name, xs, series, xlabel, title):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, ys in series:
        ax.plot(xs, ys, "o-", label=label)
    ax.set(xscale="log", xlabel=xlabel, ylabel="MB", title=f"{title}; {NPROC} CPUs, 1 worker")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(ARGS.out, name), dpi=100)
    plt.close(fig)


def slope(rows, i_x, i_y, unit):
    (x0, y0), (x1, y1) = [(r[i_x], r[i_y]) for r in rows[-2:]]
    return f"Between the last two points: {(y1 - y0) * 1024 / (x1 - x0):.2f} KB of RSS per {unit}."


def curve_services():
    rows = []
    for n in (10, 1000, 10000):
        log(f"services: {n}")
        svcs = "".join(f"    svc-{i:05}: {{endpoints: [{BACKEND}]}}\n" for i in range(n))
        cfg, size = config(f"services-{n}", svcs)
        p, took = skiff(cfg, f"services-{n}")
        try:
            rss0, = proc_kb(p.pid, "VmRSS")
            for i in range(10):  # one request to each of 10 services spread over the list
                status, conn = get(f"svc-{i * n // 10:05}")
                if conn:
                    conn.close()
                if status != 200:
                    raise RuntimeError(f"svc-{i * n // 10:05}: answered {status}")
            rss1, anon = proc_kb(p.pid, "VmRSS", "RssAnon")
        finally:
            stop(p)
        rows.append((n, size / 1024, took, rss0 / 1024, rss1 / 1024, anon / 1024))
    xs = [r[0] for r in rows]
    rss_plot("curves-services.png", xs, [("RSS after start", [r[3] for r in rows]),
             ("RSS after 10 requests", [r[4] for r in rows]), ("RssAnon after", [r[5] for r in rows])],
             "services in the config (one endpoint each)", "Skiff memory vs services")
    md = ["### RSS vs services", "",
          "N services `svc-NNNNN`, one endpoint each (the backend). RSS once the outbound port answers, "
          "then after one request to each of 10 services (all 200).", "",
          "| services | config KB | start s | RSS after start MB | RSS after 10 requests MB | RssAnon MB |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r[0]:,} | {r[1]:,.0f} | {r[2]:.2f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} |" for r in rows]
    return md + ["", slope(rows, 0, 3, "service") + " Start time includes the process start and the "
                 "port poll (50 ms steps).", "", "![RSS vs services](curves-services.png)"]


def endpoint(k):
    # k = 0 is the backend; the others are distinct loopback addresses nothing listens on
    # (127.1.0.1 onwards, no .0 or .255), so a pick of one of them is a fast refused connect.
    if k == 0:
        return BACKEND
    i = k - 1
    return f"127.{1 + i // 62500}.{i // 250 % 250 + 1}.{i % 250 + 1}:{BPORT}"


def curve_endpoints():
    rows = []
    for n in (10, 100, 1000, 10000, 100000):
        log(f"endpoints: {n}")
        eps = "".join(f"      - {endpoint(k)}\n" for k in range(n))
        cfg, size = config(f"endpoints-{n}", f"    backend:\n      endpoints:\n{eps}")
        p, took = skiff(cfg, f"endpoints-{n}")
        try:
            rss0, = proc_kb(p.pid, "VmRSS")
            codes, conn, deadline = collections.Counter(), None, time.monotonic() + 120
            for _ in range(200):  # bounded in count and time
                if time.monotonic() > deadline:
                    raise RuntimeError("endpoints: 200 requests took over 120 s")
                status, conn = get("backend", conn=conn)
                codes[status] += 1
            if conn:
                conn.close()
            rss1, anon = proc_kb(p.pid, "VmRSS", "RssAnon")
        finally:
            stop(p)
        rows.append((n, size / 1024, took, rss0 / 1024, rss1 / 1024, anon / 1024, codes))
    xs = [r[0] for r in rows]
    rss_plot("curves-endpoints.png", xs, [("RSS after start", [r[3] for r in rows]),
             ("RSS after 200 requests", [r[4] for r in rows]), ("RssAnon after", [r[5] for r in rows])],
             "endpoints of the one service", "Skiff memory vs endpoints of one service")
    md = ["### RSS vs endpoints", "",
          "One service `backend` with N endpoints: the backend and N-1 loopback addresses nothing listens "
          "on (127.1.x.y), so most picks answer 502 `upstream-connect` at large N. RSS once the outbound "
          "port answers, then after 200 requests to the service (one at a time, default p2c balancer).", "",
          "| endpoints | config KB | start s | RSS after start MB | RSS after 200 requests MB | RssAnon MB | 200 OK of 200 | other answers |",
          "|---|---|---|---|---|---|---|---|"]
    for n, kb, took, r0, r1, anon, codes in rows:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=str) if k != 200) or "-"
        md.append(f"| {n:,} | {kb:,.0f} | {took:.2f} | {r0:.1f} | {r1:.1f} | {anon:.1f} | {codes[200]} | {other} |")
    return md + ["", slope(rows, 0, 3, "endpoint"), "", "![RSS vs endpoints](curves-endpoints.png)"]


# ---- 4. RSS vs open connections ----

REQ = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n"
LINGER0 = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left to crowd later points


def open_idle(n, secs=120, window=256):
    """n keep-alive connections, each answered once and left open; at most `window` in
    progress at a time, so the listen backlog never overflows into SYN retries."""
    sel, socks, buf = selectors.DefaultSelector(), [], {}
    codes, done, deadline = collections.Counter(), 0, time.monotonic() + secs
    try:
        while done < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} connections answered in {secs} s")
            while len(socks) < n and len(socks) - done < window:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                s.setblocking(False)
                socks.append(s)
                s.connect_ex(("127.0.0.1", OUT))
                buf[s] = b""
                sel.register(s, selectors.EVENT_WRITE)
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                if key.events == selectors.EVENT_WRITE:  # connected (or failed)
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise RuntimeError(f"connect: {os.strerror(err)}")
                    s.send(REQ)  # 33 bytes: always fits the empty send buffer
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
                if not data:
                    raise RuntimeError(f"a connection closed before its answer ({done} answered)")
                buf[s] += data
                head, sep, body = buf[s].partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    codes[int(head.split()[1])] += 1
                    sel.unregister(s)
                    done += 1
        return socks, codes
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        sel.close()


def curve_connections():
    rows = []
    cfg, _ = config("connections", f"    backend: {{endpoints: [{BACKEND}]}}\n",
                    extra="  limits: {maxConnections: 20000}\n")
    for n in (10, 100, 1000, 10000):
        log(f"connections: {n}")
        p, _ = skiff(cfg, f"connections-{n}")
        socks = []
        try:
            rss0, = proc_kb(p.pid, "VmRSS")
            socks, codes = open_idle(n)
            if codes[200] != n:
                raise RuntimeError(f"connections: answers {dict(codes)}")
            rss1, anon = proc_kb(p.pid, "VmRSS", "RssAnon")
        finally:
            for s in socks:
                s.close()
            stop(p)
        rows.append((n, rss0 / 1024, rss1 / 1024, anon / 1024, (rss1 - rss0) / n))
    log("connections: 1,000 busy (wrk)")
    p, _ = skiff(cfg, "connections-busy")
    try:
        w = start(["wrk", "-t1", "-c1000", "-d4s", "-H", "Host: backend", f"http://127.0.0.1:{OUT}/"],
                  "wrk-busy", cpu=0)
        time.sleep(2)  # sampling mid-run, not waiting for readiness
        busy, = proc_kb(p.pid, "VmRSS")
        w.wait(60)
        PROCS.remove(w)
        hwm, = proc_kb(p.pid, "VmHWM")
    finally:
        stop(p)
    with open(os.path.join(WORK, "wrk-busy.log")) as f:
        wout = f.read()
    errs = re.search(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", wout)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [r[0] for r in rows]
    ax.plot(xs, [r[2] for r in rows], "o-", label="RSS, all open and answered (idle)")
    ax.plot(xs, [r[3] for r in rows], "o--", label="RssAnon (idle)")
    ax.plot([1000], [busy / 1024], "s", label="RSS, 1,000 busy (wrk), at 2 s")
    ax.plot([1000], [hwm / 1024], "^", label="peak (VmHWM), 1,000 busy")
    ax.set(xscale="log", xlabel="open client connections (HTTP/1.1 keep-alive)", ylabel="MB",
           title=f"Skiff memory vs open connections; {NPROC} CPUs, 1 worker")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(ARGS.out, "curves-connections.png"), dpi=100)
    plt.close(fig)
    md = ["### RSS vs open connections", "",
          "Bare config (one service `backend`, `limits.maxConnections: 20000`). Each connection sends one "
          "`GET /` (answered 200) and then stays open, idle; RSS is read once all have been answered.", "",
          "| connections | RSS before MB | RSS with all open MB | RssAnon MB | KB per connection |",
          "|---|---|---|---|---|"]
    md += [f"| {n:,} | {r0:.1f} | {r1:.1f} | {anon:.1f} | {per:.1f} |" for n, r0, r1, anon, per in rows]
    md += ["", f"Busy: 1,000 connections under `wrk -t1 -c1000 -d4s`: RSS {busy / 1024:.1f} MB at 2 s, "
           f"peak (VmHWM) {hwm / 1024:.1f} MB" + (f"; wrk reported `{errs.group(0)}`." if errs else "."),
           "", "![RSS vs open connections](curves-connections.png)"]
    return md


def main():
    global ARGS, WORK, N, WARM, SECS, BACKEND, BPORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skiff", default="target/release/skiff")
    ap.add_argument("--out", default="benches", help="directory for the PNGs")
    ap.add_argument("--backend", default="127.0.0.1:19000", help="the backend (started here if nothing listens)")
    ap.add_argument("--quick", action="store_true", help="shorter runs, for trying the script out")
    ARGS = ap.parse_args()
    ARGS.skiff = os.path.abspath(ARGS.skiff)
    N, WARM, SECS = (500, 200, 3) if ARGS.quick else (2000, 500, 10)
    BACKEND = ARGS.backend
    bhost, bport = BACKEND.rsplit(":", 1)
    BPORT = int(bport)
    if not bhost.startswith("127."):
        sys.exit("--backend must be a loopback address (127.0.0.0/8)")
    for tool in ("valgrind", "callgrind_control", "h2load", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt: valgrind, nghttp2-client, wrk)")
    os.makedirs(ARGS.out, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process opens 10,000 sockets
    if hard < 11000:
        sys.exit(f"the hard limit of open files is {hard}: 10,000 connections need more")
    # SIGTERM as Ctrl-C: unwind through the finally below, which stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK = tempfile.mkdtemp(prefix="skiff-curves.")
    began = time.monotonic()
    try:
        if not listening(bhost, BPORT):
            log(f"starting the backend on {BACKEND}")
            wait_port(BPORT, start([ARGS.skiff, "bench-backend", "--listen", BACKEND], "backend"), host=bhost)
        md = ["## Cost curves", "",
              f"Written by `python3 benches/load/curves.py{' --quick' if ARGS.quick else ''}` on "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {NPROC} CPUs, Skiff with one worker, "
              "a fresh Skiff per point" + (", Skiff and backend on CPU 1, load on CPU 0." if NPROC >= 2 else "."), ""]
        for curve in (curve_routes, curve_services, curve_endpoints, curve_connections):
            md += curve() + [""]
        print("\n".join(md).rstrip())
        log(f"done in {time.monotonic() - began:.0f} s")
    finally:
        for p in list(PROCS):
            stop(p, 5)
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
