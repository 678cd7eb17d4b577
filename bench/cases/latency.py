"""latency: median and p99 of a synchronous no-op round trip to one worker.

Also per call, over all the measured calls: CPU of the master, CPU of the peer's other
processes, and wake-ups (voluntary context switches) of all of them.
"""

from __future__ import annotations

from bench.common import check, cpu_per_unit, cpu_snapshot, median, p99, perf_counter


def measure(fn, warmup: int, calls: int) -> dict:
    for _ in range(warmup):
        check(fn() == 0, "latency: a warm-up no-op returned a wrong value")
    samples = []
    before = cpu_snapshot()
    for _ in range(calls):
        t0 = perf_counter()
        r = fn()
        t1 = perf_counter()
        check(r == 0, f"latency: the no-op returned {r!r}, expected 0")
        samples.append(t1 - t0)
    usage = cpu_per_unit(before, cpu_snapshot(), calls)
    return {
        "median_s": median(samples),
        "p99_s": p99(samples),
        "min_s": min(samples),
        "mean_s": sum(samples) / len(samples),
        "calls": calls,
        "warmup": warmup,
        **usage,
    }


def run(h, cfg) -> list[dict]:
    rows = []
    variants = h.latency_variants()
    for k, (label, fn) in enumerate(variants.items()):
        key = "default" if len(variants) == 1 else ("plain" if k == 0 else "threaded")
        rows.append({"key": key, "label": label, **measure(fn, cfg.latency_warmup, cfg.latency_calls)})
    return rows
