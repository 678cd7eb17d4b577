"""Worker pools (Julia: workerpool.jl): WorkerPool, CachingPool, default_worker_pool, remote.

A pool's state (members and the free workers, first in first out) lives in a `_PoolState`
on the process that made the pool, as the backing store of a RemoteChannel reference.  So a
pool sent to another process is used there through its owner, sharing state with the
original, and the distributed reference counting frees it when no process holds it.
"""

from __future__ import annotations

import abc
import collections
import threading
import weakref
from typing import Any, Callable, Iterable, ParamSpec, TypeVar

from . import _html, cluster, timings
from .calls import internal, remotecall, remotecall_fetch
from .messages import Mode
from .process import STATE, myid, send_call, workers
from .refs import Future, RemoteChannel, channel_from_id

P = ParamSpec("P")
T = TypeVar("T")


class AbstractWorkerPool(abc.ABC):
    """A set of workers lent out one call at a time (Julia: AbstractWorkerPool)."""

    @abc.abstractmethod
    def put(self, pid: int) -> None:
        """Give worker `pid` (back) to the pool."""

    @abc.abstractmethod
    def take(self) -> int:
        """Borrow a free worker, blocking until one is free."""

    @abc.abstractmethod
    def isready(self) -> bool:
        """True if take would not block."""

    @abc.abstractmethod
    def workers(self) -> set[int]:
        """The pool's members."""

    @abc.abstractmethod
    def length(self) -> int:
        """How many members the pool has."""

    def __len__(self) -> int:
        return self.length()

    def __contains__(self, pid: int) -> bool:
        return pid in self.workers()

    def _prepare(self, func: Callable, pid: int) -> tuple[Callable, tuple]:
        """The function to send to `pid` and extra leading arguments (CachingPool caches)."""
        return func, ()

    def _call_with(self, call, func: Callable, args: tuple, kwargs: dict):
        """Run a remotecall-family function on a borrowed worker, returning it afterwards."""
        pid = self.take()
        try:
            send, extra = self._prepare(func, pid)
            if call is remotecall:
                fut = _remotecall_returning(self, send, pid, (*extra, *args), kwargs)
                pid = None              # given back when the call finishes
                return fut
            return call(send, pid, *extra, *args, **kwargs)
        finally:
            if pid is not None:
                self.put(pid)


def _remotecall_returning(pool: AbstractWorkerPool, func, pid: int, args, kwargs):
    """remotecall on a pool: the worker goes back to the pool when the call is done."""
    if pid == myid():
        fut = remotecall(func, pid, *args, **kwargs)
        STATE.runner.submit(_put_back_after, pool, pid, fut)
        return fut
    fut = Future(pid)
    send_call(pid, Mode.WAIT, func, args, kwargs, fut.rrid,
              on_done=lambda _reply: STATE.runner.submit(pool.put, pid))
    return fut


def _put_back_after(pool, pid, fut) -> None:
    try:
        fut.wait()
    except Exception:
        pass
    finally:
        pool.put(pid)


class _PoolState:
    """Members and free workers of one pool; lives on the pool's owner process.

    The default pool without workers lends the master (Julia: wp_local_take!), and then
    counts it as its one worker, as `workers()` returns [1]."""

    def __init__(self, members: Iterable[int] = (), default: bool = False):
        self.default = default
        self._cond = threading.Condition()      # guards _members and _free
        self._members: set[int] = set()
        self._retired: set[int] = set()
        self._free: collections.deque[int] = collections.deque()
        for pid in members:
            self.put(pid)
        _live_states.add(self)

    def put(self, pid: int) -> None:
        with self._cond:
            if pid in STATE.dead or pid in self._retired or (self.default and pid == 1):
                self._members.discard(pid)     # the master is only lent when there are no workers
                return
            self._members.add(pid)
            if pid not in self._free:
                self._free.append(pid)
            self._cond.notify()

    def take(self) -> int:
        with self._cond:
            while True:
                while self._free:
                    pid = self._free.popleft()
                    if pid in self._members and pid not in STATE.dead:
                        return pid
                    self._members.discard(pid)
                self._members -= STATE.dead
                if not self._members:
                    if self.default:
                        return 1        # no workers: the master does the work (Julia)
                    raise RuntimeError("this WorkerPool has no live workers: add some with put(pid)")
                self._cond.wait()

    def isready(self) -> bool:
        with self._cond:
            return any(p not in STATE.dead for p in self._free) or self._master_serves()

    def workers(self) -> set[int]:
        with self._cond:
            return (self._members - STATE.dead) or ({1} if self.default else set())

    def _master_serves(self) -> bool:
        """The default pool has no live worker: the master serves its calls. Under _cond."""
        return self.default and not (self._members - STATE.dead)

    def length(self) -> int:
        return len(self.workers())

    def retire(self, pid: int) -> None:
        """Lend `pid` no more; a call it is running finishes, and it is not taken back."""
        with self._cond:
            self._retired.add(pid)
            self._members.discard(pid)
            if pid in self._free:
                self._free.remove(pid)
            self._cond.notify_all()

    def forget(self, pid: int) -> None:
        with self._cond:
            self._members.discard(pid)
            self._cond.notify_all()     # takers re-check: the pool may now be empty


