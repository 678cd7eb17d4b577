"""The remotecall family (Julia: remotecall.jl, macros.jl) and the callee side of a call.

Callee side: the reader thread hands each CALL frame to `_on_call`, which makes the result
Future's entry at once (so a DEL_CLIENTS that follows on the same link finds it) and runs the
call on the reading thread (transport.Link.run_inline: reading moves to another thread if the
call waits or runs long): unpickle, run, then answer according to the mode (messages.Mode).
An argument that cannot be unpickled, or a result that cannot be pickled, fails that call
alone with a RemoteException; the link stays up.

`interrupt` raises KeyboardInterrupt in the threads running user calls (not in pydist's own
internal calls), and wakes a `time.sleep` in them (worker.py makes sleep interruptible).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import logging
import operator
import sys
import threading
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, SupportsIndex, TypeVar, Union, cast, overload

from . import timings
from .errors import CapturedException, remote_exception
from .messages import NO_RRID, Kind, Mode
from .process import STATE, exit_process, internal, is_internal, myid, result, send_call, workers
from .owners import RRID, _Failed, _lookup, _refs, store_outcome
from .refs import Future, expect_push, fetch
from .serialize import dumps, dumps_small, loads
from .threads import release_reading

if TYPE_CHECKING:
    from .pools import AbstractWorkerPool

log = logging.getLogger("pydist")

P = ParamSpec("P")
T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])
# Where a call runs: a process id (any integer type), or a pool that lends a worker.
Where = Union[int, SupportsIndex, "AbstractWorkerPool"]

# -- interrupting running calls ------------------------------------------------------------
_running_lock = threading.Lock()       # guards _running, _interrupted, _idle_waiters (a plain lock:
_became_idle = threading.Condition(_running_lock)   # taken twice per call); notified when idle
_running: set[int] = set()           # thread ids running a user function now
_interrupted: set[int] = set()       # of those, the ones already sent a KeyboardInterrupt
_wakeups: dict[int, threading.Event] = {}   # thread id -> Event an interruptible sleep waits on


def _set_async_exc(tid: int, exc) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc) if exc else None)


@internal
def interrupt_calls() -> int:
    """Raise KeyboardInterrupt in every thread running a user call here; returns how many."""
    return interrupt_threads(None)


def interrupt_threads(tids: set[int] | None) -> int:
    """Raise KeyboardInterrupt in those of `tids` (None: all) that run a user call now."""
    with _running_lock:
        targets = (_running if tids is None else _running & tids) - _interrupted
        for tid in targets:
            _interrupted.add(tid)
            _set_async_exc(tid, KeyboardInterrupt)
            event = _wakeups.get(tid)
            if event is not None:
                event.set()
    return len(targets)


_idle_waiters = 0                    # threads in wait_idle (guarded by _running_lock)


@internal
def wait_idle(timeout: float) -> bool:
    """Block until this process runs no user call (up to `timeout` s); True if it is idle."""
    global _idle_waiters
    with _running_lock:
        _idle_waiters += 1
        try:
            return _became_idle.wait_for(lambda: not _running, timeout)
        finally:
            _idle_waiters -= 1


def interruptible_sleep(seconds: float) -> None:
    """time.sleep that `interrupt` can cut short (installed on workers)."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    release_reading()
    tid = threading.get_ident()
    event = _wakeups.get(tid)
    if event is None:
        event = _wakeups[tid] = threading.Event()
    event.clear()
    with _running_lock:
        if tid in _interrupted:           # interrupted before it started sleeping
            return
    event.wait(seconds)


def _run_user(func: Callable, args, kwargs):
    if is_internal(func):
        return func(*args, **kwargs)
    tid = threading.get_ident()
    with _running_lock:
        _running.add(tid)
    try:
        return func(*args, **kwargs)
    finally:
        with _running_lock:
            _running.discard(tid)
            if tid in _interrupted:
                _interrupted.discard(tid)
                _set_async_exc(tid, None)     # cancel an interrupt not delivered yet
            if _idle_waiters and not _running:
                _became_idle.notify_all()




# -- the callee side -------------------------------------------------------------------------
def _on_call(link, mode, rrid, msg_id, body, buffers) -> bool:
    if mode == Mode.FETCH:
        if rrid[1]:
            return _on_lane_call(link, (link.peer, rrid[1]), msg_id, body, buffers)
    elif mode == Mode.FUTURE or mode == Mode.WAIT:
        _lookup(RRID(*rrid))            # counted now, before a later DEL_CLIENTS on this link
    return link.run_inline(_serve_call, link, mode, rrid, msg_id, body, buffers, timings.now())


