"""pmap (Julia: pmap.jl); distributed() is distributed.py's.

pmap runs one driver thread (`pydist-pmap-<n>`) per pool member.  A driver borrows a worker
from the pool and keeps several batches in flight to it (more while its batches are quick),
so a worker never waits for the master between tiny tasks; it gives the worker back after
LEASE_BATCHES batches, so concurrent pmaps on one pool share it.  The batches sent ahead
wait on the worker in a lane (calls.py): one runs at a time per worker, as in Julia's pmap
(`per_worker=k` gives k lanes).  Element failures go through on_error (on the worker), then
retry_delays/retry_check (here); the first unhandled failure stops the pmap and is raised.

Stopping.  When the caller's wait ends with an exception (Ctrl-C's KeyboardInterrupt, or
any BaseException), the pmap cancels its lanes on every worker it uses: queued batches never
start, running ones get a KeyboardInterrupt, and the caller waits up to CANCEL_SECONDS for
the workers to be back in the pool before it re-raises, so the next call starts on idle
workers. The first unhandled failure of an element stops the others the same way.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from . import output
from .errors import ProcessExitedException, RemoteException, element_context, remote_exception
from .messages import Mode
from .pools import AbstractWorkerPool, default_worker_pool
from .process import STATE, myid, result, send_call
from .replies import WAKE_SECONDS
from .batch import columns_of, run_batch
from .calls import cancel_remotely, new_lane

T = TypeVar("T")

# Batches in flight per worker: one per lane at first (nothing waits on a worker before it
# is known to be quick: an idle worker could take it); then, while each batch is answered
# within QUICK_BATCH seconds of being sent, DEEP_PIPELINE: tiny tasks flow without the
# worker ever waiting for the master, and several are sent with one write. Slower batches
# keep one queued behind the running ones, and never more than the worker's fair share of
# what is left: more would leave work queued on one worker while another is idle, and lose
# more work when a worker dies.
DEEP_PIPELINE = 16
QUICK_BATCH = 0.001
# Consecutive batches merge into one call while the worker answers an element every
# QUICK_ELEMENT seconds or faster, doubling up to the size batch_size="auto" would
# pick: tiny functions then cost one message per many elements, as with batch_size="auto",
# while anything slower keeps one call per batch. Results, order, on_error and retries stay
# per element; with one call at a time per worker, queued calls ran in the same order anyway.
QUICK_ELEMENT = 50e-6
# A driver returns its worker to the pool after this many batches, letting other users in.
LEASE_BATCHES = 256
# batch_size="auto" aims at this many batches per worker (load balance vs. per-call cost).
AUTO_BATCHES_PER_WORKER = 4
# A cancelled pmap waits this long for its workers to answer the cancel (their running
# batches interrupted) before it re-raises: long enough for a worker that takes the interrupt,
# short enough that a worker stuck in C code does not hold up the user's Ctrl-C.
CANCEL_SECONDS = 1.0


class _Batch:
    """Elements start, start+1, ... as one call (one sequence per argument). A failed
    element is retried alone, as a batch of one carrying its retry count and state; a batch
    lost with its worker is sent again once, whole (`rerun`)."""
    __slots__ = ("start", "columns", "attempt", "state", "rerun")

    def __init__(self, start: int, columns: tuple, attempt: int = 0, state: Any = 0,
                 rerun: bool = False):
        self.start, self.columns, self.attempt, self.state = start, columns, attempt, state
        self.rerun = rerun

    def __len__(self) -> int:
        return len(self.columns[0])

    def element(self, offset: int) -> tuple:
        return tuple(c[offset:offset + 1] for c in self.columns)


class _Done:
    """A batch run here, in the driver's thread; looks like a Reply to the driver."""

    def __init__(self, call):
        try:
            self.value, self.error = call(), None
        except BaseException as err:
            self.value, self.error = None, err


active_runs: set = set()        # the pmaps running now (_Run), for the dashboard; set.add is atomic


