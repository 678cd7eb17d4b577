"""bigdata: a large float64 array to a worker (its sum back), and one back from a worker."""

from __future__ import annotations

from bench import tasks
from bench.common import GB, check, median, perf_counter


def run(h, cfg) -> list[dict]:
    import numpy as np

    n = cfg.bigdata_bytes // 8
    rng = np.random.default_rng(12345)
    a = rng.random(n)
    expected_sum = float(a.sum())
    expected_back = tasks.expected_array(n)
    h.prepare_bigdata(a)  # untimed: the worker makes the array it will send back
    try:
        to_times, back_times = [], []
        for rep in range(cfg.bigdata_warmup + cfg.bigdata_reps):
            t0 = perf_counter()
            r = h.send_array(a)
            t1 = perf_counter()
            h.verify_send(a, expected_sum, r)
            t2 = perf_counter()
            b = h.get_array(n)
            t3 = perf_counter()
            check(getattr(b, "dtype", None) == np.float64 and b.shape == (n,)
                  and np.array_equal(b, expected_back),
                  f"bigdata: the array that came back is wrong ({type(b).__name__} "
                  f"{getattr(b, 'shape', None)} {getattr(b, 'dtype', None)})")
            del b
            if rep >= cfg.bigdata_warmup:
                to_times.append(t1 - t0)
                back_times.append(t3 - t2)
    finally:
        h.finish_bigdata()
    to_s, back_s = median(to_times), median(back_times)
    return [{
        "key": "default", "label": h.bigdata_label, "bytes": a.nbytes,
        "to_worker_s": to_s, "to_worker_gbps": a.nbytes / to_s / GB,
        "back_s": back_s, "back_gbps": a.nbytes / back_s / GB,
        "best_to_worker_gbps": a.nbytes / min(to_times) / GB, "best_back_gbps": a.nbytes / min(back_times) / GB,
        "reps": len(to_times), "all_to_worker_s": to_times, "all_back_s": back_times,
    }]
