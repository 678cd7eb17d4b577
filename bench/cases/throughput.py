"""throughput: tasks per second for N tiny tasks (x + 1), unbatched and batched.

Besides the time, each row says where it went, per task: CPU of the master, CPU of the
peer's other processes, and wake-ups (voluntary context switches) of all of them.
"""

from __future__ import annotations

from bench import tasks
from bench.common import check, cpu_per_unit, cpu_snapshot, median, perf_counter


def run(h, cfg) -> list[dict]:
    rows = []
    xs = list(range(cfg.throughput_tasks))
    want = [x + 1 for x in xs]
    warm = list(range(cfg.throughput_warmup_tasks))
    warm_want = [x + 1 for x in warm]
    for kind, label, fn in h.throughput_variants():
        check(list(fn(tasks.inc, warm)) == warm_want, f"throughput {label}: wrong warm-up results")
        times, usage = [], []
        spent = 0.0
        for _ in range(cfg.throughput_reps):
            if times and spent > cfg.throughput_budget_s:
                break  # slow peer: fewer repetitions (their count is reported)
            before = cpu_snapshot()
            t0 = perf_counter()
            out = fn(tasks.inc, xs)
            t1 = perf_counter()
            usage.append(cpu_per_unit(before, cpu_snapshot(), len(xs)))
            out = list(out)
            check(out == want, f"throughput {label}: wrong results "
                               f"(len {len(out)}, first {out[:3]}, expected {want[:3]}...)")
            times.append(t1 - t0)
            spent += t1 - t0
        t = median(times)
        # a peer may measure a kind more than one way: the first is the kind's key
        key = kind if kind not in {r["key"] for r in rows} else f"{kind}: {label}"
        rows.append({"key": key, "kind": kind, "label": label, "tasks": len(xs), "seconds": t,
                     "tasks_per_s": len(xs) / t, "reps": len(times), "all_seconds": times,
                     **{k: median([u[k] for u in usage]) for k in usage[0]}})
    return rows