class _Run:
    def __init__(self, func, columns, pool, distributed, batch_size, on_error, retry_delays,
                 retry_check, progress, per_worker):
        self.func, self.pool, self.local = func, pool, not distributed
        self.on_error, self.retry_delays, self.retry_check = on_error, list(retry_delays), retry_check
        n = len(columns[0])
        self.results: list[Any] = [None] * n
        self.lock = threading.Lock()         # guards next_start, retries, error, drivers
        self.cond = threading.Condition(self.lock)   # (`with self.lock`: cheaper than the Condition's)
        self.count_lock = threading.Lock()   # guards remaining (taken per answer, apart from the drivers)
        self.columns, self.batch_size, self.next_start = columns, batch_size, 0
        self.merge_limit = 1                 # batches merged into one call at most (run)
        self.width = 1                       # drivers at most (run)
        self.retries: collections.deque[_Batch] = collections.deque()
        self.remaining = n
        self.error: BaseException | None = None
        self.drivers = 0
        self.leases: set[_Lease] = set()     # the workers borrowed now (guarded by lock)
        self.per_worker = per_worker
        self.progress = progress
        if progress:
            from tqdm.auto import tqdm     # imported on demand: it costs workers 0.1 s at start
            self.bar = tqdm(total=n, unit="task")

    # -- the caller's thread -----------------------------------------------------------------
    def run(self, width: int) -> list:
        started = 0
        self.width = width
        if not self.local:
            auto = math.ceil(len(self.results) / (width * AUTO_BATCHES_PER_WORKER))
            self.merge_limit = max(1, auto // self.batch_size)
        try:
            with self.lock:
                while self.remaining and self.error is None:
                    while self._has_work() and self.drivers < width:
                        self.drivers += 1
                        started += 1
                        threading.Thread(target=self._drive, name=f"pydist-pmap-{started}",
                                         daemon=True).start()
                    self.cond.wait()
                failed = self.error is not None
            if failed:                      # the first unhandled failure stops the rest
                self._cancel(self.error)
            with self.lock:
                while self.drivers:
                    self.cond.wait()
        except BaseException as err:        # Ctrl-C, say: nothing of this pmap goes on
            self._cancel(err)
            raise
        finally:
            if self.progress:
                self.bar.close()
        if self.error is not None:
            raise self.error
        return self.results

    def _cancel(self, error: BaseException) -> None:
        """Stop sending, cancel every lane on the workers, and wait (a little) for them."""
        with self.lock:
            if self.error is None:
                self.error = error
            leases = list(self.leases)
        for lease in leases:
            cancel_remotely(lease.pid, lease.lanes)
        deadline = time.monotonic() + CANCEL_SECONDS
        with self.lock:
            while self.drivers and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())

    # -- driver threads --------------------------------------------------------------------
    def _has_work(self) -> bool:
        return self.next_start < len(self.results) or bool(self.retries)

    def _plenty_left(self) -> bool:
        """More elements wait to be sent than there are drivers: one may queue work ahead on
        its worker without taking it from a worker that will be idle."""
        with self.lock:
            unsent = len(self.results) - self.next_start + sum(len(b) for b in self.retries)
        return unsent >= self.width

    def _next_batch(self, merged: int = 1) -> _Batch | None:
        """The next batch to send, `merged` batches as one (made now: a million elements
        are not a million objects up front), then the elements waiting for a retry."""
        with self.lock:
            if self.error is not None:
                return None
            start = self.next_start
            if start < len(self.results):
                self.next_start = end = start + self.batch_size * merged
                columns = self.columns
                if len(columns) == 1:
                    return _Batch(start, (columns[0][start:end],))
                return _Batch(start, tuple(c[start:end] for c in columns))
            return self.retries.popleft() if self.retries else None

    def _drive(self) -> None:
        try:
            while True:
                with self.lock:
                    if self.error is not None or not self._has_work():
                        return
                pid = myid() if self.local else self.pool.take()
                try:
                    self._lease(pid)
                finally:
                    if not self.local:
                        self.pool.put(pid)
        except BaseException as err:
            self._fail(err)
        finally:
            with self.lock:
                self.drivers -= 1
                self.cond.notify_all()

    def _lease(self, pid: int) -> None:
        lease = _Lease(self, pid)
        with self.lock:
            if self.error is not None:
                return
            self.leases.add(lease)
        try:
            lease.run()
        finally:
            with self.lock:
                self.leases.discard(lease)

    def _submit(self, pid: int, batch: _Batch, lane: int, on_done):
        """Send a batch; `on_done(reply)` collects its answer. A batch run here, or one that
        could not be sent, comes back as a _Done instead."""
        columns, alone = batch.columns, self._alone(batch)
        if pid == myid():
            if alone:
                return _Done(lambda: self.func(*(c[0] for c in columns)))
            return _Done(lambda: run_batch(self.func, self.on_error, columns))
        send, extra = self.pool._prepare(self.func, pid)     # a CachingPool sends func once
        try:
            if alone:                           # Julia's pmap: one remotecall_fetch per element
                args = (columns[0][0],) if len(columns) == 1 else tuple(c[0] for c in columns)
                return send_call(pid, Mode.FETCH, send, (*extra, *args) if extra else args, {},
                                 (0, lane), flush=False, on_done=on_done)
            func = functools.partial(send, *extra) if extra else send
            return send_call(pid, Mode.FETCH, run_batch, (func, self.on_error, columns), {},
                             (0, lane), flush=False, on_done=on_done)
        except BaseException as err:
            return _DoneError(err)

    def _alone(self, batch: _Batch) -> bool:
        """A batch of one element without on_error is a plain call of func: its answer is
        the value itself, not run_batch's (values, failures)."""
        return len(batch) == 1 and self.on_error is None

    def _collect(self, batch: _Batch, handle) -> None:
        """Store a batch's answer. Failures go to `_failed` on a runner thread: this may run
        on a link's reader, which must not run user code (retry_check) that may wait."""
        if isinstance(handle, _Done):
            outcome, error = handle.value, handle.error
            if isinstance(error, Exception) and not isinstance(error, ProcessExitedException):
                error = remote_exception(myid(), error)
        else:
            try:
                outcome, error = result(handle), None
            except BaseException as err:
                outcome, error = None, err
        if error is not None:
            STATE.runner.submit(self._failed, batch, {offset: error for offset in range(len(batch))})
            return
        values, failures = ([outcome], None) if self._alone(batch) else outcome
        start = batch.start
        self.results[start:start + len(values)] = values
        if failures:
            STATE.runner.submit(self._failed, batch, failures)
        done = len(values) - len(failures or ())
        if done:
            self._elements_done(done)

    def _failed(self, batch: _Batch, failures: dict) -> None:
        try:
            if not batch.rerun and all(isinstance(e, ProcessExitedException) for e in failures.values()):
                # Its worker died, not the function: run it once more on another worker.
                self._requeue(_Batch(batch.start, batch.columns, batch.attempt, batch.state, True))
                return
            for offset, error in failures.items():
                self._element_failed(batch, offset, error)
        except BaseException as err:
            self._fail(err)

    def _elements_done(self, count: int) -> None:
        if self.progress:
            self.bar.update(count)
        with self.count_lock:
            self.remaining -= count
            finished = not self.remaining
        if finished:
            with self.lock:
                self.cond.notify_all()

    def _element_failed(self, batch: _Batch, offset: int, error: BaseException) -> None:
        if not isinstance(error, (RemoteException, ProcessExitedException)):
            self._fail(error)
            return
        if batch.attempt < len(self.retry_delays):
            retry, state = True, batch.state
            if self.retry_check is not None:
                original = error.captured if isinstance(error, RemoteException) else error
                answer = self.retry_check(state, original)
                state, retry = answer if isinstance(answer, tuple) else (state, answer)
            if retry:
                again = _Batch(batch.start + offset, batch.element(offset), batch.attempt + 1, state)
                timer = threading.Timer(self.retry_delays[batch.attempt], self._requeue, args=(again,))
                timer.daemon = True
                timer.start()
                return
        if isinstance(error, RemoteException) and not error.context:
            error.context = element_context("pmap", batch.start + offset, batch.element(offset))
        self._fail(error)

    def _requeue(self, batch: _Batch) -> None:
        with self.lock:
            self.retries.append(batch)
            self.cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
            self.cond.notify_all()


