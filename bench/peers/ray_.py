"""Ray: a local Ray instance with num_cpus=n.

"Worker i" is an actor (a dedicated process one can aim calls at: latency,
bigdata, startup's round trip on each); maps and fanout use Ray tasks, Ray's
own way to spread work, on its pool of n CPU slots.
"""

from __future__ import annotations

import logging

import ray  # ImportError -> skipped

from bench import tasks
from bench.peers.base import Handle, chunks, default_chunksize

NAME = "ray"
DISTRIBUTIONS = ["ray", "msgpack"]


class Worker:
    """The actor class: runs any importable function."""

    def call(self, f, *args):
        return f(*args)


class RayHandle(Handle):
    peer = NAME
    latency_label = "ray.get(actor.call.remote(f))"
    fanout_label = "f.remote() x N tasks, ray.get"
    bigdata_label = "ray.get(actor.call.remote(f, array))"
    w2w_label = "actor a returns the array (object store), actor b gets its ref"

    def __init__(self, n: int):
        super().__init__(n)
        ray.init(num_cpus=n, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, configure_logging=True)
        # actors hold no CPU while idle (num_cpus=0) so the n CPU slots stay free for tasks
        actor_cls = ray.remote(num_cpus=0)(Worker)
        self.actors = [actor_cls.remote() for _ in range(n)]
        self._remote = {}

    def _task(self, f):
        rf = self._remote.get(f)
        if rf is None:
            rf = self._remote[f] = ray.remote(f)
        return rf

    def call(self, i, f, *args):
        return ray.get(self.actors[i].call.remote(f, *args))

    def pass_array(self, src, dst, n):
        ref = self.actors[src].call.remote(tasks.get_cached_array, n)
        return ray.get(self.actors[dst].call.remote(tasks.array_sum, ref))

    def submit_wait(self, f, xs):
        rf = self._task(f)
        return ray.get([rf.remote(x) for x in xs])

    def throughput_variants(self):
        def unbatched(f, xs):
            rf = self._task(f)
            return ray.get([rf.remote(x) for x in xs])

        def batched(f, xs):  # Ray has no map-with-chunks for tasks: Pool.map's chunks, by hand
            rc = self._task(tasks.map_chunk)
            parts = ray.get([rc.remote(f, c) for c in chunks(xs, default_chunksize(len(xs), self.n))])
            return [y for part in parts for y in part]

        return [
            ("unbatched", "f.remote(x) per item, ray.get", unbatched),
            ("batched", "tasks over len/4n chunks (by hand)", batched),
        ]

    def stop(self):
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        ray.shutdown()


def start(n: int) -> RayHandle:
    return RayHandle(n)


def cleanup() -> None:
    """After a failure half-way: leave no Ray instance behind."""
    if ray.is_initialized():
        ray.shutdown()
