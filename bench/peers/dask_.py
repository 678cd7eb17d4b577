"""dask.distributed: LocalCluster of worker processes (one thread each), no dashboard."""

from __future__ import annotations

import logging
import os
import warnings

import dask  # noqa: F401 -- ImportError -> skipped
import dask.bag as db
from distributed import Client, LocalCluster

from bench import tasks
from bench.peers.base import Handle, default_chunksize

NAME = "dask"
DISTRIBUTIONS = ["dask", "distributed", "tornado", "msgpack", "cloudpickle"]


class DaskHandle(Handle):
    peer = NAME
    latency_label = "submit(f, workers=[w]).result()"
    fanout_label = "submit(workers=[w]) x N, gather"
    bigdata_label = "scatter(direct=True) + submit, result"
    w2w_label = "submit(workers=[b]) with a future made on a"

    def __init__(self, n: int):
        super().__init__(n)
        for name in ("distributed", "distributed.core", "distributed.worker", "distributed.nanny",
                     "distributed.scheduler", "distributed.http.proxy", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(n)
        self.addrs = sorted(self.client.scheduler_info()["workers"])

    def call(self, i, f, *args):
        return self.client.submit(f, *args, workers=[self.addrs[i]], pure=False).result()

    def submit_wait(self, f, xs):
        a, n = self.addrs, len(self.addrs)
        futs = [self.client.submit(f, x, workers=[a[k % n]], pure=False) for k, x in enumerate(xs)]
        return self.client.gather(futs)

    def throughput_variants(self):
        c = self.client

        def unbatched(f, xs):
            return c.gather(c.map(f, xs, pure=False))

        def batched(f, xs):  # dask's own batching: a bag with Pool.map's number of chunks
            nparts = -(-len(xs) // default_chunksize(len(xs), self.n))
            return c.compute(db.from_sequence(xs, npartitions=nparts).map(f)).result()

        return [
            ("unbatched", "client.map(f, xs) + gather", unbatched),
            ("batched", "bag.from_sequence(npartitions=4n).map", batched),
        ]

    def send_array(self, a):
        # dask's documented way to move a large object: scatter it to the worker
        # directly, then run the task there (submitting the array itself makes it
        # part of the task graph and routes it through the scheduler).
        fut_a = self.client.scatter(a, workers=[self.addrs[0]], direct=True, hash=False)
        try:
            return self.client.submit(tasks.array_sum, fut_a, workers=[self.addrs[0]],
                                      pure=False).result()
        finally:
            fut_a.release()

    def pass_array(self, src, dst, n):
        c = self.client
        made = c.submit(tasks.get_cached_array, n, workers=[self.addrs[src]], pure=False)
        try:
            return c.submit(tasks.array_sum, made, workers=[self.addrs[dst]], pure=False).result()
        finally:
            made.release()

    def worker_pids(self):
        pids = self.client.run(os.getpid)
        return [pids[a] for a in self.addrs]

    def stop(self):
        self.client.close()
        self.cluster.close()


def start(n: int) -> DaskHandle:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DaskHandle(n)