class _Lease:
    """A worker borrowed by a driver thread. The driver sends batches, several per write;
    each answer is collected on the link's reader thread as it arrives (a reply callback),
    and the driver wakes only to send more, once half of what is in flight is done."""

    def __init__(self, run: _Run, pid: int):
        self.run_, self.pid = run, pid
        self.lanes = [new_lane() for _ in range(run.per_worker)]
        self.lock = threading.Lock()         # guards in_flight, depth, merged, waiting
        self.cond = threading.Condition(self.lock)
        self.in_flight = 0
        self.depth = len(self.lanes)          # one per lane until answers show the pace
        self.merged = 1               # batches per call now (QUICK_ELEMENT)
        self.answered_at = 0.0        # when the last answer came
        self.waiting = False          # the driver sleeps until in_flight <= depth // 2

    def run(self) -> None:
        run, pid, sent = self.run_, self.pid, 0
        while True:
            with self.lock:
                while self.in_flight > self.depth // 2:
                    self.waiting = True
                    self.cond.wait(WAKE_SECONDS)
                self.waiting = False
                busy, room, merged = self.in_flight, self.depth - self.in_flight, self.merged
            lanes, batches = len(self.lanes), []
            while len(batches) < room and sent < LEASE_BATCHES and pid not in STATE.dead:
                if busy + len(batches) >= lanes and not run._plenty_left():
                    break                     # it would wait on this worker while another is idle
                batch = run._next_batch(merged)
                if batch is None:
                    break
                batches.append(batch)
            if not batches:
                with self.lock:
                    while self.in_flight:
                        self.waiting = True
                        self.cond.wait(WAKE_SECONDS)
                    self.waiting = False
                return
            sent += len(batches)
            with self.lock:
                self.in_flight += len(batches)
            sent_at = time.monotonic()
            first = sent - len(batches)
            for i, batch in enumerate(batches):
                lane = self.lanes[(first + i) % lanes]
                handle = run._submit(pid, batch, lane, functools.partial(self._answered, batch, sent_at))
                if isinstance(handle, _Done):
                    self._answered(batch, sent_at, handle)
            _flush_calls(pid)

    def _answered(self, batch: _Batch, sent_at: float, handle) -> None:
        try:
            self.run_._collect(batch, handle)
        except BaseException as err:
            self.run_._fail(err)
        now = time.monotonic()
        quick = now - sent_at < QUICK_BATCH                    # answered, queue included
        with self.lock:
            self.in_flight -= 1
            self.depth = max(DEEP_PIPELINE, len(self.lanes) + 1) if quick else len(self.lanes) + 1
            gap, self.answered_at = now - max(self.answered_at, sent_at), now   # the worker's pace
            if gap < QUICK_ELEMENT * len(batch):
                self.merged = min(self.merged * 2, self.run_.merge_limit)
            else:
                self.merged = 1
            if self.waiting and (self.in_flight <= self.depth // 2 or not self.in_flight):
                self.waiting = False          # one wake-up is enough
                self.cond.notify()


def _flush_calls(pid: int) -> None:
    link = STATE.links.get(pid)
    if link is not None:
        try:
            link.flush()
        except ProcessExitedException:
            pass                # the calls' replies carry the error


class _DoneError(_Done):
    def __init__(self, error: BaseException):
        self.value, self.error = None, error


def pmap(func: Callable[..., T], *iterables: Iterable[Any], pool: AbstractWorkerPool | None = None,
         distributed: bool = True, batch_size: int | str = 1, on_error: Callable | None = None,
         retry_delays: Iterable[float] = (), retry_check: Callable | None = None,
         progress: bool = False, per_worker: int = 1) -> list[T]:
    """Map `func` over the iterables on the pool's workers; results in order (Julia: pmap).

    batch_size: elements per remote call (an int, or "auto"). While the function is tiny
    (the worker answers an element every 50 µs or faster) consecutive batches travel merged
    into one call, up to the size "auto" would pick, so the default batch_size=1 costs about
    what batch_size="auto" does for them; each element still has its own result, on_error and
    retries, in order. distributed=False runs on local threads. on_error(exc) runs on the worker
    and its return value replaces a failed element's result; otherwise a failure is retried
    after each of `retry_delays` while retry_check(state, exc) -> (state, retry) allows it; the
    first unhandled failure stops the pmap and is raised (RemoteException, or ProcessExitedException for a worker that
    died a second time). A batch whose worker died is run once more, on another worker,
    before any of that applies. progress=True shows a progress bar with rate and ETA.

    per_worker: batches running at once on each worker (default 1, as Julia's pmap and
    multiprocessing; the next batches are sent ahead and wait on the worker, so no round
    trip is lost). Raise it for calls that mostly wait (I/O) and can share a process.

    An exception in the caller while it waits (Ctrl-C) cancels the pmap on the workers:
    queued batches never start and running ones are interrupted."""
    if not isinstance(per_worker, int) or per_worker < 1:
        raise ValueError(f"per_worker must be a positive int, not {per_worker!r}")
    if not iterables:
        return []
    columns = columns_of(iterables)
    n = len(columns[0])
    pool = pool if pool is not None else default_worker_pool()
    width = pool.length()
    if width == 0 or (pool.workers() == {myid()}):
        distributed = False
    if not distributed:
        width, batch_size = max(1, min(n, width or 1, 32)), 1
    elif batch_size == "auto":
        batch_size = max(1, math.ceil(n / (width * AUTO_BATCHES_PER_WORKER)))
    elif not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', not {batch_size!r}")
    if not n:
        return []
    run = _Run(func, columns, pool, distributed, batch_size, on_error, retry_delays, retry_check,
               progress, per_worker)
    previous = output.relay_write
    if progress:
        from tqdm.auto import tqdm
        output.relay_write = tqdm.write      # worker lines print above the bar, not through it
    active_runs.add(run)                  # the dashboard shows their progress
    try:
        return run.run(width)
    finally:
        output.relay_write = previous
        active_runs.discard(run)
