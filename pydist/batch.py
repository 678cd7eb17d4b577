"""A pmap's elements as batches: the input as one sliceable column per argument (the
master's side), and what a worker runs for one batch, the function over its elements with
each element's failure handled on its own (on_error there, retries on the master: pmap.py)."""

from __future__ import annotations

import itertools
from typing import Callable

from . import timings
from .errors import remote_exception
from .process import myid


@timings.wraps_first_argument          # timings name a batch after func
def run_batch(func: Callable, on_error: Callable | None, columns: tuple) -> tuple[list, dict | None]:
    """Run on the worker: func over a batch given as one sequence per argument (so a batch
    pickles as plain lists or a range, not as a tuple per element). Returns the values and
    {offset: RemoteException} for elements that raised and on_error did not replace."""
    values: list = []
    failures = None
    while True:
        stopped: list = []
        try:   # extend keeps the values made before an exception
            values.extend(_calls(func, [c[len(values):] for c in columns], stopped))
            if not stopped:
                return values, failures
            failure = stopped[0]
        except Exception as err:
            failure = err
        if on_error is not None:
            try:
                values.append(on_error(failure))
                continue
            except Exception as err:
                failure = err
        values.append(None)
        failures = failures or {}
        failures[len(values) - 1] = remote_exception(myid(), failure)


def _calls(func: Callable, columns: list, stopped: list):
    """func(*args) for each element; a StopIteration from func ends it into `stopped` (map,
    or a plain generator, would take it for the end of the input and drop the element)."""
    for args in zip(*columns):
        try:
            yield func(*args)
        except StopIteration as err:
            stopped.append(err)
            return


def columns_of(iterables: tuple) -> tuple:
    """One sliceable sequence per argument, all as long as the shortest (like zip, so an
    endless iterator such as itertools.repeat(k) is fine next to a list). Lists, tuples and
    ranges are used as they are: a slice of a range pickles in a few bytes."""
    sequences = (list, tuple, range)
    sized = [len(it) for it in iterables if isinstance(it, sequences)]
    if sized:
        n = min(sized)
        columns = [it if isinstance(it, sequences) else list(itertools.islice(it, n))
                   for it in iterables]
    else:
        columns = [list(column) for column in zip(*zip(*iterables))] or [[] for _ in iterables]
    n = min(len(c) for c in columns)
    return tuple(c[:n] if len(c) > n else c for c in columns)
