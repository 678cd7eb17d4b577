"""startup: from nothing to n workers ready (one round trip done on each), then teardown.

Each repetition starts the peer from scratch (its library is already imported
in this process) and stops it until every process it started has exited.
Memory is read once the workers are idle: per worker (median RSS and USS) and
for the peer's whole process tree (schedulers, nannies, raylets, controllers).
"""

from __future__ import annotations

from bench.cases._lifecycle import cycle, summarize


def run(mod, cfg, tracker) -> list[dict]:
    cycles = [cycle(mod, cfg.workers, cfg, tracker, settle_s=0.2) for _ in range(cfg.startup_reps)]
    return [{"key": "default", "label": f"start({cfg.workers}) + a call on each", "n": cfg.workers,
             **summarize(cycles)}]
