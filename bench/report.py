"""Tables, peer-to-pydist ratios and the project's targets, as text or Markdown.

Everything here works from the JSON document the run writes, so
``python -m bench --render-md bench/results/latest.json`` redraws the tables
of docs/performance.md from a saved run.
"""

from __future__ import annotations

import math

PYDIST = "pydist"


# ---------------------------------------------------------------------------
# formatting


def _num(x, fmt):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def us(x):
    return _num(None if x is None else x * 1e6, ",.1f")


def ms(x):
    return _num(None if x is None else x * 1e3, ",.1f")


def sec(x):
    return _num(x, ",.3f")


def ratio_text(peer_value, pydist_value, unit="time"):
    """peer/pydist with its direction in words (for times: > 1 means the peer is slower)."""
    if peer_value is None or pydist_value in (None, 0):
        return "-"
    r = peer_value / pydist_value
    if unit == "time":
        word_hi, word_lo = "slower", "faster"
    else:
        word_hi, word_lo = "more", "less"
    if r >= 1:
        return f"{r:.2f} ({r:.2f}x {word_hi} than pydist)"
    return f"{r:.2f} ({1 / r:.2f}x {word_lo} than pydist)"


def table(headers, rows, markdown=False) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# looking results up


def case_rows(doc, case, peer):
    entry = doc["results"].get(case, {}).get(peer)
    if not entry:
        return None
    return entry.get("rows")


def row(doc, case, peer, key="default"):
    for r in case_rows(doc, case, peer) or []:
        if r["key"] == key:
            return r
    return None


def status_of(doc, case, peer):
    """None when the peer has rows for the case, else a short word for the table."""
    entry = doc["results"].get(case, {}).get(peer)
    if entry is None:
        sk = doc["peers"].get(peer, {}).get("skipped")
        return "skipped (see header)" if sk else "not run"
    if entry.get("error"):
        return "FAILED (see Problems)"
    if entry.get("na"):
        return "n/a: " + entry["na"]
    return None


def _peers(doc):
    return doc["meta"]["peers_requested"]


# ---------------------------------------------------------------------------
# the case tables


def latency_table(doc, md=False):
    base = row(doc, "latency", PYDIST)
    out = []
    for peer in _peers(doc):
        st = status_of(doc, "latency", peer)
        if st:
            out.append([peer, st, "", "", "", ""])
            continue
        for r in case_rows(doc, "latency", peer):
            name = peer if r["key"] == "default" else f"{peer} ({r['key']})"
            out.append([name, r["label"], us(r["median_s"]), us(r["p99_s"]), us(r["min_s"]),
                        "" if peer == PYDIST else ratio_text(r["median_s"], base and base["median_s"])])
    return table(["peer", "call", "median µs", "p99 µs", "min µs", "peer/pydist (median)"], out, md)


def throughput_table(doc, md=False):
    out = []
    for peer in _peers(doc):
        st = status_of(doc, "throughput", peer)
        if st:
            out.append([peer, "", st, "", "", "", ""])
            continue
        for r in case_rows(doc, "throughput", peer):
            base = row(doc, "throughput", PYDIST, r["key"])
            out.append([peer, r["key"], r["label"], _num(r["tasks_per_s"], ",.0f"), sec(r["seconds"]),
                        r["reps"],
                        "" if peer == PYDIST else ratio_text(r["seconds"], base and base["seconds"])])
    return table(["peer", "kind", "map", "tasks/s", "seconds", "runs", "peer/pydist (time)"], out, md)


def bigdata_table(doc, md=False):
    base = row(doc, "bigdata", PYDIST)
    out = []
    for peer in _peers(doc):
        st = status_of(doc, "bigdata", peer)
        if st:
            out.append([peer, st] + [""] * 8)
            continue
        r = row(doc, "bigdata", peer)
        out.append([peer, r["label"], sec(r["to_worker_s"]), _num(r["to_worker_gbps"], ".2f"),
                    _num(r.get("best_to_worker_gbps"), ".2f"),
                    sec(r["back_s"]), _num(r["back_gbps"], ".2f"), _num(r.get("best_back_gbps"), ".2f"),
                    "" if peer == PYDIST else ratio_text(r["to_worker_s"], base and base["to_worker_s"]),
                    "" if peer == PYDIST else ratio_text(r["back_s"], base and base["back_s"])])
    return table(["peer", "how", "to worker s", "GB/s", "best GB/s", "back s", "GB/s", "best GB/s",
                  "peer/pydist to worker", "peer/pydist back"], out, md)


