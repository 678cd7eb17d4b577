"""fanout: N concurrent calls spread over the workers: submit all, then wait all."""

from __future__ import annotations

from bench import tasks
from bench.common import check, median, perf_counter


def run(h, cfg) -> list[dict]:
    xs = list(range(cfg.fanout_calls))
    want = [x + 1 for x in xs]
    times = []
    for rep in range(cfg.fanout_warmup + cfg.fanout_reps):
        if len(times) >= 3 and sum(times) > cfg.fanout_budget_s:
            break  # slow peer: fewer repetitions (their count is reported)
        t0 = perf_counter()
        out = h.submit_wait(tasks.inc, xs)
        t1 = perf_counter()
        check(list(out) == want, f"fanout: wrong results (first {list(out)[:3]})")
        if rep >= cfg.fanout_warmup:
            times.append(t1 - t0)
    t = median(times)
    return [{"key": "default", "label": h.fanout_label, "calls": len(xs), "median_s": t,
             "min_s": min(times), "calls_per_s": len(xs) / t, "reps": len(times),
             "all_seconds": times}]
