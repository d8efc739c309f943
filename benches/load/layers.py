#!/usr/bin/env python3
"""Instructions per request, split by layer, from callgrind's output.

Why: wall-clock numbers on this machine move 10-15% between identical runs, while
callgrind's instruction counts repeat to a fraction of a percent. Total instructions per
request say whether a change helped; this split says where the rest goes, so a change can be
aimed at the largest layer and checked against the same table.

How costs are attributed: callgrind records, for every cost line, the source file it came
from, including code inlined from other files (its `fi=`/`fe=` lines). A release build keeps
line tables, so each instruction lands in the file whose code it is: the timeout layer's
inlined poll in `proxy-core/src/timeout/`, hyper's parser in `hyper/src/proto/h1/`. Code of
Rust's standard library (`/rustc/...`: Vec, Arc, hash maps) and code without a file is
charged to the nearest crate named in its function's name (`drop_in_place<proxy_core::retry
::...>` to retry), else to "Rust std". Calls' inclusive costs are skipped, so nothing is
counted twice. glibc's malloc and memcpy are their own rows: who calls them is in the
callgrind file, not in this table.

    python3 benches/load/layers.py --requests 2000 bare=callgrind.bare full=callgrind.full

Each NAME=PREFIX sums every file PREFIX* (callgrind writes one per dump). Prints a Markdown
table: one row per layer, instructions per request for each run, largest first.
"""

import argparse
import glob
import re
import sys
from collections import defaultdict

