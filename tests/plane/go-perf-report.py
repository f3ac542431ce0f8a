#!/usr/bin/env python3
"""Where a plane component's CPU goes, from `perf record -g` of its (stripped) Go binary.

The plane's binaries are built without a symbol table, so `perf report` shows bare addresses.
This reads `perf script`, names each frame with `go tool addr2line` (which reads Go's own
function table), and prints:
  - the functions most often on top of the stack (self time);
  - for kube-apiserver, each sample put into one bucket by what it serves (the first matching
    rule below wins), and the writes split into custom resource / built-in and into the part
    spent in the field manager (managedFields, server-side apply);
  - with --under REGEX, the frames most often found in the samples whose stack has a frame
    matching REGEX (inclusive shares of the whole profile).

  perf record -F 199 -g -o apiserver.data -p "$(cat DIR/pids/kube-apiserver.pid)" -- sleep 60
  tests/plane/go-perf-report.py apiserver.data ~/.cache/voice-operator/plane/*/bin/kube-apiserver
"""

import argparse
import collections
import re
import subprocess

APISERVER_BUCKETS = [
    ("GC in the background (mark workers, sweep)", r"^runtime\.(gcBgMarkWorker|bgsweep|bgscavenge)"),
    ("watch: serving events to watchers", r"handlers\.\(\*WatchServer\)|serveWatch|watchEncoder|cacheWatcher"),
    ("watch cache: taking events from etcd", r"cacher\.\(\*Cacher\)\.(dispatchEvents|processEvent|dispatchEvent)|cacher\.\(\*watchCache\)|etcd3\.\(\*watchChan\)"),
    ("PATCH (apply or merge patch)", r"handlers\.PatchResource|handlers\.\(\*patcher\)"),
    ("PUT (update)", r"handlers\.UpdateResource"),
    ("POST (create)", r"handlers\.createHandler|handlers\.CreateResource|handlers\.CreateNamedResource"),
    ("GET / LIST", r"handlers\.(GetResource|ListResource|getResourceHandler)"),
    ("DELETE", r"handlers\.DeleteResource"),
    ("TLS and HTTP serving outside the handlers", r"^crypto/tls|net/http\.\(\*conn\)|http2\.\(\*serverConn\)"),
    ("etcd client", r"go\.etcd\.io|google\.golang\.org/grpc"),
]


def load_samples(data, binary):
    """Each sample's stack, leaf first, as function names ('[kernel]' for kernel frames)."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,dso"],
                         capture_output=True, text=True, check=True).stdout
    samples, cur = [], []
    for line in out.splitlines() + [""]:
        line = line.strip()
        if not line:
            if cur:
                samples.append(cur)
            cur = []
            continue
        addr, dso = line.split(" ", 1)
        cur.append((int(addr, 16), "kernel" in dso))
    # perf prints the binary's addresses relative to its first LOAD segment, at 0x400000.
    base = 0x400000
    addrs = sorted({a for s in samples for a, kernel in s if not kernel})
    lines = subprocess.run(["go", "tool", "addr2line", binary],
                           input="".join(f"0x{a + base:x}\n" for a in addrs),
                           capture_output=True, text=True, check=True).stdout.splitlines()
    names = {a: lines[2 * i] for i, a in enumerate(addrs)}
    return [["[kernel]" if kernel else names[a] for a, kernel in s] for s in samples]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("binary")
    ap.add_argument("--under", help="frames most found in the samples under a frame matching this")
    args = ap.parse_args()
    samples = load_samples(args.data, args.binary)
    n = len(samples)
    pct = lambda c: f"{c * 100 / n:5.1f}%"
    print(f"{n} samples")
    print("--- most often on top of the stack")
    for f, c in collections.Counter(s[0] for s in samples).most_common(15):
        print(pct(c), f)
    if "kube-apiserver" in args.binary:
        rules = [(k, re.compile(v)) for k, v in APISERVER_BUCKETS]
        buckets, writes = collections.Counter(), collections.Counter()
        for s in samples:
            kind = next((k for k, rx in rules if any(rx.search(f) for f in s)), "other (kernel, runtime)")
            buckets[kind] += 1
            if kind.startswith(("PATCH", "PUT", "POST")):
                cr = "custom resource" if any("apiextensions-apiserver" in f for f in s) else "built-in"
                fm = any("fieldmanager" in f or "structured-merge-diff" in f for f in s)
                writes[(kind.split()[0], cr, "field manager" if fm else "the rest")] += 1
        print("--- by what the CPU served (one bucket per sample, first rule that matches)")
        for k, c in buckets.most_common():
            print(pct(c), k)
        print("--- writes: custom resource or built-in; in the field manager or not")
        for k, c in writes.most_common():
            print(pct(c), " / ".join(k))
    if args.under:
        rx = re.compile(args.under)
        inc = collections.Counter()
        for s in samples:
            if any(rx.search(f) for f in s):
                inc.update({re.sub(r"^.*/", "", f) for f in s})
        print(f"--- frames in the samples under {args.under!r} (share of all samples)")
        for f, c in inc.most_common(40):
            print(pct(c), f[:140])


if __name__ == "__main__":
    main()
