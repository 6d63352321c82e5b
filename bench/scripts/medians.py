"""Medians per (case, server) of roomchat-bench fanout JSON lines: python3 medians.py FILE."""
import collections
import json
import statistics
import sys

runs = collections.defaultdict(list)
with open(sys.argv[1]) as f:
    for line in f:
        j = json.loads(line)
        runs[(j["label"], j["server"])].append(j)
for (label, server), js in sorted(runs.items()):
    med = lambda key: statistics.median(key(j) for j in js)
    each = ", ".join(f"{j['frames_per_sec']:,.0f}" for j in js)
    print(
        f"{label} {server}: {len(js)} runs, frames/s {med(lambda j: j['frames_per_sec']):,.0f}"
        f" (runs {each}),"
        f" p50 {med(lambda j: j['latency_ms']['p50']):.3f} ms, p99 {med(lambda j: j['latency_ms']['p99']):.3f} ms,"
        f" lost {sum(j['lost'] for j in js)}"
    )
