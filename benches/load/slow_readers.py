#!/usr/bin/env python3
"""Memory held by Skiff for slow readers, and whether it is given back.

   python3 benches/load/slow_readers.py [path/to/skiff] [--readers 200] [--hold 10]

A backend serves 8 MiB responses as fast as it may. READERS clients, each on its own
connection with a 4 KiB receive buffer, ask for one, read its first KiB and then stop
reading, as a hostile or stalled client would. Skiff's resident memory (VmRSS) is sampled
before, at its peak while they hold (HOLD seconds), and 12 s after they all close. Prints one
Markdown table row. Traffic stays on 127.0.0.1; every wait is bounded.
"""
import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

BODY = 8 * 1024 * 1024
CHUNK = b"x" * 65536


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def backend(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY)
            sent = 0
            while sent < BODY:
                writer.write(CHUNK)
                sent += len(CHUNK)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, within=20.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def measure(pid, port, args):
    before = rss_mb(pid)
    socks = []
    for _ in range(args.readers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: big\r\n\r\n")
        s.settimeout(10)
        s.recv(1024)
        socks.append(s)
    peak = rss_mb(pid)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        time.sleep(0.25)
        peak = max(peak, rss_mb(pid))
    for s in socks:
        s.close()
    # Past one period of Skiff's return of freed memory (runtime::TRIM_EVERY, 10 s).
    time.sleep(12)
    after = rss_mb(pid)
    return (f"| {args.label or os.path.basename(args.skiff)} | {args.readers} | "
            f"{before:.1f} | {peak:.1f} | {after:.1f} |")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("skiff", nargs="?", default="target/release/skiff")
    ap.add_argument("--readers", type=int, default=200)
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    be_port = server.sockets[0].getsockname()[1]
    out_port, in_port, admin_port = free_port(), free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(f"""apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  workers: {args.workers}
  outbound: {{listen: "127.0.0.1:{out_port}", passthrough: false}}
  inbound: {{listen: "127.0.0.1:{in_port}", appPort: {be_port}}}
  admin: {{listen: "127.0.0.1:{admin_port}"}}
  shutdown: {{gracePeriod: 1s}}
  services:
    big: {{endpoints: ["127.0.0.1:{be_port}"]}}
""")
    cfg.close()
    proxy = subprocess.Popen([args.skiff, "run", "--config", cfg.name],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.get_running_loop().run_in_executor(None, wait_port, out_port)
        await asyncio.sleep(1)
        loop = asyncio.get_running_loop()
        # The clients block; they run on a thread so the backend (on this loop) serves.
        row = await loop.run_in_executor(None, measure, proxy.pid, out_port, args)
        print(row, flush=True)
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        server.close()
        os.unlink(cfg.name)


if __name__ == "__main__":
    asyncio.run(main())
