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


def row(doc, case, peer, key="default", nbytes=None):
    """The row of ``peer`` with this key (and, for bigdata and w2w, this array size)."""
    for r in case_rows(doc, case, peer) or []:
        if r["key"] == key and (nbytes is None or r.get("bytes") == nbytes):
            return r
    return None


def kind_of(r):
    return r.get("kind", r["key"])  # runs before kinds existed keyed throughput rows by kind


def sizes(doc, case):
    """Every array size measured in ``case``, smallest first."""
    return sorted({r["bytes"] for entry in doc["results"].get(case, {}).values()
                   for r in entry.get("rows") or [] if "bytes" in r})


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


def _peers(doc, case):
    """The peers that run ``case`` (a floor or a variant runs only the cases it means something for)."""
    out = []
    for p in doc["meta"]["peers_requested"]:
        entry = doc["peers"].get(p)
        if entry is not None and (entry.get("skipped") or case in entry.get("cases", [case])):
            out.append(p)
    return out


def usage(r):
    """Where a task's (or call's) time went: CPU µs of the master and of the peer's other
    processes, wake-ups of all; "-" for runs made before these were measured."""
    return [_num(r.get("master_cpu_us"), ",.1f"), _num(r.get("others_cpu_us"), ",.1f"),
            _num(r.get("wakeups"), ".2f")]


USAGE = ["master CPU µs", "others CPU µs", "wake-ups"]


def gbps(x):
    return _num(x, ".2f")


def of_floor(doc, case_row):
    """A row's GB/s as fractions of the in-process copy of the same size (memcpy, touched)."""
    floor = row(doc, "bigdata", "memcpy", "touched", case_row["bytes"])
    if floor is None:
        return "-", "-"
    if "gbps" in case_row:  # w2w: one direction
        return _num(case_row["gbps"] / floor["to_worker_gbps"], ".2f"), None
    return (_num(case_row["to_worker_gbps"] / floor["to_worker_gbps"], ".2f"),
            _num(case_row["back_gbps"] / floor["back_gbps"], ".2f"))


def mb(nbytes):
    return f"{nbytes / 1e6:g}"


# ---------------------------------------------------------------------------
# the case tables


def each_row(doc, case, out, width):
    """Yield (peer, row) for every row of ``case``; a peer without rows gets one line of
    ``out`` (``width`` cells) that says why."""
    for peer in _peers(doc, case):
        st = status_of(doc, case, peer)
        if st:
            out.append([peer, st] + [""] * (width - 2))
            continue
        for r in case_rows(doc, case, peer):
            yield peer, r


def latency_table(doc, md=False):
    base = row(doc, "latency", PYDIST)
    out = []
    for peer, r in each_row(doc, "latency", out, 9):
        name = peer if r["key"] == "default" else f"{peer} ({r['key']})"
        out.append([name, r["label"], us(r["median_s"]), us(r["p99_s"]), us(r["min_s"]), *usage(r),
                    "" if peer == PYDIST else ratio_text(r["median_s"], base and base["median_s"])])
    return table(["peer", "call", "median µs", "p99 µs", "min µs", *(u + " per call" for u in USAGE),
                  "peer/pydist (median)"], out, md)


def throughput_table(doc, md=False):
    out = []
    for peer in _peers(doc, "throughput"):
        st = status_of(doc, "throughput", peer)
        if st:
            out.append([peer, "", st] + [""] * 7)
            continue
        for r in case_rows(doc, "throughput", peer):
            base = row(doc, "throughput", PYDIST, kind_of(r))
            out.append([peer, kind_of(r), r["label"], _num(r["tasks_per_s"], ",.0f"), sec(r["seconds"]),
                        r["reps"], *usage(r),
                        "" if peer == PYDIST else ratio_text(r["seconds"], base and base["seconds"])])
    return table(["peer", "kind", "map", "tasks/s", "seconds", "runs", *(u + " per task" for u in USAGE),
                  "peer/pydist (time)"], out, md)