def _serve_call(link, mode, rrid, msg_id, body, buffers, queued=None) -> None:
    """Run one call and answer it. `queued`: when its frame was read (default: now)."""
    me = myid()
    ok, value, failure, name = False, None, None, None
    received, queued = 0, queued or timings.now()
    target = None
    if mode == Mode.FUTURE or mode == Mode.WAIT:
        target = _refs.get(RRID(*rrid))
        if target is not None:
            if target.is_set:           # cancelled before it started: never runs
                if mode == Mode.WAIT:
                    _answer(link, msg_id, None, None)
                return
            target.runner = threading.get_ident()     # Future.cancel(interrupt=True) aims here
    try:
        func, args, kwargs = loads(body, buffers)
    except BaseException as err:
        failure = remote_exception(me, _described(err, "the call's function or arguments could not "
                                                  f"be unpickled on process {me}"))
    else:
        name = timings.call_name(func, args)
        if name is not None:            # recorded: the call's size on the wire
            received = timings.size(body, buffers)
        del body, buffers
        start = timings.now()
        try:
            value, ok = _run_user(func, args, kwargs), True
        except SystemExit as err:
            _exit_process(err.code)
        except BaseException as err:
            failure = remote_exception(me, err)
        end = timings.now()
        del func, args, kwargs
    frame = None                        # the answer: (kind, body, buffers, msg_id, rrid)
    if mode == Mode.FETCH:
        frame = _answer_frame(link, value, failure, msg_id)
    elif mode == Mode.FUTURE or mode == Mode.WAIT:
        outcome = value if ok else _Failed(failure)
        stored = store_outcome(RRID(*rrid), outcome)
        if mode == Mode.WAIT:
            frame = _answer_frame(link, None, failure if stored else None, msg_id)
        elif stored:
            frame = _push_frame(link, rrid, outcome)
    elif not ok:
        _print_failure(failure)
    if name is not None:                # before answering: the caller's next call sees it
        timings.record(name, queued, start, end, received,
                       timings.size(frame[1], frame[2]) if frame else 0, failure)
    if frame is not None:
        _send_quietly(link, *frame)


# -- lanes: a caller's calls that run one at a time ------------------------------------------
# A FETCH call whose rrid.id is not 0 belongs to lane rrid.id of its caller (pmap keeps one
# lane per worker it uses, the Executor one per call): the lane's calls run one after the
# other in the order they came, so a caller can send the next call ahead without it running
# beside the current one, and can cancel what is queued (`cancel_lanes`).

class _Lane:
    __slots__ = ("tid", "queued")

    def __init__(self):
        self.tid = 0                              # the thread running the lane's calls
        self.queued: collections.deque = collections.deque()   # (msg_id, body, buffers)


_lanes_lock = threading.Lock()       # guards _lanes, _cancelled_lanes and every _Lane's fields
_lanes: dict[tuple[int, int], _Lane] = {}         # (caller, lane) -> a lane with calls
# Lanes whose caller cancelled them, so that a call it sent just before it knew is refused.
# Such stragglers arrive right after the cancel; the oldest entries past this many go.
_cancelled_lanes: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
CANCELLED_LANES_KEPT = 4096


def _on_lane_call(link, key, msg_id, body, buffers) -> bool:
    with _lanes_lock:
        cancelled = key in _cancelled_lanes
        if not cancelled:
            lane = _lanes.get(key)
            if lane is not None:                  # busy: runs after the calls before it
                lane.queued.append((msg_id, body, buffers))
                return False
            lane = _lanes[key] = _Lane()
    if cancelled:
        _answer(link, msg_id, None, _cancelled(key[0]))
        return False
    return link.run_inline(_serve_lane, link, key, lane, (msg_id, body, buffers))


def _serve_lane(link, key, lane: _Lane, call: tuple) -> None:
    lane.tid = threading.get_ident()
    while True:
        _serve_call(link, Mode.FETCH, NO_RRID, *call)
        with _lanes_lock:
            if not lane.queued:
                del _lanes[key]
                return
            call = lane.queued.popleft()


def _cancelled(caller: int):
    return remote_exception(myid(), CancelledError(f"cancelled by process {caller}"))