def startup_table(doc, md=False):
    base = row(doc, "startup", PYDIST)
    out = []
    for peer in _peers(doc):
        st = status_of(doc, "startup", peer)
        if st:
            out.append([peer, st] + [""] * 7)
            continue
        r = row(doc, "startup", peer)
        out.append([peer, sec(r["ready_s"]), sec(r["first_ready_s"]), sec(r["teardown_s"]),
                    _num(r["worker_rss_mb"], ".1f"), _num(r["worker_uss_mb"], ".1f"),
                    f"{_num(r['tree_rss_mb'], ',.0f')} ({r['tree_nprocs']:.0f} procs)",
                    "" if peer == PYDIST else ratio_text(r["ready_s"], base and base["ready_s"]),
                    "" if peer == PYDIST else ratio_text(r["teardown_s"], base and base["teardown_s"])])
    return table(["peer", "ready s", "first s", "teardown s", "worker RSS MB", "worker USS MB",
                  "all procs RSS MB", "peer/pydist ready", "peer/pydist teardown"], out, md)


def fanout_table(doc, md=False):
    base = row(doc, "fanout", PYDIST)
    out = []
    for peer in _peers(doc):
        st = status_of(doc, "fanout", peer)
        if st:
            out.append([peer, st, "", "", "", ""])
            continue
        r = row(doc, "fanout", peer)
        out.append([peer, r["label"], ms(r["median_s"]), _num(r["calls_per_s"], ",.0f"), r["reps"],
                    "" if peer == PYDIST else ratio_text(r["median_s"], base and base["median_s"])])
    calls = doc["meta"]["config"]["fanout_calls"]
    return table(["peer", "calls", f"{calls} calls ms", "calls/s", "runs", "peer/pydist (time)"], out, md)


def scale_table(doc, md=False):
    out = []
    for peer in _peers(doc):
        if peer not in doc["results"].get("scale", {}):
            continue
        st = status_of(doc, "scale", peer)
        if st:
            out.append([peer, st] + [""] * 6)
            continue
        for r in case_rows(doc, "scale", peer):
            base = row(doc, "scale", PYDIST, r["key"])
            out.append([peer, r["n"], sec(r["ready_s"]), _num(r["worker_rss_mb"], ".1f"),
                        _num(r["worker_uss_mb"], ".1f"),
                        _num(r.get("ratio_to_small"), ".2f") if "ratio_to_small" in r else "",
                        "" if peer == PYDIST else ratio_text(r["ready_s"], base and base["ready_s"])])
    return table(["peer", "workers", "ready s", "idle worker RSS MB", "USS MB",
                  "time / time for 2", "peer/pydist ready"], out, md)


TABLES = {
    "latency": ("Latency: synchronous no-op round trip to one worker", latency_table),
    "throughput": ("Throughput: tiny tasks (x + 1)", throughput_table),
    "bigdata": ("Bigdata: float64 array to a worker (sum back) and back from a worker", bigdata_table),
    "startup": ("Startup: from nothing to workers ready, and teardown", startup_table),
    "fanout": ("Fanout: concurrent calls over the workers, submit all then wait all", fanout_table),
    "scale": ("Scale: many workers, one call each; idle memory per worker", scale_table),
}


# ---------------------------------------------------------------------------
# targets of the project issue


def _get(doc, case, peer, key, field):
    r = row(doc, case, peer, key)
    return None if r is None else r.get(field)


