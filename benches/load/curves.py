#!/usr/bin/env python3
"""Skiff's cost curves: how CPU per request and memory grow as the mesh grows.

run.sh measures one small config, but a sidecar in a real mesh carries many routes,
services, endpoints and client connections. This sweeps each of those sizes, with a fresh
Skiff (one worker) per point, to show whether the cost stays flat or grows:

    python3 benches/load/curves.py --skiff target/release/skiff --out benches [--quick]

  1. instructions per request (callgrind: repeatable on a noisy machine) and CPU s per 100k
     requests (wrk) vs HTTPRoute rules on one service;
  2. RSS vs services;  3. RSS vs endpoints of one service;  4. RSS vs open client connections.

Stdout gets a Markdown section (`## Cost curves`) with one table per curve and the PNGs it
wrote into --out; progress goes to stderr. Needs valgrind, h2load, wrk and matplotlib. Every
process started here is stopped on exit, error, Ctrl-C or SIGTERM; traffic stays on
127.0.0.0/8 and every load loop is bounded in count and time. --quick shortens the runs
(not the points), for trying the script out.
"""
import argparse, collections, glob, http.client, os, re, resource, shutil, signal
import socket, subprocess, sys, tempfile, time

from hold import open_idle  # the connection opener run.sh's memory step uses too

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Skiff's listeners: in 19700-19799, clear of run.sh's, so both can share one backend.
OUT, IN, ADMIN = 19740, 19743, 19791
NPROC = os.cpu_count() or 1
HZ = os.sysconf("SC_CLK_TCK")
PROCS = []  # started here and still running: main's finally stops them


def log(*msg):
    print("[curves]", *msg, file=sys.stderr, flush=True)


def child_setup(cpu):
    # Servers on CPU 1, load generators on CPU 0 (run.sh's taskset split), so they never share
    # a core; every child gets the hard limit of open files (10,000 connections need it).
    def setup():
        if NPROC >= 2:
            os.sched_setaffinity(0, {cpu})
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return setup


def start(cmd, name, cpu=1):
    with open(os.path.join(WORK, name + ".log"), "ab") as f:
        # A session of its own: Ctrl-C reaches only this script, whose finally stops the child.
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=child_setup(cpu), start_new_session=True)
    p.name = name
    PROCS.append(p)
    return p


def stop(p, grace=10):
    # SIGTERM first: callgrind writes its last dump only when the process exits by itself.
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
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


def listening(host, port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_port(port, proc, secs, host="127.0.0.1"):
    # Bounded polling, as lib.sh's wait_port; a server that died says why at once.
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(WORK, proc.name + ".log"), errors="replace") as f:
                raise RuntimeError(f"{proc.name} exited ({proc.returncode}):\n{f.read()[-1500:]}")
        if listening(host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: nothing listens on {host}:{port} after {secs} s")


def proc_kb(pid, *fields):  # VmRSS, RssAnon, VmHWM... from /proc/PID/status, in kB
    with open(f"/proc/{pid}/status") as f:
        vals = dict(line.split(":", 1) for line in f)
    return [int(vals[k].split()[0]) for k in fields]


def ticks(pid):  # utime + stime, fields 14 and 15 of /proc/PID/stat (the name may hold spaces)
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def config(name, services, extra="", docs=""):
    text = (f"apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  namespace: bench\n  workers: 1\n"
            f"  outbound: {{listen: 127.0.0.1:{OUT}}}\n  inbound: {{listen: 127.0.0.1:{IN}, appPort: {BPORT}}}\n"
            f"  admin: {{listen: 127.0.0.1:{ADMIN}}}\n{extra}  services:\n{services}{docs}")
    if len(text) >= 4 << 20:
        raise RuntimeError(f"{name}: the config is {len(text):,} bytes, over Skiff's 4 MiB limit")
    path = os.path.join(WORK, name + ".yaml")
    with open(path, "w") as f:
        f.write(text)
    run([ARGS.skiff, "check", "--config", path], 120)  # a refused config stops here, with the errors
    return path, len(text) / 1024


def skiff(cfg, name, secs=60, wrap=()):
    for port in (OUT, IN, ADMIN):  # a stale server from an earlier run would be measured instead
        if listening("127.0.0.1", port):
            raise RuntimeError(f"port {port} is in use (a server from an earlier run?): stop it first")
    t0 = time.monotonic()
    p = start([*wrap, ARGS.skiff, "run", "--config", cfg], name)
    wait_port(OUT, p, secs)  # on failure, main's finally stops p
    return p, time.monotonic() - t0


def point(cfg, name, action, secs=60):
    """A fresh Skiff (so no point inherits another's memory): (start s, RSS MB once the port
    answers, action's result, RSS MB and RssAnon MB after it)."""
    p, took = skiff(cfg, name, secs)
    try:
        rss0, = proc_kb(p.pid, "VmRSS")
        result = action()
        rss1, anon = proc_kb(p.pid, "VmRSS", "RssAnon")
        return took, rss0 / 1024, result, rss1 / 1024, anon / 1024
    finally:
        stop(p)


def get(host):  # one GET / through the outbound listener: its status, or the error's name
    conn = http.client.HTTPConnection("127.0.0.1", OUT, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def plot(name, title, xlabel, panels):
    # panels: [(y label, [(label, xs, ys, style)])], side by side; log x, as the points span decades.
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.5, 4.2), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for label, xs, ys, style in series:
            ax.plot(xs, ys, style, label=label)
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=.3)
        if len(series) > 1:
            ax.legend()
    fig.suptitle(f"{title}; {NPROC} CPUs, Skiff with 1 worker")
    fig.tight_layout()
    fig.savefig(os.path.join(ARGS.out, name), dpi=100)
    plt.close(fig)
    return name


