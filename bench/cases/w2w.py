"""w2w: worker 0 sends an array to worker 1 of the same cluster, on one host; its sum back.

The master only starts the exchange: the array goes from one worker process to the other
(pydist: a remotecall from worker 0 to worker 1 with the array; Ray: an object one actor
returns, passed to another; Dask: a future made on one worker, consumed on another).
Pool-style peers have no way for one worker to address another: n/a.
"""

from __future__ import annotations

import math

from bench import tasks
from bench.common import GB, check, median, perf_counter, repeat_timed


def run(h, cfg) -> list[dict]:
    rows = []
    for nbytes in cfg.w2w_sizes:
        n = nbytes // 8
        expected = n * (n - 1) / 2  # the sum of tasks.expected_array(n), exact in float64
        h.call_each(tasks.cache_array, n)  # untimed: worker 0 makes the array it will send

        def step():
            t0 = perf_counter()
            r = h.pass_array(0, 1, n)
            t1 = perf_counter()
            check(isinstance(r, float) and math.isclose(r, expected, rel_tol=1e-12),
                  f"w2w: worker 1 summed {r!r}, expected {expected!r}")
            return (t1 - t0,)

        try:
            runs = repeat_timed(step, cfg.bigdata_warmup, cfg.bigdata_reps, cfg.bigdata_min_s,
                                cfg.bigdata_max_reps)
        finally:
            h.call_each(tasks.drop_cached_arrays)
        times = [r[0] for r in runs]
        t = median(times)
        rows.append({"key": "default", "label": h.w2w_label, "bytes": n * 8, "seconds": t,
                     "gbps": n * 8 / t / GB, "best_gbps": n * 8 / min(times) / GB,
                     "reps": len(times), "all_seconds": times})
    return rows