@internal
def cancel_lanes(caller: int, lanes: list[int]) -> None:
    """Cancel `caller`'s lanes here: their queued calls never start (each is answered with
    CancelledError), their running call gets a KeyboardInterrupt, later calls are refused."""
    dropped, tids = [], set()
    with _lanes_lock:
        for lane_id in lanes:
            key = (caller, lane_id)
            _cancelled_lanes[key] = None
            lane = _lanes.get(key)
            if lane is not None:
                dropped.extend(lane.queued)
                lane.queued.clear()
                tids.add(lane.tid)
        while len(_cancelled_lanes) > CANCELLED_LANES_KEPT:
            _cancelled_lanes.popitem(last=False)
        # Under the lock: a lane's thread cannot have finished the lane and moved on to
        # another caller's call meanwhile (it takes this lock to leave the lane).
        interrupt_threads(tids)
    link = STATE.links.get(caller)
    if link is not None:
        for msg_id, _body, _buffers in dropped:
            _answer(link, msg_id, None, _cancelled(caller))


_lane_ids = itertools.count(1)


def new_lane() -> int:
    """A lane id of this process's, for calls to send one at a time (send_call(rrid=(0, lane)))."""
    return next(_lane_ids)


def cancel_remotely(pid: int, lanes) -> None:
    """Ask process `pid` to cancel this process's `lanes` there (see cancel_lanes); does not
    wait. A process that is gone runs nothing any more."""
    try:
        send_call(pid, Mode.DO, cancel_lanes, (myid(), list(lanes)))
    except Exception:
        pass


def _forget_lanes(pid: int) -> None:
    """Exit hook: an exited caller's lanes; their queued calls never run."""
    with _lanes_lock:
        for key in [k for k in _cancelled_lanes if k[0] == pid]:
            del _cancelled_lanes[key]
        for key, lane in _lanes.items():
            if key[0] == pid:
                lane.queued.clear()


# A remotecall's result up to this size is also sent to the caller at once, so fetching it
# there costs no second round trip; bigger results stay on the owner until fetched (moving
# them unasked could waste the bandwidth a user kept the data remote to save).
PUSH_LIMIT = 1 << 16


def _push_frame(link, rrid, outcome) -> tuple | None:
    """The PUSH frame that sends a small outcome to the caller at once; None if it is big."""
    body = dumps_small(outcome, link.peer, PUSH_LIMIT)
    return None if body is None else (Kind.PUSH, body, (), 0, rrid)


def _answer_frame(link, value, failure, msg_id: int) -> tuple:
    """The RESULT(value) frame, or ERROR(failure) when the call failed or value cannot be
    pickled."""
    if failure is None:
        try:
            body, buffers = dumps(value, dest=link.peer)
        except BaseException as err:
            failure = remote_exception(myid(), _described(
                err, f"the result of type {type(value).__name__} could not be pickled"))
        else:
            return Kind.RESULT, body, buffers, msg_id, NO_RRID
    try:
        body = dumps(failure, dest=link.peer)[0]
    except BaseException:
        body = dumps(remote_exception(myid(), CapturedException(
            type(failure.captured).__name__, str(failure.captured), failure.traceback_text)))[0]
    return Kind.ERROR, body, (), msg_id, NO_RRID


def _answer(link, msg_id: int, value, failure) -> None:
    """Send RESULT(value), or ERROR(failure) when the call failed or value cannot be pickled."""
    _send_quietly(link, *_answer_frame(link, value, failure, msg_id))


def _send_quietly(link, kind, body, buffers, msg_id, rrid=NO_RRID) -> None:
    try:
        link.answer(kind, body, buffers, msg_id=msg_id, rrid=rrid)
    except Exception:
        pass            # the caller is gone; nobody is waiting for this answer


def _described(err: BaseException, what: str) -> BaseException:
    """Say which step failed, keeping the original exception where Python allows notes."""
    if hasattr(err, "add_note"):
        err.add_note(what)
        return err
    return CapturedException(type(err).__name__, f"{what}: {err}")


def _print_failure(failure) -> None:
    print(f"Error in remote_do on process {myid()}:\n{failure.traceback_text}", file=sys.stderr,
          flush=True)


def _exit_process(code) -> None:
    """SystemExit in a call ends the worker (Julia: remote_do(exit, pid)); not the master."""
    if myid() == 1:
        raise SystemExit(code)
    exit_process(code if isinstance(code, int) else (0 if code is None else 1))


STATE.handlers[Kind.CALL] = _on_call
STATE.exit_hooks.append(_forget_lanes)