# ---- 1. CPU per request vs routes ----

def h2load(n, path):
    out = run(["h2load", "--h1", "-n", str(n), "-c", "16", f"--connect-to=127.0.0.1:{OUT}",
               f"http://backend{path}"], timeout=900)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not (ok and codes and int(ok.group(1)) == n and int(codes.group(1)) == n):
        lines = [l for l in out.splitlines() if l.startswith(("requests:", "status codes:"))]
        raise RuntimeError(f"h2load: not all {n} requests succeeded with 2xx: {lines}")


def instructions(cfg, path, name):
    # instructions.sh's method: instrumentation off until after the warm-up, then on for N
    # requests; every dump (callgrind_control's and the one at exit) is summed.
    out = os.path.join(WORK, "callgrind." + name)
    p, _ = skiff(cfg, name, 180, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                  f"--callgrind-out-file={out}"])
    try:
        h2load(WARM, path)
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


def wrk(pid, url):
    t0 = ticks(pid)
    out = run(["wrk", "-t1", "-c64", f"-d{SECS}s", "-H", "Host: backend", url], SECS + 60)
    used = ticks(pid) - t0
    # Errors are reported, not fatal: the count of instructions is the measure, wrk the cross-check.
    errors = "; ".join(re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)) or "-"
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return used / HZ * 100_000 / n, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), errors


def curve_routes():
    rows = []
    for n in (1, 10, 100, 1000):
        log(f"routes: {n}")
        rules = "".join(f"  - matches: [{{path: {{type: PathPrefix, value: /r{i:05}/}}}}]\n"
                        f"    backendRefs: [{{name: backend}}]\n" for i in range(n))
        route = ("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: backend}\n"
                 "spec:\n  parentRefs: [{kind: Service, name: backend}]\n  rules:\n" + rules)
        cfg, _ = config(f"routes-{n}", f"    backend: {{endpoints: [{BACKEND}]}}\n", docs=route)
        path = f"/r{n - 1:05}/x"  # matches the last rule only
        ins = instructions(cfg, path, f"routes-{n}-callgrind")
        p, _ = skiff(cfg, f"routes-{n}")
        try:
            rows.append((n, ins, *wrk(p.pid, f"http://127.0.0.1:{OUT}{path}")))
        finally:
            stop(p)
    xs = [r[0] for r in rows]
    png = plot("curves-routes.png", "Skiff CPU per proxied request vs routes (request matches the last rule)",
               "HTTPRoute rules on the service",
               [("instructions per request (callgrind)", [("", xs, [r[1] for r in rows], "o-")]),
                ("CPU s per 100k requests (wrk -c64)", [("", xs, [r[2] for r in rows], "o-C1")])])
    return ["### CPU per request vs routes on one service", "",
            "One service `backend` with an HTTPRoute of N rules, rule i matching `PathPrefix /r{i:05}/`. "
            "Every request matches the **last** rule (`/r{N-1:05}/x`): the worst case for a scan. "
            f"Instructions: callgrind, user space, {N:,} requests (h2load --h1 -c16) after {WARM} to warm up. "
            f"CPU and req/s: wrk -t1 -c64 -d{SECS}s, Skiff not under valgrind.", "",
            "| rules | instructions / request | CPU s / 100k req | req/s | wrk errors |", "|---|---|---|---|---|",
            *(f"| {n:,} | {ins:,.0f} | {cpu:.2f} | {rps:,.0f} | {err} |" for n, ins, cpu, rps, err in rows),
            "", f"![instructions and CPU per request vs routes]({png})"]