def targets(doc) -> list[dict]:
    """Each target: name, measured, threshold, status in PASS / FAIL / n/a."""
    g = lambda *a: _get(doc, *a)  # noqa: E731
    out = []

    def add(name, value, limit, ok, fmt):
        if value is None or limit is None:
            out.append({"target": name, "measured": None, "threshold": limit, "status": "n/a"})
        else:
            out.append({"target": name, "measured": value, "threshold": limit,
                        "status": "PASS" if ok(value, limit) else "FAIL",
                        "text": f"{fmt(value)} vs {fmt(limit)}"})

    lat = g("latency", PYDIST, "default", "median_s")
    mp_lat = g("latency", "multiprocessing", "default", "median_s")
    bare_thr = g("latency", "bare_socket", "threaded", "median_s")
    add("latency <= 0.5 x multiprocessing Pool.apply (median)", lat,
        mp_lat and 0.5 * mp_lat, lambda v, t: v <= t, lambda v: us(v) + " µs")
    add("latency <= 1.5 x bare socket with reader thread (median)", lat,
        bare_thr and 1.5 * bare_thr, lambda v, t: v <= t, lambda v: us(v) + " µs")

    pm1 = g("throughput", PYDIST, "unbatched", "tasks_per_s")
    imap1 = g("throughput", "multiprocessing", "unbatched", "tasks_per_s")
    pma = g("throughput", PYDIST, "batched", "tasks_per_s")
    pmap_mp = g("throughput", "multiprocessing", "batched", "tasks_per_s")
    add("unbatched pmap >= multiprocessing imap chunksize=1 (tasks/s)", pm1, imap1,
        lambda v, t: v >= t, lambda v: f"{v:,.0f}/s")
    add('pmap batch_size="auto" >= 0.5 x Pool.map default chunking (tasks/s)', pma,
        pmap_mp and 0.5 * pmap_mp, lambda v, t: v >= t, lambda v: f"{v:,.0f}/s")

    to = g("bigdata", PYDIST, "default", "to_worker_gbps")
    back = g("bigdata", PYDIST, "default", "back_gbps")
    bare_to = g("bigdata", "bare_socket", "default", "to_worker_gbps")
    bare_back = g("bigdata", "bare_socket", "default", "back_gbps")
    gbps = lambda v: f"{v:.2f} GB/s"  # noqa: E731
    add("bigdata to a worker >= 1.5 GB/s", to, 1.5, lambda v, t: v >= t, gbps)
    add("bigdata back >= 2.0 GB/s", back, 2.0, lambda v, t: v >= t, gbps)
    add("bigdata to a worker >= 0.8 x bare socket", to, bare_to and 0.8 * bare_to, lambda v, t: v >= t, gbps)
    add("bigdata back >= 0.8 x bare socket", back, bare_back and 0.8 * bare_back, lambda v, t: v >= t, gbps)

    n = doc["meta"]["config"]["workers"]
    add(f"{n} local workers ready <= 0.3 s (median)", g("startup", PYDIST, "default", "ready_s"), 0.3,
        lambda v, t: v <= t, lambda v: f"{v * 1e3:.1f} ms")

    big = doc["meta"]["config"]["scale_n"]
    rss = g("scale", PYDIST, f"n={big}", "worker_rss_mb")
    where = f"with {big} workers"
    if rss is None:
        rss, where = g("startup", PYDIST, "default", "worker_rss_mb"), f"with {n} workers"
    add(f"idle worker <= 30 MB RSS (median, {where})", rss, 30.0, lambda v, t: v <= t,
        lambda v: f"{v:.1f} MB")
    add(f"{big} workers ready < 8 x the time of {n}", g("scale", PYDIST, f"n={big}", "ratio_to_small"),
        8.0, lambda v, t: v < t, lambda v: f"{v:.2f}x")
    return out


def targets_table(doc, md=False):
    rows = [[t["status"], t["target"], t.get("text", "pydist not measured" if t["status"] == "n/a" else "")]
            for t in doc.get("targets", [])]
    return table(["status", "target", "pydist vs threshold"], rows, md)


# ---------------------------------------------------------------------------
# the whole report


def header(doc, md=False) -> str:
    m = doc["meta"]
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    missing = ", ".join(k for k, v in m["versions"].items() if not v)
    lines = [
        f"pydist benchmark  {m['timestamp']}  "
        f"({'QUICK smoke run, small counts' if m['config']['quick'] else 'full run'})",
        f"command: {m['command']}",
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB, {m['platform']}",
        f"python {m['python']}; {vers}" + (f"; not installed: {missing}" if missing else ""),
        f"git: {m.get('git_head')}; workers per peer: {m['config']['workers']}; "
        "sizes in MB = 10^6 bytes, GB = 10^9 bytes; times are medians",
    ]
    if m.get("env"):
        lines.append("env: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    skipped = {p: d["skipped"] for p, d in doc["peers"].items() if d.get("skipped")}
    if skipped:
        lines.append("skipped peers: " + "; ".join(f"{p}: {r}" for p, r in skipped.items()))
    loads = [f"{p} {d['load_before']['cpu_percent']:.0f}%/{d['load_after']['cpu_percent']:.0f}%"
             for p, d in doc["peers"].items() if d.get("load_before") and d.get("load_after")]
    if loads:
        lines.append("machine CPU busy before/after each peer (other jobs skew numbers): " + ", ".join(loads))
    helpers = sorted({h.split(" -c ")[-1][:60] for d in doc["peers"].values()
                      for h in d.get("persistent_helpers", [])})
    if helpers:
        lines.append("per-master helpers kept by design (not workers): " + "; ".join(helpers))
    if md:
        return "\n".join("- " + line for line in lines)
    return "\n".join(lines)


def render(doc, md=False) -> str:
    parts = [header(doc, md)]
    for case in doc["meta"]["cases"]:
        if not doc["results"].get(case):
            continue
        title, fn = TABLES[case]
        parts.append(("### " if md else "== ") + title + ("" if md else " =="))
        parts.append(fn(doc, md))
    parts.append(("### " if md else "== ") + "Targets (project issue)" + ("" if md else " =="))
    parts.append(targets_table(doc, md))
    problems = doc.get("problems", [])
    if problems:
        parts.append(("### " if md else "== ") + "Problems" + ("" if md else " =="))
        parts.append("\n".join(("- " if md else "  ") + p for p in problems))
    return "\n\n".join(parts) + "\n"
