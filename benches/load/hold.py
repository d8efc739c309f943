#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to a proxy and holds them, idle.

Why: a sidecar's memory with many open connections is paid in every pod, and most of a
mesh's connections are idle keep-alive ones between requests. Each connection sends one
request and reads its response (so the proxy has served it, and holds whatever it keeps
for a connection between requests), then stays open. As a command (run.sh's memory step) it
prints `held N ok M` on stdout once every connection has its answer, then waits until stdin
closes or HOLD seconds pass; `open_idle` is also what curves.py's connection curve uses.

    python3 benches/load/hold.py 127.0.0.1:19140 1000 --host backend [--hold 30]

Loopback only; every loop is bounded in count and time.
"""

import argparse
import collections
import re
import resource
import selectors
import socket
import struct
import sys
import time

LINGER0 = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left to crowd later runs


def open_idle(addr, n, socks, host="backend", path="/", secs=120, window=64):
    """Opens n keep-alive connections to addr ("127.x.y.z", port) into socks, each answered
    once and left open; returns a Counter of the answers' status codes. At most `window` are
    in progress at a time: a burst makes the proxy open as many upstream connections at once,
    which is not what is measured. Raises if a connection fails or time runs out."""
    if not addr[0].startswith("127."):
        raise ValueError("loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sel, buf = selectors.DefaultSelector(), {}
    codes, done, deadline = collections.Counter(), 0, time.monotonic() + secs
    first = len(socks)
    try:
        while done < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} connections answered in {secs} s")
            while len(socks) - first < n and len(socks) - first - done < window:
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                s.setblocking(False)
                s.connect_ex(addr)
                buf[s] = b""
                sel.register(s, selectors.EVENT_WRITE)
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                if key.events == selectors.EVENT_WRITE:  # connected, or failed
                    if err := s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise RuntimeError(f"connect: {socket.errno.errorcode.get(err, err)}")
                    s.send(request)  # a few bytes into an empty send buffer: never partial
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                if not (data := s.recv(65536)):
                    raise RuntimeError(f"a connection closed before its answer ({done} answered)")
                buf[s] += data
                head, sep, body = buf[s].partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    codes[int(head.split()[1])] += 1
                    sel.unregister(s)
                    done += 1
    finally:
        sel.close()
    return codes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("addr", help="HOST:PORT on 127.0.0.0/8")
    ap.add_argument("n", type=int)
    ap.add_argument("--host", default="backend", help="the Host header")
    ap.add_argument("--path", default="/")
    ap.add_argument("--window", type=int, default=256, help="connections in progress at once")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds to hold at most")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to open and hear every answer")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    socks = []
    try:
        codes = open_idle((host, int(port)), args.n, socks, args.host, args.path,
                          args.timeout, args.window)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"held 0 ok 0 failed: {e}", flush=True)
        sys.exit(1)
    print(f"held {sum(codes.values())} ok {codes[200]} failed 0", flush=True)
    end = time.monotonic() + args.hold
    wait = selectors.DefaultSelector()
    wait.register(sys.stdin, selectors.EVENT_READ)
    while time.monotonic() < end:
        if wait.select(timeout=max(0.0, min(1.0, end - time.monotonic()))):
            if not sys.stdin.read(1):
                break


if __name__ == "__main__":
    main()
