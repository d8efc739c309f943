#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to a proxy and holds them, idle.

Why: a sidecar's memory with many open connections is paid in every pod, and most of a
mesh's connections are idle keep-alive ones between requests. Each connection sends one
request and reads its response (so the proxy has served it, and holds whatever it keeps
for a connection between requests), then stays open. Prints `held N ok M` on stdout once
every connection has its answer, then waits until stdin closes or HOLD seconds pass.

    python3 benches/load/hold.py 127.0.0.1:19140 1000 --host backend [--hold 30]

Loopback only; every loop is bounded in count and time.
"""

import argparse
import resource
import selectors
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("addr", help="HOST:PORT on 127.0.0.0/8")
    ap.add_argument("n", type=int)
    ap.add_argument("--host", default="backend", help="the Host header")
    ap.add_argument("--path", default="/")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds to hold at most")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to open and hear every answer")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    if not host.startswith("127."):
        sys.exit("loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.n + 1024), hard))

    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    held, ok, failed = [], 0, 0
    deadline = time.monotonic() + args.timeout
    opened = 0
    # Connect in batches of 256 so the listener's backlog is never what is measured.
    while opened < args.n and time.monotonic() < deadline:
        for _ in range(min(256, args.n - opened)):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            sel.register(s, selectors.EVENT_WRITE, b"")
            opened += 1
        while sel.get_map() and time.monotonic() < deadline:
            for key, mask in sel.select(timeout=1.0):
                s = key.fileobj
                if mask & selectors.EVENT_WRITE:
                    try:
                        s.send(request)
                        sel.modify(s, selectors.EVENT_READ, b"")
                    except OSError:
                        sel.unregister(s)
                        failed += 1
                    continue
                try:
                    data = key.data + s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    failed += 1
                    continue
                head, sep, body = data.partition(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if sep and length is not None and len(body) >= length:
                    sel.unregister(s)
                    held.append(s)
                    ok += head.split(b" ")[1] == b"200"
                else:
                    sel.modify(s, selectors.EVENT_READ, data)
    print(f"held {len(held)} ok {ok} failed {failed}", flush=True)
    end = time.monotonic() + args.hold
    sel2 = selectors.DefaultSelector()
    sel2.register(sys.stdin, selectors.EVENT_READ)
    while time.monotonic() < end:
        if sel2.select(timeout=max(0.0, min(1.0, end - time.monotonic()))):
            if not sys.stdin.read(1):
                break


if __name__ == "__main__":
    main()