# ---- 2 and 3. RSS vs services, RSS vs endpoints ----

def rss_curve(key, caption, xlabel, after, rows, extra_cols=""):
    # rows: (n, config KB, start s, RSS at start MB, RSS after MB, RssAnon after MB, *extra cells).
    xs = [r[0] for r in rows]
    png = plot(f"curves-{key}.png", f"Skiff memory vs {key}", xlabel, [("MB", [
        ("RSS after start", xs, [r[3] for r in rows], "o-"), (f"RSS after {after}", xs, [r[4] for r in rows], "o-"),
        ("RssAnon after", xs, [r[5] for r in rows], "o--")])])
    (x0, y0), (x1, y1) = [(r[0], r[3]) for r in rows[-2:]]
    return [f"### RSS vs {key}", "", caption, "",
            f"| {key} | config KB | start s | RSS after start MB | RSS after {after} MB | RssAnon MB {extra_cols}|",
            "|---" * (6 + extra_cols.count("|")) + "|",
            *("| " + " | ".join([f"{n:,}", f"{kb:,.1f}", f"{took:.2f}", f"{r0:.1f}", f"{r1:.1f}", f"{anon:.1f}",
                                 *map(str, more)]) + " |" for n, kb, took, r0, r1, anon, *more in rows),
            "", f"Start time includes process start and the port poll (50 ms steps). Between the last two "
            f"points, RSS at start grows by {(y1 - y0) * 1024 / (x1 - x0):.2f} KB per {key[:-1]}.",
            "", f"![RSS vs {key}]({png})"]


def curve_services():
    def ten_requests(n):  # one request to each of 10 services spread over the list; all 200
        if bad := [(i, s) for i in range(0, n, n // 10) if (s := get(f"svc-{i:05}")) != 200]:
            raise RuntimeError(f"services: svc-N answered {bad}")
    rows = []
    for n in (10, 1000, 10000):
        log(f"services: {n}")
        cfg, kb = config(f"services-{n}", "".join(f"    svc-{i:05}: {{endpoints: [{BACKEND}]}}\n" for i in range(n)))
        took, r0, _, r1, anon = point(cfg, f"services-{n}", lambda: ten_requests(n))
        rows.append((n, kb, took, r0, r1, anon))
    return rss_curve("services", "N services `svc-NNNNN`, one endpoint each (the backend). RSS once the "
                     "outbound port answers, then after one request to each of 10 services (all answered 200).",
                     "services in the config (one endpoint each)", "10 requests", rows)


def endpoint(k):
    # k = 0 is the backend; the others are distinct loopback addresses nothing listens on
    # (127.1.0.1 onwards, no .0 or .255 octet): picking one is a fast refused connect.
    i = k - 1
    return BACKEND if k == 0 else f"127.{1 + i // 62500}.{i // 250 % 250 + 1}.{i % 250 + 1}:{BPORT}"


def curve_endpoints():
    def requests():  # 200, one at a time, bounded in time too; 502s are expected
        codes, deadline = collections.Counter(), time.monotonic() + 120
        for _ in range(200):
            if time.monotonic() > deadline:
                raise RuntimeError("endpoints: 200 requests took over 120 s")
            codes[get("backend")] += 1
        return codes
    rows = []
    for n in (10, 100, 1000, 10000, 100000):
        log(f"endpoints: {n}")
        eps = "".join(f"      - {endpoint(k)}\n" for k in range(n))
        cfg, kb = config(f"endpoints-{n}", f"    backend:\n      endpoints:\n{eps}")
        # A generous bound: this build's start-up grows with the square of the endpoints.
        took, r0, codes, r1, anon = point(cfg, f"endpoints-{n}", requests, secs=900)
        other = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=str) if k != 200) or "-"
        rows.append((n, kb, took, r0, r1, anon, codes[200], other))
    return rss_curve("endpoints", "One service `backend` with N endpoints: the backend and N-1 loopback "
                     "addresses nothing listens on (127.1.x.y), so most picks answer 502 `upstream-connect` at "
                     "large N. RSS once the outbound port answers, then after 200 requests to the service, one at "
                     "a time (default p2c balancer).", "endpoints of the one service", "200 requests", rows,
                     "| 200 OK of 200 | other answers ")


