"""Counts for a full run and for ``--quick`` (every code path, smaller numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Config:
    workers: int = 2
    # latency: synchronous no-op round trips to one worker
    latency_warmup: int = 200
    latency_calls: int = 2000
    # throughput: tiny tasks x + 1 through the peer's map
    throughput_tasks: int = 20_000
    throughput_warmup_tasks: int = 500
    throughput_reps: int = 3
    # a peer slower than this per case stops repeating (at least one timed run is
    # always made; the number of runs is in the results): 20,000 unbatched tasks
    # take minutes on some peers and the median of 3 would add nothing but time
    throughput_budget_s: float = 60.0
    # bigdata: float64 arrays of these many bytes each way (from below pydist's 1 MiB
    # shared-memory threshold to 100 MB, so the table shows where shared memory starts to pay);
    # per size, after the warm-ups: at least bigdata_reps runs, more until bigdata_min_s is
    # spent (small sizes need many runs for a stable median), at most bigdata_max_reps
    bigdata_sizes: tuple = (100_000, 1_000_000, 2_000_000, 10_000_000, 100_000_000)
    bigdata_warmup: int = 2
    bigdata_reps: int = 5
    bigdata_min_s: float = 0.5
    bigdata_max_reps: int = 200
    # w2w: worker 0 sends an array of these many bytes to worker 1 (same repetition rule)
    w2w_sizes: tuple = (1_000_000, 100_000_000)
    # startup: from nothing to n workers ready, then teardown
    startup_reps: int = 5
    # fanout: this many concurrent calls over the workers, submit all then wait all
    fanout_calls: int = 400
    fanout_warmup: int = 2
    fanout_reps: int = 20
    fanout_budget_s: float = 30.0
    # scale: addprocs(scale_n) then one call to each, against the same for `workers`
    scale_n: int = 32
    scale_reps: int = 3
    scale_idle_settle_s: float = 1.0
    # limits, so that one hung peer cannot hang the suite
    case_timeout_s: float = 900.0
    stop_timeout_s: float = 120.0
    leftover_timeout_s: float = 30.0
    quick: bool = False

    def as_dict(self):
        return asdict(self)


def full() -> Config:
    return Config()


def quick() -> Config:
    return Config(
        latency_warmup=20, latency_calls=200,
        throughput_tasks=500, throughput_warmup_tasks=50, throughput_reps=1,
        bigdata_sizes=(1_000_000, 10_000_000), bigdata_warmup=1, bigdata_reps=2,
        bigdata_min_s=0.0, w2w_sizes=(1_000_000, 10_000_000),
        startup_reps=1,
        fanout_warmup=1, fanout_reps=2,
        scale_reps=1, scale_idle_settle_s=0.3,
        case_timeout_s=120.0, stop_timeout_s=60.0,
        quick=True,
    )
