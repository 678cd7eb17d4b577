"""pydist: the library under test, through its public API only (API.md)."""

from __future__ import annotations

from pydist import (addprocs, fetch, pmap, remotecall, remotecall_fetch,  # ImportError -> skipped
                    rmprocs, workers)

from bench import tasks
from bench.peers.base import Handle

NAME = "pydist"
DISTRIBUTIONS = ["pydist", "cloudpickle"]


def send_cached_array(dst: int, n: int) -> float:
    """Runs on a worker: send its cached array to worker ``dst``, return the sum ``dst`` made."""
    return remotecall_fetch(tasks.array_sum, dst, tasks.get_cached_array(n))


class PydistHandle(Handle):
    peer = NAME
    latency_label = "remotecall_fetch"
    fanout_label = "remotecall x N, fetch x N"
    bigdata_label = "remotecall_fetch(f, pid, array)"
    w2w_label = "on worker a: remotecall_fetch(f, b, array)"

    def __init__(self, n: int):
        super().__init__(n)
        self.ids = addprocs(n)
        if len(self.ids) != n:
            raise RuntimeError(f"addprocs({n}) returned {self.ids}")

    def call(self, i, f, *args):
        return remotecall_fetch(f, self.ids[i], *args)

    def submit_wait(self, f, xs):
        ids, n = self.ids, len(self.ids)
        futs = [remotecall(f, ids[k % n], x) for k, x in enumerate(xs)]
        return [fetch(fu) for fu in futs]

    def throughput_variants(self):
        return [
            # as a user writes it: batch_size=1 and per_worker=1 are the defaults, and pmap
            # merges consecutive batches of a function this quick into one call by itself
            ("unbatched", "pmap(f, xs)  defaults: batch_size=1 (quick batches merge), per_worker=1",
             lambda f, xs: pmap(f, xs)),
            ("batched", 'pmap(f, xs, batch_size="auto")', lambda f, xs: pmap(f, xs, batch_size="auto")),
        ]

    def pass_array(self, src, dst, n):
        return remotecall_fetch(send_cached_array, self.ids[src], self.ids[dst], n)

    def worker_pids(self):
        return [remotecall_fetch(tasks.getpid, w) for w in self.ids]

    def stop(self):
        ids, self.ids = self.ids, []
        if ids:
            rmprocs(*ids).wait()


def start(n: int) -> PydistHandle:
    return PydistHandle(n)


def cleanup() -> None:
    """After a failure half-way: remove whatever workers are still registered."""
    ws = [w for w in workers() if w != 1]
    if ws:
        rmprocs(*ws).wait()