def bigdata_table(doc, md=False):
    out = []
    for peer, r in each_row(doc, "bigdata", out, 11):
        base = row(doc, "bigdata", PYDIST, nbytes=r["bytes"])
        to_floor, back_floor = of_floor(doc, r)
        name = peer if r["key"] == "default" else f"{peer} ({r['key']})"
        out.append([name, r["label"], mb(r["bytes"]),
                    ms(r["to_worker_s"]), gbps(r["to_worker_gbps"]), to_floor,
                    ms(r["back_s"]), gbps(r["back_gbps"]), back_floor,
                    "" if peer == PYDIST else ratio_text(r["to_worker_s"], base and base["to_worker_s"]),
                    "" if peer == PYDIST else ratio_text(r["back_s"], base and base["back_s"])])
    return table(["peer", "how", "MB", "to worker ms", "GB/s", "of memcpy", "back ms", "GB/s",
                  "of memcpy", "peer/pydist to worker", "peer/pydist back"], out, md)


# shared memory "pays" at a size when it moves the array at least this much faster
PAYS = 1.1


def _pays_from(ratios):
    """The smallest size from which every larger size measured pays; None if none does."""
    found = None
    for size, r in reversed(ratios):
        if r is None or r < PAYS:
            break
        found = size
    return found


def shm_table(doc, md=False):
    """pydist's shared memory against its own socket (the pydist_noshm variant) and
    against Ray, size by size, both ways; and the size from which shared memory pays."""
    def ratio(a, b, field):
        return a[field] / b[field] if a and b else None

    out, pays = [], {"to_worker_gbps": [], "back_gbps": []}
    for size in sizes(doc, "bigdata"):
        shm, sock = row(doc, "bigdata", PYDIST, nbytes=size), row(doc, "bigdata", "pydist_noshm", nbytes=size)
        every, ray = row(doc, "bigdata", "pydist_shmall", nbytes=size), row(doc, "bigdata", "ray", nbytes=size)
        if shm is None:
            continue
        cells = [mb(size)]
        for field in pays:
            cells += [gbps(sock and sock[field]), gbps(shm[field]), gbps(every and every[field]),
                      _num(ratio(shm, sock, field), ".2f"), _num(ratio(shm, ray, field), ".2f")]
            pays[field].append((size, ratio(every or shm, sock, field)))
        out.append(cells)
    text = table(["MB", "to: socket GB/s", "default", "shm always", "default/socket", "pydist/Ray",
                  "back: socket GB/s", "default", "shm always", "default/socket", "pydist/Ray"], out, md)
    if not any(r for size_ratios in pays.values() for _, r in size_ratios):
        return text + "\n\nWhere shared memory pays: not measured (needs the pydist_noshm variant)."
    where = {f: _pays_from(r) for f, r in pays.items()}
    words = {f: f"from {mb(v)} MB on" if v else "at no size measured" for f, v in where.items()}
    return (text + "\n\n" + f"Shared memory pays (>= {PAYS}x the socket's GB/s, at that size and every "
            f"larger one; pydist_shmall where measured, else the default): to a worker "
            f"{words['to_worker_gbps']}, back {words['back_gbps']}.")


def w2w_table(doc, md=False):
    out = []
    for peer, r in each_row(doc, "w2w", out, 7):
        base = row(doc, "w2w", PYDIST, nbytes=r["bytes"])
        out.append([peer, r["label"], mb(r["bytes"]), ms(r["seconds"]), gbps(r["gbps"]),
                    of_floor(doc, r)[0],
                    "" if peer == PYDIST else ratio_text(r["seconds"], base and base["seconds"])])
    return table(["peer", "how", "MB", "ms", "GB/s", "of memcpy", "peer/pydist (time)"], out, md)


