"""`Executor`: pydist's workers behind the `concurrent.futures.Executor` interface.

    with Executor() as ex:                       # the default worker pool
        futures = [ex.submit(f, x) for x in xs]  # concurrent.futures.Future objects
        for fut in as_completed(futures): ...
        ys = list(ex.map(f, xs, chunksize=16))   # one remote call per chunk of 16

How work flows.  `submit` only queues the call and returns a `concurrent.futures.Future`.
One dispatcher thread per executor (`pydist-executor-<n>`, started when work arrives, gone
when the queue is empty) takes each queued call in order, borrows a free worker from the
pool (blocking while every worker is busy, so at most one call of this executor runs per
worker and other pool users get their turn), marks the future running and sends the call
(`process.send_call`, FETCH mode).  The link's reader thread answers the call's `Reply`;
its done-callback hands the reply to a runner thread (`STATE.runner`), which gives the
worker back to the pool, unpickles the result and completes the future.  Nothing polls or
sleeps.  When the pool lends the master (the default pool does when there are no workers),
the call runs on a runner thread here.

Errors.  As with `ProcessPoolExecutor`, `future.result()` raises the exception the call
raised (`except ValueError:` works), chained from (`__cause__`) the `RemoteException` that
carries the worker id and the remote traceback.  When the exception's class cannot be
rebuilt here, the `RemoteException` itself is raised.  A worker that dies during a call fails
that call's future with `ProcessExitedException`; the other calls go on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from .calls import cancel_remotely, new_lane
from .errors import CapturedException, RemoteException
from .messages import Mode
from .pools import AbstractWorkerPool, default_worker_pool
from .process import STATE, myid, result, send_call

__all__ = ["Executor"]

_numbers = itertools.count(1)


class _Call:
    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: cf.Future, fn: Callable, args: tuple, kwargs: dict):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class Executor(cf.Executor):
    """A `concurrent.futures.Executor` that runs calls on the workers of `pool`
    (default: `default_worker_pool()`, every worker of the cluster, resolved at first use).

    `submit` never blocks; calls start in submission order as workers of the pool become
    free, one call per worker at a time. `map(..., chunksize=n)` sends n elements per remote
    call. `shutdown(wait=True, cancel_futures=False)` refuses new work, optionally cancels
    the calls that have not started, and waits for the others. The futures work with
    `concurrent.futures.wait`, `as_completed` and `asyncio.wrap_future`, and the executor
    with `loop.run_in_executor`."""

    def __init__(self, pool: AbstractWorkerPool | None = None):
        self._pool = pool
        self._number = next(_numbers)
        self._lock = threading.Lock()     # guards _queue, _outstanding, _shutdown, _dispatching, _running
        self._queue: collections.deque[_Call] = collections.deque()
        self._outstanding: set[cf.Future] = set()    # submitted and not done yet
        self._shutdown = False
        self._dispatching = False                     # a dispatcher thread is running
        self._running: dict[cf.Future, tuple[int, int]] = {}   # started calls: (pid, lane)

    @property
    def pool(self) -> AbstractWorkerPool:
        """The worker pool the calls run on."""
        if self._pool is None:
            self._pool = default_worker_pool()
        return self._pool

    # -- concurrent.futures.Executor -----------------------------------------------------------
    def submit(self, fn: Callable, /, *args, **kwargs) -> cf.Future:
        """Schedule fn(*args, **kwargs) on a worker; returns a concurrent.futures.Future at once.

        Raises RuntimeError after shutdown()."""
        future: cf.Future = cf.Future()
        start = False
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(_Call(future, fn, args, kwargs))
            self._outstanding.add(future)
            if not self._dispatching:
                self._dispatching = start = True
        future.add_done_callback(self._forget)
        if start:
            threading.Thread(target=self._dispatch, name=f"pydist-executor-{self._number}",
                             daemon=True).start()
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like builtin map, each element (or each chunk of `chunksize` elements) computed by
        one remote call; results are yielded in order. Like ProcessPoolExecutor.map, all the
        calls are submitted at once and `timeout` counts from this call. When the iteration
        ends early (an exception such as Ctrl-C's KeyboardInterrupt, or the iterator closed),
        the calls not started are cancelled and the running ones interrupted."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables)]
            return self._results(futures, deadline)
        chunks = _chunks(zip(*iterables), chunksize)
        futures = [self.submit(_run_chunk, fn, chunk) for chunk in chunks]
        return _flatten(self._results(futures, deadline))

    def _results(self, futures: list[cf.Future], deadline: float | None) -> Iterator:
        futures.reverse()
        try:
            while futures:
                remaining = None if deadline is None else deadline - time.monotonic()
                yield futures[-1].result(remaining)
                futures.pop()
        finally:
            self._cancel(futures)

    def _cancel(self, futures: list[cf.Future]) -> None:
        """Cancel calls not started yet; interrupt those running (one message per worker)."""
        lanes: dict[int, list[int]] = {}
        for future in futures:
            if not future.cancel():
                with self._lock:
                    started = self._running.get(future)
                if started is not None:
                    lanes.setdefault(started[0], []).append(started[1])
        for pid, ids in lanes.items():
            cancel_remotely(pid, ids)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with cancel_futures, cancel the calls that have not started;
        with wait, block until every other call is done. Safe to call more than once."""
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding)
        if cancel_futures:
            for future in outstanding:
                future.cancel()             # only succeeds while the call has not started
        if wait:
            cf.wait(outstanding)

    # -- the dispatcher thread -----------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start queued calls in order; the thread ends when the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._dispatching = False
                    return
                call = self._queue.popleft()
            if call.future.cancelled():
                continue
            try:
                pool = self.pool
                pid = pool.take()
            except BaseException as err:          # e.g. a WorkerPool with no live workers
                if call.future.set_running_or_notify_cancel():
                    call.future.set_exception(err)
                continue
            if not call.future.set_running_or_notify_cancel():   # cancelled meanwhile
                _give_back(pool, pid)
                continue
            self._start(call, pool, pid)

    def _start(self, call: _Call, pool: AbstractWorkerPool, pid: int) -> None:
        future, fn, args, kwargs = call.future, call.fn, call.args, call.kwargs
        if pid == myid():
            STATE.runner.submit(_run_here, future, pool, pid, fn, args, kwargs)
            return
        try:
            prepare = getattr(pool, "_prepare", None)
            send, extra = prepare(fn, pid) if prepare is not None else (fn, ())
            # Its own lane, so that it alone can be interrupted (_cancel). on_done runs on the
            # link's reader thread: it hands over to a runner thread at once.
            lane = new_lane()
            with self._lock:
                self._running[future] = (pid, lane)
            send_call(pid, Mode.FETCH, send, (*extra, *args), kwargs, (0, lane),
                      on_done=lambda reply: STATE.runner.submit(_finish, future, pool, pid, reply))
        except BaseException as err:              # cannot pickle, worker gone
            _give_back(pool, pid)
            future.set_exception(_native(err))

    def _forget(self, future: cf.Future) -> None:
        with self._lock:
            self._outstanding.discard(future)
            self._running.pop(future, None)

    def __repr__(self) -> str:
        with self._lock:
            state = "shut down" if self._shutdown else "running"
            queued, outstanding = len(self._queue), len(self._outstanding)
        return f"<pydist.Executor {state}: {outstanding} unfinished call(s), {queued} queued>"


