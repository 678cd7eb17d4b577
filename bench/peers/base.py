"""The adapter interface every peer implements.

``start(n)`` (module level) returns a Handle whose workers exist; the harness
then calls ``ready()`` (one round trip on each worker) before it measures
anything.  Everything a case needs goes through these methods, so every peer
does the same work:

=====================  ==========================================================
``ready()``            one round trip on each worker; returns their pids
``call(i, f, *a)``     synchronous call of ``f(*a)`` on worker ``i``
``call_each(f, *a)``   ``f(*a)`` once on every worker; list of results
``latency_variants``   ``{label: fn}``; ``fn()`` is one synchronous no-op round trip
``submit_wait(f, xs)`` submit ``f(x)`` for every x (spread over the workers), then wait all
``throughput_variants`` ``[(kind, label, fn)]``, kind "unbatched"/"batched"; ``fn(f, xs)``
``send_array(a)``      send ``a`` to a worker, return what comes back (its sum)
``get_array(n)``       an array of n float64 back from a worker
``bigdata_variants()`` ``[(key, label, send, get)]``: the ways bigdata measures (default: the two above)
``pass_array(i, j, n)`` worker ``i`` sends its cached array of n float64 to worker ``j``; its sum back
``worker_pids()``      OS pids of the worker processes (for RSS)
``stop()``             shut everything down (the harness then checks no process is left)
=====================  ==========================================================

A method a peer has no equivalent for raises ``CaseSkipped`` (shown as n/a).
"""

from __future__ import annotations

import math
import time

from bench import tasks
from bench.common import BenchError, CaseSkipped, check


def default_chunksize(nitems: int, nworkers: int) -> int:
    """multiprocessing.Pool.map's default chunking rule, used for peers that batch
    only when given a chunk size: about four chunks per worker."""
    chunksize, extra = divmod(nitems, nworkers * 4)
    return chunksize + 1 if extra else max(chunksize, 1)


def chunks(xs, size):
    return [xs[i:i + size] for i in range(0, len(xs), size)]


class Handle:
    """A running set of ``n`` workers of one peer."""

    peer = "?"
    # what each measured operation is, in the peer's own API (printed in tables)
    latency_label = "call"
    fanout_label = "submit all, wait all"
    bigdata_label = "call with the array"
    w2w_label = "worker to worker"

    def __init__(self, n: int):
        self.n = n

    # -- to implement -----------------------------------------------------
    def call(self, i: int, f, *args):
        raise NotImplementedError

    def submit_wait(self, f, xs) -> list:
        raise CaseSkipped("no submit-many equivalent")

    def throughput_variants(self):
        raise CaseSkipped("no map equivalent")

    def worker_pids(self) -> list[int]:
        return self.call_each(tasks.getpid)

    def stop(self) -> None:
        raise NotImplementedError

    # -- derived ----------------------------------------------------------
    def call_each(self, f, *args) -> list:
        return [self.call(i, f, *args) for i in range(self.n)]

    def ready(self) -> list[int]:
        pids = self.call_each(tasks.getpid)
        check(len(set(pids)) == self.n,
              f"{self.peer}: expected {self.n} distinct worker pids, got {pids}")
        return pids

    def latency_variants(self):
        return {self.latency_label: lambda: self.call(0, tasks.noop)}

    def prepare_bigdata(self, a) -> None:
        """Untimed set-up before the bigdata repetitions (cache the array to send back)."""
        self.call_each(tasks.cache_array, a.size)

    def finish_bigdata(self) -> None:
        self.call_each(tasks.drop_cached_arrays)

    def send_array(self, a):
        return self.call(0, tasks.array_sum, a)

    def verify_send(self, a, expected_sum, result) -> None:
        check(isinstance(result, float) and math.isclose(result, expected_sum, rel_tol=1e-12),
              f"{self.peer}: array sum came back as {result!r}, expected {expected_sum!r}")

    def get_array(self, n: int):
        return self.call(0, tasks.get_cached_array, n)

    def bigdata_variants(self):
        return [("default", self.bigdata_label, self.send_array, self.get_array)]

    def pass_array(self, src: int, dst: int, n: int) -> float:
        raise CaseSkipped("workers cannot send data to one another")


class PoolHandle(Handle):
    """A peer whose calls go to whichever worker is free (no way to aim at one).

    ``call_each`` submits tagged tasks until every worker process has run one;
    ``call(i, ...)`` ignores ``i``."""

    def _map_tagged(self, f, args, count):  # returns [(pid, result)], one per submitted task
        raise NotImplementedError

    def call_each(self, f, *args, timeout: float = 120.0) -> list:
        want = set(self.worker_pids())
        check(len(want) == self.n, f"{self.peer}: {len(want)} worker processes, expected {self.n}")
        got = {}
        end = time.monotonic() + timeout
        while set(got) != want:
            if time.monotonic() > end:
                raise BenchError(f"{self.peer}: only workers {sorted(got)} of {sorted(want)} "
                                 f"ran a task within {timeout:.0f} s")
            for pid, res in self._map_tagged(f, args, self.n):
                check(pid in want, f"{self.peer}: a task ran in unknown process {pid}")
                got.setdefault(pid, res)
        return [got[p] for p in sorted(got)]

    def ready(self) -> list[int]:
        return self.call_each(tasks.getpid)
