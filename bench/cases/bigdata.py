"""bigdata: float64 arrays of several sizes to a worker (their sum back), and back from a worker.

Sizes go from below pydist's shared-memory threshold (1 MiB) to 100 MB, so the tables show
where shared memory starts to pay; the in-process copy of the ``memcpy`` peer is the physical
limit every GB/s is also shown against.
"""

from __future__ import annotations

from bench import tasks
from bench.common import GB, check, median, perf_counter, repeat_timed


def _measure(h, cfg, way, a, expected_sum, expected_back) -> dict:
    import numpy as np

    key, label, send, get = way
    n = a.size

    def step():
        t0 = perf_counter()
        r = send(a)
        t1 = perf_counter()
        h.verify_send(a, expected_sum, r)
        del r
        t2 = perf_counter()
        b = get(n)
        t3 = perf_counter()
        check(getattr(b, "dtype", None) == np.float64 and b.shape == (n,)
              and np.array_equal(b, expected_back),
              f"bigdata: the array that came back is wrong ({type(b).__name__} "
              f"{getattr(b, 'shape', None)} {getattr(b, 'dtype', None)})")
        return t1 - t0, t3 - t2

    runs = repeat_timed(step, cfg.bigdata_warmup, cfg.bigdata_reps, cfg.bigdata_min_s,
                        cfg.bigdata_max_reps)
    to_times, back_times = [r[0] for r in runs], [r[1] for r in runs]
    to_s, back_s = median(to_times), median(back_times)
    return {
        "key": key, "label": label, "bytes": a.nbytes,
        "to_worker_s": to_s, "to_worker_gbps": a.nbytes / to_s / GB,
        "back_s": back_s, "back_gbps": a.nbytes / back_s / GB,
        "best_to_worker_gbps": a.nbytes / min(to_times) / GB, "best_back_gbps": a.nbytes / min(back_times) / GB,
        "reps": len(runs), "all_to_worker_s": to_times, "all_back_s": back_times,
    }


def run(h, cfg) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(12345)
    rows = []
    for nbytes in cfg.bigdata_sizes:
        a = rng.random(nbytes // 8)
        expected_sum = float(a.sum())
        expected_back = tasks.expected_array(a.size)
        h.prepare_bigdata(a)  # untimed: the worker makes the array it will send back
        try:
            for way in h.bigdata_variants():
                rows.append(_measure(h, cfg, way, a, expected_sum, expected_back))
        finally:
            h.finish_bigdata()
    return rows
