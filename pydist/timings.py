"""Timings of the calls this process runs for other processes (dashboard, performance_report).

Each user call served here (calls._serve_call; pydist's own internal calls are left out)
leaves one record:

    (seq, name, queued, start, end, bytes_in, bytes_out, ok)

`queued` is when its frame was read, `start`/`end` bracket the user function (Unix seconds,
time.time, so records of processes on one machine line up), `bytes_in` is the call's size on
the wire, `bytes_out` what was sent back at once (the result of remotecall_fetch; 0 for a
result that stays here until fetched).

Cost.  The call path is the latency benchmark's: recording is a counter step, a tuple and one
store into a preallocated ring of settings.TIMINGS_KEPT slots, atomic under the GIL, so no
lock and no dict per call, and memory stays bounded whatever the call rate. A reader (the
master, through `since`, an internal call) copies the ring and keeps what is newer than what
it saw last; records overwritten before anyone looked are lost, which the gap in `seq` shows.
A failed call also leaves its traceback in a short deque of recent errors.
"""

from __future__ import annotations

import collections
import functools
import itertools
import time
import types

from . import settings
from .process import func_name, internal, is_internal

__all__ = ["record", "call_name", "size", "since", "last_seq", "wraps_first_argument", "unwraps_with",
           "ERRORS_KEPT"]

KEPT = max(settings.TIMINGS_KEPT, 0)
# Tracebacks of the last failed calls kept for the dashboard's error panel.
ERRORS_KEPT = 50

_ring: list = [None] * KEPT
_seq = itertools.count(1)              # next() is atomic under the GIL: no lock
_errors: collections.deque = collections.deque(maxlen=ERRORS_KEPT)   # (seq, time, name, text)
now = time.time


def wraps_first_argument(func):
    """Mark a runner whose first argument is the function that matters (pmap's batches), so
    timings name the call after that function."""
    return unwraps_with(lambda args: (args[0], args[1:]))(func)


def unwraps_with(unwrap):
    """Mark a runner that calls another function: `unwrap(args)` gives (that function, its
    args), and timings name the call after it (a CachingPool's call by reference)."""
    def mark(func):
        func._pydist_unwrap = unwrap
        return func
    return mark


def call_name(func, args) -> str | None:
    """The name a call is recorded under, or None when it is not recorded (timings off, or
    one of pydist's internal calls)."""
    if not KEPT or is_internal(func):
        return None
    while True:
        # only pydist's own runners are marked: a user's object that makes up attributes
        # (a proxy's __getattr__) is never asked for one
        unwrap = func.__dict__.get("_pydist_unwrap") if isinstance(func, types.FunctionType) else None
        if unwrap is not None and args:
            try:
                func, args = unwrap(args)
            except Exception:          # the call itself will say what is wrong
                break
        elif isinstance(func, functools.partial):
            func, args = func.func, func.args + tuple(args)
        else:
            break
    return func_name(func)


def size(body, buffers=()) -> int:
    """Bytes of a frame's body and out-of-band buffers."""
    n = len(body)
    for buffer in buffers:
        n += memoryview(buffer).nbytes
    return n


def record(name: str, queued: float, start: float, end: float, bytes_in: int, bytes_out: int,
           failure=None) -> None:
    """Keep one call's timings (any thread; no lock: see the module docstring)."""
    seq = next(_seq)
    _ring[seq % KEPT] = (seq, name, queued, start, end, bytes_in, bytes_out, failure is None)
    if failure is not None:
        _errors.append((seq, end, name, getattr(failure, "traceback_text", "") or str(failure)))


@internal
def since(seq: int) -> tuple[list[tuple], list[tuple]]:
    """Records and errors newer than `seq`, oldest first (runs on request of the master)."""
    fresh = sorted(r for r in list(_ring) if r is not None and r[0] > seq)
    return fresh, [e for e in list(_errors) if e[0] > seq]


@internal
def last_seq() -> int:
    """The seq of the newest record, 0 for none (a report's starting point)."""
    return max((r[0] for r in list(_ring) if r is not None), default=0)
