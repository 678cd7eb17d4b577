"""scale: start 32 workers, one call to each; time and idle memory per worker, against 2.

pydist's case (addprocs(32)); multiprocessing and loky run it too as
references for what a forked / spawned idle Python worker costs here.
"""

from __future__ import annotations

from bench.cases._lifecycle import cycle, summarize

PEERS = {"pydist", "multiprocessing", "loky", "bare_socket"}


def run(mod, cfg, tracker) -> list[dict]:
    rows = []
    for n in (cfg.workers, cfg.scale_n):
        cycles = [cycle(mod, n, cfg, tracker, settle_s=cfg.scale_idle_settle_s)
                  for _ in range(cfg.scale_reps)]
        rows.append({"key": f"n={n}", "label": f"start({n}) + a call on each", "n": n,
                     **summarize(cycles)})
    small, big = rows
    big["ratio_to_small"] = big["ready_s"] / small["ready_s"]
    return rows
