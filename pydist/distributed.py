"""distributed(): Julia's @distributed, one contiguous chunk of the input per worker, reduced
in order or awaited as a task.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Iterable

from .calls import remotecall
from .process import workers
from .refs import fetch


def _splitrange(n: int, np_: int) -> list[range]:
    """Julia's splitrange: np_ contiguous chunks, the first n % np_ one longer, none empty."""
    each, extras = divmod(n, np_)
    chunks, lo = [], 0
    for i in range(np_ if each > 0 else extras):
        hi = lo + each + (1 if i < extras else 0)
        chunks.append(range(lo, hi))
        lo = hi
    return chunks


def _reduce_chunk(func, reducer, chunk):
    return functools.reduce(reducer, map(func, chunk))


def _map_chunk(func, chunk) -> None:
    for x in chunk:
        func(x)


class DistributedTask:
    """What distributed() without a reducer returns: `.wait()` blocks until every chunk is done
    and raises RemoteException if one failed."""

    _pydist_future_like = True       # fetch(task) waits, as for a Future

    def __init__(self, futures: list):
        self.futures = futures

    def wait(self, timeout: float | None = None) -> "DistributedTask":
        """Wait for every chunk; TimeoutError if they are not all done within `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for fut in self.futures:
            fut.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self

    def isready(self) -> bool:
        return all(fut.isready() for fut in self.futures)

    done = isready

    def fetch(self, timeout: float | None = None) -> None:
        self.wait(timeout)


def distributed(func: Callable, iterable: Iterable, reducer: Callable | None = None):
    """Julia's @distributed: one contiguous chunk of `iterable` per worker (chunk i on the
    i-th worker, ascending ids). With a reducer, each worker reduces func over its chunk, the
    partial results are reduced in chunk order and returned; without, returns at once a task
    whose .wait() raises if a chunk failed."""
    items = iterable if isinstance(iterable, (range, list, tuple)) else list(iterable)
    ids = workers()
    chunks = _splitrange(len(items), len(ids))
    if reducer is not None:
        if not chunks:
            raise ValueError("distributed() with a reducer needs a non-empty iterable")
        futures = [remotecall(_reduce_chunk, ids[i], func, reducer, items[c.start:c.stop])
                   for i, c in enumerate(chunks)]
        return functools.reduce(reducer, [fetch(f) for f in futures])
    return DistributedTask([remotecall(_map_chunk, ids[i], func, items[c.start:c.stop])
                            for i, c in enumerate(chunks)])