# -- runner threads ----------------------------------------------------------------------------
def _finish(future: cf.Future, pool: AbstractWorkerPool, pid: int, reply) -> None:
    """A remote call answered: give the worker back, then complete the future."""
    _give_back(pool, pid)
    try:
        value = result(reply)
    except BaseException as err:
        future.set_exception(_native(err))
    else:
        future.set_result(value)


def _run_here(future: cf.Future, pool: AbstractWorkerPool, pid: int, fn, args, kwargs) -> None:
    try:
        value = fn(*args, **kwargs)
    except BaseException as err:
        future.set_exception(err)
    else:
        future.set_result(value)
    finally:
        _give_back(pool, pid)


def _give_back(pool: AbstractWorkerPool, pid: int) -> None:
    try:
        pool.put(pid)
    except Exception:
        pass            # the pool's owner is gone: nobody else can use the worker either


def _native(err: BaseException) -> BaseException:
    """The call's own exception, chained from the RemoteException (ProcessPoolExecutor style)."""
    if isinstance(err, RemoteException):
        captured = err.captured
        if isinstance(captured, Exception) and not isinstance(captured, (CapturedException,
                                                                          RemoteException)):
            captured.__cause__ = err
            return captured
    return err


# -- map with chunks ------------------------------------------------------------------------------
def _run_chunk(fn: Callable, chunk: list[tuple]) -> list:
    """Runs on the worker: fn over one chunk of argument tuples."""
    return [fn(*args) for args in chunk]


def _chunks(items: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _flatten(results: Iterator[list]) -> Iterator[Any]:
    for chunk in results:
        yield from chunk