# -- the caller side ----------------------------------------------------------------------------
def _accepts_pools(call: _F) -> _F:
    """Let a remotecall-family function take a worker pool (it borrows a worker for the
    call) or any integer type as `pid`."""
    @functools.wraps(call)
    def dispatch(func, pid, *args, **kwargs):
        if not isinstance(pid, int):
            if hasattr(pid, "_call_with"):
                return pid._call_with(dispatch, func, args, kwargs)
            pid = operator.index(pid)          # a numpy integer, say
        return call(func, pid, *args, **kwargs)
    return cast(_F, dispatch)


def _local_run(rrid: RRID, func, args, kwargs) -> None:
    target = _refs.get(rrid)
    if target is not None:
        if target.is_set:               # cancelled before it started
            return
        target.runner = threading.get_ident()
    try:
        value = _run_user(func, args, kwargs)
    except BaseException as err:
        value = _Failed(remote_exception(myid(), err))
    store_outcome(rrid, value)


def _local_do(func, args, kwargs) -> None:
    try:
        func(*args, **kwargs)
    except BaseException as err:
        _print_failure(remote_exception(myid(), err))


@_accepts_pools
def remotecall(func: Callable[P, T], pid: Where, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run func(*args, **kwargs) on process `pid` (or a worker of a pool) and return a
    Future for its result at once (Julia: remotecall)."""
    fut: Future[T] = Future(pid)
    rrid = fut.rrid
    if pid == myid():
        _lookup(rrid)
        STATE.runner.submit(_local_run, rrid, func, args, kwargs)
    else:
        expect_push(fut)
        send_call(pid, Mode.FUTURE, func, args, kwargs, rrid)
    return fut


# Typing: a ParamSpec's *args and **kwargs cannot have the keyword `timeout` between them,
# so a call with timeout= is typed by its own overload (its arguments are not checked).
@overload
def remotecall_fetch(func: Callable[P, T], pid: Where, *args: P.args, **kwargs: P.kwargs) -> T: ...
@overload
def remotecall_fetch(func: Callable[..., T], pid: Where, *args: Any, timeout: float | None,
                     **kwargs: Any) -> T: ...


@_accepts_pools
def remotecall_fetch(func: Callable[..., Any], pid: Where, *args: Any, timeout: float | None = None,
                     **kwargs: Any) -> Any:
    """Run func on `pid` and return its result; raises RemoteException if it raised.

    `timeout` (seconds; pydist's own keyword, not passed to func): TimeoutError when no answer
    came in time. The call is not stopped by it (`interrupt(pid)` does that); its late answer
    is dropped. A function that takes a `timeout` keyword gets it through functools.partial."""
    if pid == myid():
        try:
            return func(*args, **kwargs)
        except BaseException as err:
            raise remote_exception(pid, err) from None
    return result(send_call(pid, Mode.FETCH, func, args, kwargs), timeout)


@_accepts_pools
def remotecall_wait(func: Callable[P, T], pid: Where, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run func on `pid`, wait until it is done, and return its (ready) Future."""
    if pid == myid():
        return remotecall(func, pid, *args, **kwargs).wait()
    fut: Future[T] = Future(pid)
    result(send_call(pid, Mode.WAIT, func, args, kwargs, fut.rrid))
    return fut


@_accepts_pools
def remote_do(func: Callable[P, Any], pid: Where, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run func on `pid` and forget it: no result, no error back (the callee prints errors)."""
    if pid == myid():
        STATE.runner.submit(_local_do, func, args, kwargs)
    else:
        send_call(pid, Mode.DO, func, args, kwargs)


_round_robin = itertools.count()


def _next_worker() -> int:
    ids = workers()
    return ids[next(_round_robin) % len(ids)]


def spawnat(pid: Where | str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run func on `pid` (Julia: @spawnat); pid="any" picks the next worker in turn."""
    if pid == "any":
        pid = _next_worker()
    return remotecall(func, pid, *args, **kwargs)


def spawn(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run func on the next worker, round robin (Julia: @spawn)."""
    return remotecall(func, _next_worker(), *args, **kwargs)


def fetchfrom(pid: Where, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run func on `pid` and return its result (Julia: @fetchfrom)."""
    return remotecall_fetch(func, pid, *args, **kwargs)


def fetchany(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run func on the next worker and return its result (Julia: @fetch)."""
    return fetch(spawn(func, *args, **kwargs))

