"""One start -> ready -> measure memory -> stop -> all gone cycle (startup and scale)."""

from __future__ import annotations

import time

from bench.common import MB, BenchError, check, median, perf_counter, rss_of, total_rss


def cycle(mod, n: int, cfg, tracker, settle_s: float) -> dict:
    h = None
    try:
        t0 = perf_counter()
        h = mod.start(n)
        pids = h.ready()
        t1 = perf_counter()
        check(len(set(pids)) == n, f"{mod.NAME}: {len(set(pids))} workers ready, expected {n}")
        tracker.snapshot()
        time.sleep(settle_s)  # untimed: let the workers go idle before reading their memory
        worker_mem = rss_of(pids)
        tree_mem = total_rss(tracker.snapshot())
        t2 = perf_counter()
        hh, h = h, None
        hh.stop()
        t3 = perf_counter()
        left = tracker.wait_gone(cfg.leftover_timeout_s)
        t4 = perf_counter()
        if left:
            raise BenchError(f"{mod.NAME}: processes left after stop (killed): {left}")
    finally:
        if h is not None:  # failed half-way: stop what was started, leave nothing behind
            try:
                h.stop()
            except Exception:
                pass
    rss = [m["rss"] for m in worker_mem.values()]
    uss = [m["uss"] for m in worker_mem.values() if m["uss"] is not None]
    return {
        "ready_s": t1 - t0, "stop_call_s": t3 - t2, "teardown_s": t4 - t2,
        "worker_rss_mb": median(rss) / MB, "worker_uss_mb": median(uss) / MB if uss else None,
        "tree_rss_mb": tree_mem["rss"] / MB, "tree_uss_mb": tree_mem["uss"] / MB,
        "tree_nprocs": tree_mem["nprocs"],
    }


def summarize(cycles: list[dict]) -> dict:
    keys = ["ready_s", "stop_call_s", "teardown_s", "worker_rss_mb", "worker_uss_mb",
            "tree_rss_mb", "tree_uss_mb", "tree_nprocs"]
    out = {k: median([c[k] for c in cycles if c[k] is not None]) for k in keys}
    out["first_ready_s"] = cycles[0]["ready_s"]
    out["reps"] = len(cycles)
    out["all_ready_s"] = [c["ready_s"] for c in cycles]
    out["all_teardown_s"] = [c["teardown_s"] for c in cycles]
    return out