_live_states: "weakref.WeakSet[_PoolState]" = weakref.WeakSet()


def _on_exit(pid: int) -> None:
    for state in list(_live_states):
        state.forget(pid)


STATE.exit_hooks.append(_on_exit)


class WorkerPool(AbstractWorkerPool):
    """A pool of the given workers (Julia: WorkerPool); usable from any process."""

    def __init__(self, workers: Iterable[int] = (), *, _default: bool = False):
        members = list(workers)
        self._ref = RemoteChannel(factory=lambda: _PoolState(members, _default))

    def _op(self, op: str, *args):
        return self._ref._op(op, *args)

    def put(self, pid: int) -> None:
        self._op("put", pid)

    def take(self) -> int:
        return self._op("take")

    def isready(self) -> bool:
        return self._op("isready")

    def workers(self) -> set[int]:
        return self._op("workers")

    def length(self) -> int:
        return self._op("length")

    def retire(self, pid: int) -> None:
        """Stop lending worker `pid` (it is leaving); a call it runs now is not cut short."""
        self._op("retire", pid)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self.workers())})"

    def _repr_html_(self) -> str:
        """Jupyter's display: the workers, and whether one is free now."""
        members = sorted(self.workers())
        return _html.fields(type(self).__name__, [("workers", ", ".join(map(str, members)) or "none"),
                                                  ("count", len(members)),
                                                  ("a worker is free", "yes" if self.isready() else "no")])


class CachingPool(WorkerPool):
    """A WorkerPool that sends each function to each worker once and then calls it by
    reference (Julia: CachingPool); `clear(pool)` forgets the cached functions."""

    def __init__(self, workers: Iterable[int] = ()):
        super().__init__(workers)
        self._cache: dict[tuple[int, Any], RemoteChannel] = {}
        self._cache_lock = threading.Lock()     # guards _cache

    def _prepare(self, func: Callable, pid: int) -> tuple[Callable, tuple]:
        key = (pid, func)
        with self._cache_lock:
            ref = self._cache.get(key)
        if ref is None:
            ref = RemoteChannel(pid)
            ref.put(func)                       # the one time func travels to pid
            with self._cache_lock:
                ref = self._cache.setdefault(key, ref)
        return _call_cached, (tuple(ref.rrid),)

    def clear(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def __getstate__(self):
        return {"_ref": self._ref, "_cache": {}}

    def __setstate__(self, state):
        self._ref = state["_ref"]
        self._cache = {}
        self._cache_lock = threading.Lock()


@timings.unwraps_with(lambda args: (channel_from_id(args[0]).fetch(timeout=0), args[1:]))
def _call_cached(rrid, *args, **kwargs):
    return channel_from_id(rrid).fetch()(*args, **kwargs)


def clear(pool: AbstractWorkerPool) -> None:
    """Forget what a CachingPool cached on its workers (Julia: clear!)."""
    if hasattr(pool, "clear"):
        pool.clear()


_default_pool: WorkerPool | None = None
_default_lock = threading.Lock()     # guards _default_pool


@internal
def _master_default_pool() -> WorkerPool:
    return default_worker_pool()


def default_worker_pool() -> WorkerPool:
    """The pool of every worker of the cluster; remotecall(f, pool) and pmap use it
    (Julia: default_worker_pool). On a worker it is the master's pool."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            if myid() == 1:
                ids = [p for p in workers() if p != 1]
                _default_pool = WorkerPool(ids, _default=True)
            else:
                _default_pool = remotecall_fetch(_master_default_pool, 1)
        return _default_pool


def _add_to_default(pids: list[int]) -> None:
    pool = default_worker_pool()
    for pid in pids:
        pool.put(pid)


cluster._added_hooks.append(_add_to_default)


def retire_workers(pids: list[int], timeout: float) -> None:
    """Let workers leave cleanly (a batch job's walltime about to run out): the default pool
    lends them no more, the calls they run may finish (up to `timeout` seconds, waited for
    on all of them at once), then one rmprocs removes them together."""
    from .cluster import on_each
    from .removal import rmprocs
    from .calls import wait_idle
    pool = default_worker_pool()
    for pid in pids:
        pool.retire(pid)
    on_each(pids, wait_idle, timeout, timeout=timeout + 1.0)   # stuck or gone: removed all the same
    rmprocs(pids, waitfor=0)


def remote(func: Callable[P, T], pool: AbstractWorkerPool | None = None) -> Callable[P, T]:
    """A function that runs `func` on a worker of `pool` (default: the default pool) and
    returns the result (Julia: remote)."""
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return remotecall_fetch(func, pool if pool is not None else default_worker_pool(),
                                *args, **kwargs)
    call.__name__ = f"remote_{getattr(func, '__name__', 'call')}"
    return call