def startup_table(doc, md=False):
    base = row(doc, "startup", PYDIST)
    out = []
    for peer in _peers(doc, "startup"):
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
    for peer in _peers(doc, "fanout"):
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
    for peer in _peers(doc, "scale"):
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


# each case's tables: (title, function)
TABLES = {
    "latency": [("Latency: synchronous no-op round trip to one worker", latency_table)],
    "throughput": [("Throughput: tiny tasks (x + 1)", throughput_table)],
    "bigdata": [("Bigdata: float64 arrays to a worker (sum back) and back from a worker", bigdata_table),
                ("Bigdata by size: pydist's shared memory against its socket, and pydist against Ray",
                 shm_table)],
    "w2w": [("Worker to worker on one host: worker a sends an array to worker b (sum back)", w2w_table)],
    "startup": [("Startup: from nothing to workers ready, and teardown", startup_table)],
    "fanout": [("Fanout: concurrent calls over the workers, submit all then wait all", fanout_table)],
    "scale": [("Scale: many workers, one call each; idle memory per worker", scale_table)],
}


# ---------------------------------------------------------------------------
# targets of the project issue


def _get(doc, case, peer, key, field, nbytes=None):
    r = row(doc, case, peer, key, nbytes)
    return None if r is None else r.get(field)


def _fastest(doc, case, peer, kind):
    """The fastest of ``peer``'s rows of this kind (throughput measures some kinds two ways)."""
    rs = [r for r in case_rows(doc, case, peer) or [] if kind_of(r) == kind]
    return max(rs, key=lambda r: r["tasks_per_s"], default=None)


BIG, SMALL = 100_000_000, 1_000_000  # the array sizes the issue sets targets for