# ---- 4. RSS vs open connections ----

def not_200(codes):
    return sum(codes.values()) - codes[200]


def curve_connections():
    cfg, _ = config("connections", f"    backend: {{endpoints: [{BACKEND}]}}\n",
                    extra="  limits: {maxConnections: 20000}\n")  # the default, 10,000, is a point
    rows = []
    for n in (10, 100, 1000, 10000):
        log(f"connections: {n}")
        socks = []
        try:
            _, r0, not200, r1, anon = point(cfg, f"connections-{n}", lambda: not_200(open_idle(("127.0.0.1", OUT), n, socks)))
        finally:
            for s in socks:
                s.close()
        rows.append((n, r0, r1, anon, (r1 - r0) * 1024 / n, not200))
    log("connections: 1,000 busy (wrk)")
    p, _ = skiff(cfg, "connections-busy")
    try:
        w = start(["wrk", "-t1", "-c1000", "-d4s", "-H", "Host: backend", f"http://127.0.0.1:{OUT}/"], "wrk", cpu=0)
        time.sleep(2)  # a sample in the middle of the run (not a wait for readiness)
        busy, = proc_kb(p.pid, "VmRSS")
        w.wait(60)
        stop(w)
        hwm, = proc_kb(p.pid, "VmHWM")
    finally:
        stop(p)
    with open(os.path.join(WORK, "wrk.log")) as f:
        errs = re.search(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", f.read())
    xs = [r[0] for r in rows]
    png = plot("curves-connections.png", "Skiff memory vs open client connections",
               "open client connections (HTTP/1.1 keep-alive)",
               [("MB", [("RSS, all open and answered, idle", xs, [r[2] for r in rows], "o-"),
                        ("RssAnon, idle", xs, [r[3] for r in rows], "o--"),
                        ("RSS, 1,000 busy (wrk), at 2 s", [1000], [busy / 1024], "s"),
                        ("peak (VmHWM), 1,000 busy", [1000], [hwm / 1024], "^")])])
    return ["### RSS vs open connections", "",
            "Bare config (one service `backend`, `limits.maxConnections: 20000`). Each connection sends one "
            "`GET /` (64 in progress at a time), then stays open and idle; RSS is read once all have been "
            "answered. At small N, the per-connection figure is mostly the first requests' one-off allocations.",
            "", "| connections | RSS before MB | RSS with all open MB | RssAnon MB | KB per connection "
            "| answers not 200 |",
            "|---|---|---|---|---|---|", *(f"| {n:,} | {r0:.1f} | {r1:.1f} | {anon:.1f} | {per:.1f} | {bad} |"
                                          for n, r0, r1, anon, per, bad in rows),
            "", f"Busy: 1,000 connections under `wrk -t1 -c1000 -d4s`: RSS {busy / 1024:.1f} MB at 2 s, peak "
            f"(VmHWM) {hwm / 1024:.1f} MB" + (f"; wrk reported `{errs.group(0)}`." if errs else "."),
            "", f"![RSS vs open connections]({png})"]


def main():
    global ARGS, WORK, N, WARM, SECS, BACKEND, BPORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skiff", default="target/release/skiff")
    ap.add_argument("--out", default="benches", help="where the PNGs go (the Markdown names them relative to it)")
    ap.add_argument("--backend", default="127.0.0.1:19000", help="the backend; started here if nothing listens")
    ap.add_argument("--quick", action="store_true", help="shorter runs, same points: for trying it out")
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
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 11000:
        sys.exit(f"the hard limit of open files is {hard}: 10,000 connections need more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process opens 10,000 sockets
    os.makedirs(ARGS.out, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally, as Ctrl-C does
    WORK = tempfile.mkdtemp(prefix="skiff-curves.")
    began = time.monotonic()
    try:
        if not listening(bhost, BPORT):
            log(f"starting the backend on {BACKEND}")
            wait_port(BPORT, start([ARGS.skiff, "bench-backend", "--listen", BACKEND], "backend"), 20, bhost)
        when, version = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), run([ARGS.skiff, "version"], 10).strip()
        md = ["## Cost curves", "",
              f"Written by `python3 benches/load/curves.py{' --quick' * ARGS.quick}` on {when} with {version}: "
              f"{NPROC} CPUs, Skiff with one worker, a fresh Skiff per point"
              + (", Skiff and the backend on CPU 1, load on CPU 0." if NPROC >= 2 else "."), ""]
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
