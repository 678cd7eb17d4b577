"""The physical limit of bigdata: the same array copied in this process, no second process.

Two rows: ``np.copyto`` into an array that was allocated and written before the timing (a
copy between pages that exist, as into a reused shared-memory arena), and ``np.copyto``
into freshly mapped memory (the kernel also supplies and zeroes every page: what a receiver
that allocates per message pays).  "To worker" copies the master's random array, "back"
the worker's array: the same copy, on the arrays the other peers move.
"""

from __future__ import annotations

import mmap

import numpy as np  # ImportError -> skipped

from bench import tasks
from bench.common import CaseSkipped, check
from bench.peers.base import Handle

NAME = "memcpy"
DISTRIBUTIONS = ["numpy"]
CASES = ("bigdata",)  # the only case with a meaning for a copy in one process


def _into_fresh(src):
    dst = np.frombuffer(mmap.mmap(-1, src.nbytes), dtype=src.dtype)
    np.copyto(dst, src)
    return dst


class MemcpyHandle(Handle):
    peer = NAME

    def __init__(self, n: int):
        super().__init__(n)
        self._dst = self._back = None

    def call(self, i, f, *args):
        raise CaseSkipped("the in-process floor runs no functions")

    def ready(self):
        return []

    def worker_pids(self):
        return []

    def prepare_bigdata(self, a):
        self._dst = np.ones_like(a)  # allocated and every page written: touched
        self._back = tasks.expected_array(a.size)

    def finish_bigdata(self):
        self._dst = self._back = None

    def _into_touched(self, src):
        np.copyto(self._dst, src)
        return self._dst

    def bigdata_variants(self):
        return [
            ("touched", "np.copyto into an array written before",
             self._into_touched, lambda n: self._into_touched(self._back)),
            ("fresh", "np.copyto into freshly mmap'd memory",
             _into_fresh, lambda n: _into_fresh(self._back)),
        ]

    def verify_send(self, a, expected_sum, result):
        check(np.array_equal(result, a), "memcpy: the copy differs from the array")

    def stop(self):
        self._dst = self._back = None


def start(n: int) -> MemcpyHandle:
    return MemcpyHandle(n)
