"""loky's reusable process executor (the engine under joblib)."""

from __future__ import annotations

from loky import get_reusable_executor  # ImportError -> skipped

from bench import tasks
from bench.common import BenchError
from bench.peers.base import PoolHandle, default_chunksize

NAME = "loky"
DISTRIBUTIONS = ["loky", "cloudpickle"]


class LokyHandle(PoolHandle):
    peer = NAME
    latency_label = "submit(f).result()"
    fanout_label = "submit x N, result x N"
    bigdata_label = "submit(f, array).result()"

    def __init__(self, n: int):
        super().__init__(n)
        # reuse="False"-like behaviour: kill any previous executor, start a fresh one
        self.ex = get_reusable_executor(max_workers=n, timeout=None, kill_workers=True, reuse=False)

    def call(self, i, f, *args):
        return self.ex.submit(f, *args).result()

    def _map_tagged(self, f, args, count):
        futs = [self.ex.submit(tasks.tagged, f, *args) for _ in range(count)]
        return [fu.result() for fu in futs]

    def submit_wait(self, f, xs):
        futs = [self.ex.submit(f, x) for x in xs]
        return [fu.result() for fu in futs]

    def throughput_variants(self):
        def batched(f, xs):
            return list(self.ex.map(f, xs, chunksize=default_chunksize(len(xs), self.n)))
        return [
            ("unbatched", "executor.map(f, xs)  chunksize=1", lambda f, xs: list(self.ex.map(f, xs))),
            ("batched", "executor.map(f, xs, chunksize=len/4n)", batched),
        ]

    def worker_pids(self):
        procs = getattr(self.ex, "_processes", None)
        if not procs:  # workers are spawned on the first submit
            self.ex.submit(tasks.noop).result()
            procs = self.ex._processes
        if procs is None:
            raise BenchError("loky: cannot list the executor's worker processes")
        return sorted(procs.keys())

    def stop(self):
        self.ex.shutdown(wait=True, kill_workers=False)


def start(n: int) -> LokyHandle:
    return LokyHandle(n)