def targets(doc) -> list[dict]:
    """Each target: name, measured, threshold, status in PASS / FAIL / n/a; ``text`` says the
    measured value against the threshold and, where there is one, the ratio to the reference."""
    g = lambda *a, **k: _get(doc, *a, **k)  # noqa: E731
    out = []

    def add(name, value, limit, ok, fmt, reference=None, ref_name=""):
        if value is None or limit is None:
            out.append({"target": name, "measured": None, "threshold": limit, "status": "n/a"})
            return
        text = f"{fmt(value)} vs {fmt(limit)}"
        if reference:
            text += f" ({value / reference:.2f}x {ref_name})"
        out.append({"target": name, "measured": value, "threshold": limit,
                    "status": "PASS" if ok(value, limit) else "FAIL", "text": text})

    at_most = lambda v, t: v <= t  # noqa: E731
    at_least = lambda v, t: v >= t  # noqa: E731
    micro = lambda v: us(v) + " µs"  # noqa: E731
    per_s = lambda v: f"{v:,.0f}/s"  # noqa: E731
    rate = lambda v: f"{v:.2f} GB/s"  # noqa: E731
    scaled = lambda factor, v: v and factor * v  # noqa: E731

    lat = g("latency", PYDIST, "default", "median_s")
    mp_lat = g("latency", "multiprocessing", "default", "median_s")
    add("latency <= 0.5 x multiprocessing Pool.apply (median)", lat, scaled(0.5, mp_lat), at_most,
        micro, mp_lat, "Pool.apply")
    for stat in ("median", "p99"):
        mine, bare = g("latency", PYDIST, "default", f"{stat}_s"), g("latency", "bare_socket", "threaded", f"{stat}_s")
        add(f"latency <= 1.5 x bare socket with reader thread ({stat})", mine, scaled(1.5, bare), at_most,
            micro, bare, "bare socket")

    pm1 = g("throughput", PYDIST, "unbatched", "tasks_per_s")
    mp1 = _fastest(doc, "throughput", "multiprocessing", "unbatched")
    add(f"unbatched pmap >= multiprocessing's faster chunksize=1 map "
        f"({mp1['label'] if mp1 else 'imap or Pool.map'}) (tasks/s)",
        pm1, mp1 and mp1["tasks_per_s"], at_least, per_s, mp1 and mp1["tasks_per_s"], "multiprocessing")
    pma = g("throughput", PYDIST, "batched", "tasks_per_s")
    pmap_mp = g("throughput", "multiprocessing", "batched", "tasks_per_s")
    add('pmap batch_size="auto" >= 0.5 x Pool.map default chunking (tasks/s)', pma,
        scaled(0.5, pmap_mp), at_least, per_s, pmap_mp, "Pool.map")

    for way, field in (("to a worker", "to_worker_gbps"), ("back", "back_gbps")):
        mine = g("bigdata", PYDIST, "default", field, nbytes=BIG)
        ray = g("bigdata", "ray", "default", field, nbytes=BIG)
        add(f"bigdata 100 MB {way} >= 1.2 x Ray", mine, scaled(1.2, ray), at_least, rate, ray, "Ray")
        small, small_ray = (g("bigdata", p, "default", field, nbytes=SMALL) for p in (PYDIST, "ray"))
        add(f"bigdata 1 MB {way} >= Ray", small, small_ray, at_least, rate, small_ray, "Ray")
        floor = g("bigdata", "memcpy", "touched", field, nbytes=BIG)
        add(f"(goal) bigdata 100 MB {way} within 2x of an in-process memcpy", mine, scaled(0.5, floor),
            at_least, rate, floor, "memcpy")
    for way, field, least in (("to a worker", "to_worker_gbps", 1.5), ("back", "back_gbps", 2.0)):
        mine = g("bigdata", PYDIST, "default", field, nbytes=BIG)
        bare = g("bigdata", "bare_socket", "default", field, nbytes=BIG)
        add(f"bigdata 100 MB {way} >= {least} GB/s", mine, least, at_least, rate)
        add(f"bigdata 100 MB {way} >= 0.8 x bare socket", mine, scaled(0.8, bare), at_least, rate,
            bare, "bare socket")

    n = doc["meta"]["config"]["workers"]
    add(f"{n} local workers ready <= 0.3 s (median)", g("startup", PYDIST, "default", "ready_s"), 0.3,
        at_most, lambda v: f"{v * 1e3:.1f} ms")

    big = doc["meta"]["config"]["scale_n"]
    rss = g("scale", PYDIST, f"n={big}", "worker_rss_mb")
    where = f"with {big} workers"
    if rss is None:
        rss, where = g("startup", PYDIST, "default", "worker_rss_mb"), f"with {n} workers"
    add(f"idle worker <= 30 MB RSS (median, {where})", rss, 30.0, at_most, lambda v: f"{v:.1f} MB")
    add(f"{big} workers ready < 8 x the time of {n}", g("scale", PYDIST, f"n={big}", "ratio_to_small"),
        8.0, lambda v, t: v < t, lambda v: f"{v:.2f}x")
    return out


def targets_table(doc, md=False):
    missing = "not measured (pydist or the reference)"
    rows = [[t["status"], t["target"], t.get("text", missing if t["status"] == "n/a" else "")]
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
    for p, d in doc["peers"].items():
        if d.get("variant_of"):
            env = " ".join(f"{k}={v}" for k, v in d["env"].items())
            lines.append(f"{p}: {d['description']} ({d['variant_of']} run with {env})")
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
        for title, fn in TABLES[case]:
            parts.append(("### " if md else "== ") + title + ("" if md else " =="))
            parts.append(fn(doc, md))
    parts.append(("### " if md else "== ") + "Targets (project issue)" + ("" if md else " =="))
    parts.append(targets_table(doc, md))
    problems = doc.get("problems", [])
    if problems:
        parts.append(("### " if md else "== ") + "Problems" + ("" if md else " =="))
        parts.append("\n".join(("- " if md else "  ") + p for p in problems))
    return "\n\n".join(parts) + "\n"
