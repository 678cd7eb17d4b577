"""ipyparallel: a local cluster (controller + n engines) started from Python."""

from __future__ import annotations

import logging

import ipyparallel as ipp  # ImportError -> skipped

from bench.common import CaseSkipped
from bench.peers.base import Handle, default_chunksize

NAME = "ipyparallel"
DISTRIBUTIONS = ["ipyparallel", "pyzmq", "tornado"]


class IppHandle(Handle):
    peer = NAME
    latency_label = "client[i].apply_sync(f)"
    fanout_label = "client[i].apply_async x N, get"
    bigdata_label = "client[i].apply_sync(f, array)"

    def __init__(self, n: int):
        super().__init__(n)
        self.cluster = ipp.Cluster(n=n, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(n, timeout=120)
        self.ids = sorted(self.rc.ids)[:n]
        self.views = [self.rc[e] for e in self.ids]
        self.lview = self.rc.load_balanced_view(self.ids)

    def call(self, i, f, *args):
        return self.views[i].apply_sync(f, *args)

    def submit_wait(self, f, xs):
        v, n = self.views, len(self.views)
        rs = [v[k % n].apply_async(f, x) for k, x in enumerate(xs)]
        return [r.get() for r in rs]

    def throughput_variants(self):
        lv = self.lview

        def batched(f, xs):
            return list(lv.map_sync(f, xs, chunksize=default_chunksize(len(xs), self.n)))

        return [
            ("unbatched", "load_balanced_view.map_sync chunksize=1", lambda f, xs: list(lv.map_sync(f, xs))),
            ("batched", "load_balanced_view.map_sync chunksize=len/4n", batched),
        ]

    def pass_array(self, src, dst, n):
        raise CaseSkipped("engines exchange data only through the client (push/pull)")

    def stop(self):
        try:
            self.rc.close()
        finally:
            self.cluster.stop_cluster_sync()


def start(n: int) -> IppHandle:
    return IppHandle(n)
