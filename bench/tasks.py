"""The functions that every peer runs on its workers.

They live in an importable module (not ``__main__``) so that every peer ships
them the same way: pickled by reference (module + name), never by value.  The
harness puts the repository root on ``PYTHONPATH`` before any worker starts, so
every worker process, whatever launches it, can import ``bench.tasks``.
"""

from __future__ import annotations

import os

# Per-process cache of the array that bigdata's "array back" step returns, so
# the timed call measures the transfer and not the creation of the array.
_ARRAY_CACHE: dict[int, object] = {}


def noop():
    """The latency probe: no argument, returns a small constant."""
    return 0


def inc(x):
    """The tiny task of the throughput and fanout cases."""
    return x + 1


def map_chunk(f, chunk):
    """Apply ``f`` to every item of ``chunk``: manual batching for peers without it."""
    return [f(x) for x in chunk]


def array_sum(a) -> float:
    """Sum of an array sent to the worker (returns a Python float)."""
    return float(a.sum())


def expected_array(n: int):
    """The array that ``get_cached_array(n)`` returns; also used by the caller to check it."""
    import numpy as np

    return np.arange(n, dtype=np.float64)


def cache_array(n: int) -> int:
    """Create (once) the array of ``n`` float64 this process will send back; returns the pid."""
    if n not in _ARRAY_CACHE:
        _ARRAY_CACHE[n] = expected_array(n)
    return os.getpid()


def get_cached_array(n: int):
    """Return the array made by ``cache_array(n)``.

    Raises if this process has no such array: a timed call must never include
    creating it (that would make the peer that hit an uncached worker look slow).
    """
    try:
        return _ARRAY_CACHE[n]
    except KeyError:
        raise RuntimeError(f"bench: no cached array of {n} items in process {os.getpid()}; "
                           "cache_array() must run on every worker first") from None


def drop_cached_arrays() -> int:
    """Free the cached arrays (so idle RSS is not inflated later); returns the pid."""
    _ARRAY_CACHE.clear()
    return os.getpid()


def getpid() -> int:
    """The worker's OS process id."""
    return os.getpid()


def tagged(f, *args):
    """``(pid, f(*args))``: lets pool-style peers, which cannot aim a call at one
    worker, see which worker ran it (see ``peers.base.PoolHandle.call_each``)."""
    return os.getpid(), f(*args)
