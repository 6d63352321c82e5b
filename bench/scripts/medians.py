"""Medians per (case, server) of roomchat-bench JSON lines (fanout, churn, conns).

    python3 medians.py FILE [REFERENCE [SERVER...]]

With the server names given, they are printed in that order and every median
is also shown as a ratio to the first one's (the reference build).
"""
import collections
import json
import statistics
import sys

runs = collections.defaultdict(list)
with open(sys.argv[1]) as f:
    for line in f:
        if line.startswith("{"):
            j = json.loads(line)
            # Not a run that failed before measuring.
            if "latency_ms" in j or j.get("scenario") == "conns" and "connect_ms" in j:
                runs[(j["label"], j["server"])].append(j)
order = sys.argv[2:]
labels = list(dict.fromkeys(label for label, _ in runs))
servers = order or sorted({s for _, s in runs})


def cpu_us(j):
    cpu = (j.get("cpu_secs") or {}).get("server")
    n = j.get("received") or 0
    return cpu * 1e6 / n if cpu is not None and n else None


def med(js, key):
    v = [x for x in (key(j) for j in js) if x is not None]
    return statistics.median(v) if v else None


for label in labels:
    ref = None
    for server in servers:
        js = runs.get((label, server))
        if not js:
            continue
        if js[0]["scenario"] == "conns":
            figs = {
                "kib": med(js, lambda j: (j.get("bytes_per_conn") or 0) / 1024 or None),
                "p99": med(js, lambda j: j["connect_ms"]["p99"]),
                "cpu": med(js, lambda j: j.get("connect_cpu_us_per_conn")),
                "after": med(js, lambda j: j.get("rss_after_ratio")),
                "rate": med(js, lambda j: j.get("joined_per_sec")),
            }
            if ref is None:
                ref = figs
            rel = lambda k: (
                f" ({figs[k] / ref[k]:.2f}x)" if figs[k] is not None and ref[k] else ""
            )
            f = lambda k, fmt: "-" if figs[k] is None else format(figs[k], fmt) + rel(k)
            passed = sum(1 for j in js if j.get("pass"))
            print(
                f"{label:<24} {server:<28} RSS/conn {f('kib', '.1f')} KiB, connect p99 "
                f"{f('p99', '.2f')} ms, server CPU {f('cpu', '.0f')} us/conn, joined/s "
                f"{f('rate', '.0f')}, RSS after/before {f('after', '.2f')}, passed {passed}/{len(js)}"
            )
            continue
        if js[0]["scenario"] == "churn":
            main, unit = (lambda j: j["visits_per_sec"]), "visits/s"
            lost = sum(j.get("lost", 0) or 0 for j in js)
        else:
            main, unit = (lambda j: j["frames_per_sec"]), "frames/s"
            lost = sum(j["lost"] for j in js)
        p50 = med(js, lambda j: j["latency_ms"]["p50"])
        p99 = med(js, lambda j: j["latency_ms"]["p99"])
        figs = {"main": med(js, main), "p50": p50, "p99": p99, "cpu": med(js, cpu_us)}
        if ref is None:
            ref = figs
        rel = lambda k: (
            f" ({figs[k] / ref[k]:.2f}x)" if figs[k] is not None and ref[k] else ""
        )
        each = ", ".join(f"{main(j):,.0f}" for j in js)
        keep = med(js, lambda j: j.get("keep_up_pct"))
        extra = f", delivered/offered {keep:.1f} %" if keep is not None else ""
        cpu = f", server CPU {figs['cpu']:.2f} us/frame{rel('cpu')}" if figs["cpu"] is not None else ""
        print(
            f"{label} {server}: {len(js)} runs, {unit} {figs['main']:,.0f}{rel('main')} (runs {each}),"
            f" p50 {p50:.3f} ms{rel('p50')}, p99 {p99:.3f} ms{rel('p99')}{cpu}{extra},"
            f" lost {lost}, passed {sum(1 for j in js if j.get('pass'))}/{len(js)}"
        )