REGISTRY = re.compile(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/(.*)")
GIT_DEP = re.compile(r"/git/checkouts/([A-Za-z0-9_\-]+?)-[0-9a-f]+/[^/]+/(.*)")

# Skiff's own crates: the folder under src/ is the layer (one folder per middleware).
SKIFF_CRATES = {
    "proxy-core": "core",
    "proxy-metrics": "metrics",
    "proxy-tls": "tls",
    "proxy": "proxy",
}

# Crate names as they appear in symbols, for code charged by function name.
SYMBOL_CRATES = [
    ("proxy_core::", "proxy-core/src/"),
    ("proxy_metrics::", "proxy-metrics/src/"),
    ("proxy_tls::", "proxy-tls/src/"),
    ("skiff::", "proxy/src/"),
    ("hyper_util::", "crate:hyper-util"),
    ("hyper::proto::h1", "crate:hyper/h1"),
    ("hyper::", "crate:hyper"),
    ("h2::", "crate:h2"),
    ("tokio::runtime", "crate:tokio/runtime"),
    ("tokio::", "crate:tokio/io"),
    ("http::", "crate:http"),
    ("bytes::", "crate:bytes"),
    ("tower::", "crate:tower"),
    ("rustls::", "crate:rustls"),
]


def skiff_layer(path):
    """`proxy-core/src/timeout/mod.rs` -> `skiff: timeout`; None when not Skiff's."""
    for crate, short in SKIFF_CRATES.items():
        marker = f"/{crate}/src/"
        at = path.find(marker)
        if at < 0 and path.startswith(f"{crate}/src/"):
            at, marker = 0, f"{crate}/src/"
        if at < 0:
            continue
        rest = path[at + len(marker):]
        head = rest.split("/")[0].removesuffix(".rs")
        if short == "metrics":
            return "skiff: tracing" if head == "trace" else "skiff: metrics"
        if short == "proxy":
            if head == "upstream":
                sub = rest.split("/")[1].removesuffix(".rs") if "/" in rest else "upstream"
                return f"skiff: upstream {sub}"
            return f"skiff: {head}"
        return f"skiff: {head}" if short == "core" else f"skiff: {short}"
    return None


def crate_row(crate, rest):
    if crate == "hyper":
        return "hyper: HTTP/1 codec and connections" if rest.startswith("src/proto/h1") else "hyper: other"
    if crate == "tokio":
        if rest.startswith("src/runtime"):
            return "tokio: scheduler, timers, I/O driver"
        return "tokio: sockets and I/O"
    if crate == "http":
        return "http: header maps, extensions"
    return crate


def classify(path, function):
    """The table row of one cost line, from its source file and function name."""
    layer = skiff_layer(path)
    if layer:
        return layer
    m = REGISTRY.search(path) or GIT_DEP.search(path)
    if m:
        return crate_row(m.group(1), m.group(2))
    if "malloc" in path or function in ("malloc", "free", "realloc", "calloc") or function.startswith(("_int_", "malloc_", "__libc_malloc", "__libc_free", "cfree", "tcache")):
        return "glibc: malloc and free"
    if re.search(r"mem(cpy|move|set|cmp)|str(len|cmp)", path + " " + function):
        return "glibc: memcpy, memset, memcmp"
    if path.startswith("./") or "/sysdeps/" in path:
        return "glibc: other (syscall wrappers)"
    for needle, target in SYMBOL_CRATES:
        if needle in function:
            if target.startswith("crate:"):
                name = target[len("crate:"):]
                return {
                    "hyper/h1": "hyper: HTTP/1 codec and connections",
                    "hyper": "hyper: other",
                    "tokio/runtime": "tokio: scheduler, timers, I/O driver",
                    "tokio/io": "tokio: sockets and I/O",
                    "http": "http: header maps, extensions",
                }.get(name, name)
            # The symbol's module path after the crate is the folder.
            rest = function.split(needle, 1)[1]
            return skiff_layer(target + rest.replace("::", "/")) or "skiff: other"
    return "Rust std (not attributable)" if "/rustc/" in path or path == "???" else "other"


def parse(paths):
    """Self cost per row over the callgrind files given, plus the files' total."""
    rows = defaultdict(int)
    total = 0
    for name in paths:
        names = {"fl": {}, "fn": {}}
        fl = fi = "???"
        fn = "???"
        skip_next = False
        with open(name, errors="replace") as f:
            for line in f:
                c = line[0] if line else ""
                if c.isdigit() or c in "+-*":
                    if skip_next:  # the inclusive cost of a call: counted in the callee
                        skip_next = False
                        continue
                    parts = line.split()
                    if len(parts) >= 2:
                        rows[(fi, fn)] += int(parts[1])
                    continue
                key, _, value = line.rstrip("\n").partition("=")
                if key in ("fl", "fi", "fe", "cfi", "cfl", "fn", "cfn"):
                    space = "fn" if key in ("fn", "cfn") else "fl"
                    m = re.match(r"\((\d+)\)(?: (.*))?$", value)
                    if m:
                        if m.group(2) is not None:
                            names[space][m.group(1)] = m.group(2)
                        value = names[space].get(m.group(1), "???")
                    if key == "fl":
                        fl = fi = value
                    elif key in ("fi", "fe"):
                        fi = value
                    elif key == "fn":
                        fn = value
                        fi = fl
                elif key == "calls":
                    skip_next = True
                elif key == "summary":
                    total += int(value.split(":")[-1]) if ":" in value else int(value)
                elif line.startswith("summary:"):
                    total += int(line.split()[1])
    table = defaultdict(int)
    for (path, function), cost in rows.items():
        table[classify(path, function)] += cost
    return table, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, required=True, help="requests counted in each run")
    ap.add_argument("--top", type=int, default=25, help="rows shown; the rest are summed")
    ap.add_argument("runs", nargs="+", help="NAME=CALLGRIND_PREFIX")
    args = ap.parse_args()
    names, tables, totals = [], [], []
    for run in args.runs:
        name, _, prefix = run.partition("=")
        files = sorted(glob.glob(prefix + "*"))
        if not files:
            sys.exit(f"no callgrind files match {prefix}*")
        table, total = parse(files)
        names.append(name)
        tables.append(table)
        totals.append(total)
    n = args.requests
    keys = sorted({k for t in tables for k in t}, key=lambda k: -max(t.get(k, 0) for t in tables))
    shown, rest = keys[: args.top], keys[args.top:]
    per = lambda v: f"{round(v / n):,}"
    print("| layer (where the instructions' code lives) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in shown:
        print(f"| {k} | " + " | ".join(per(t.get(k, 0)) for t in tables) + " |")
    if rest:
        print(f"| {len(rest)} smaller rows | " + " | ".join(per(sum(t.get(k, 0) for k in rest)) for t in tables) + " |")
    print("| **total** | " + " | ".join(f"**{per(sum(t.values()))}**" for t in tables) + " |")
    for name, table, total in zip(names, tables, totals):
        if total and abs(sum(table.values()) - total) > total * 0.001:
            print(f"\n(warning: {name}'s rows sum to {sum(table.values())}, callgrind's summary says {total})", file=sys.stderr)


if __name__ == "__main__":
    main()
