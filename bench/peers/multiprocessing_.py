"""multiprocessing.Pool with the platform's default start method (fork on Linux, Python 3.11)."""

from __future__ import annotations

import multiprocessing

from bench import tasks
from bench.peers.base import PoolHandle

NAME = "multiprocessing"
DISTRIBUTIONS = []  # the standard library: the Python version says it


class MPHandle(PoolHandle):
    peer = NAME
    latency_label = "Pool.apply"
    fanout_label = "apply_async x N, get x N"
    bigdata_label = "Pool.apply(f, (array,))"

    def __init__(self, n: int):
        super().__init__(n)
        self.pool = multiprocessing.Pool(n)
        self.start_method = multiprocessing.get_start_method()

    def call(self, i, f, *args):
        return self.pool.apply(f, args)

    def _map_tagged(self, f, args, count):
        return self.pool.map(tasks.tagged, [f] * count, chunksize=1) if not args else \
            self.pool.starmap(tasks.tagged, [(f, *args)] * count, chunksize=1)

    def submit_wait(self, f, xs):
        rs = [self.pool.apply_async(f, (x,)) for x in xs]
        return [r.get() for r in rs]

    def throughput_variants(self):
        # unbatched twice: imap hands results back one by one, map(chunksize=1) all at the end
        # with less work per task; the unbatched-pmap target compares with the faster of the two
        return [
            ("unbatched", "imap(f, xs, chunksize=1)", lambda f, xs: list(self.pool.imap(f, xs, chunksize=1))),
            ("unbatched", "Pool.map(f, xs, chunksize=1)", lambda f, xs: self.pool.map(f, xs, chunksize=1)),
            ("batched", "Pool.map(f, xs)  default chunks", lambda f, xs: self.pool.map(f, xs)),
        ]

    def worker_pids(self):
        return [p.pid for p in self.pool._pool]

    def stop(self):
        self.pool.close()
        self.pool.join()


def start(n: int) -> MPHandle:
    return MPHandle(n)
