"""Future, RemoteChannel and the distributed reference counting behind them (Julia: remoteref.jl).

A reference names a value by RRID (whence, id): `whence` is the process that created the
reference, `id` a counter there.  The value lives on the owner (`.where`), in this
process's table `_refs` (rrid -> _RemoteValue), as Julia keeps it in `PGRP.refs`: a
RemoteChannel's backing channel, or a one-slot Channel holding a Future's value.

Counting holders.  The owner keeps, per rrid, how many live reference objects each process
holds (`clients`).  The creator's object is counted when the entry is made.  When a
reference is pickled for process D (serialize.destination()), the sender tells the owner
first (ADD_CLIENT, on the same ordered link when D is the owner), so the count can never
drop to zero while a copy is in flight; when a reference object dies, its process sends
DEL_CLIENTS.  A Future that has fetched (or put) its value caches it and stops counting at
once, and a cached value travels with the Future.  When every count is zero the owner
frees the value; when a process exits, its counts are dropped.

Reference objects die in `__del__`, which may run inside the garbage collector on any
thread, holding any lock; so it only queues the release, and the thread `pydist-refs`
(started at import) sends the batched DEL_CLIENTS and decrements local counts.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import queue
import threading
import weakref
from collections.abc import Generator
from typing import Any, Callable, Generic, NamedTuple, TypeVar, overload

from . import _html
from .channel import Channel
from .errors import InvalidStateError, RemoteException
from .messages import Kind, Mode
from .process import STATE, call_fetch, get_link, internal, myid, result, send_call
from .serialize import destination, dumps, loads, undo_if_not_sent

log = logging.getLogger("pydist")


class RRID(NamedTuple):
    """The cluster-wide name of a Future or RemoteChannel: (creating process, counter)."""
    whence: int
    id: int


class _Unset:
    """Marks a Future whose value this copy has not seen yet."""

    def __reduce__(self):
        return "_UNSET"

    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()


class _Failed:
    """A call's exception kept as a Future's value: fetching it raises every time."""

    __slots__ = ("exc",)

    def __init__(self, exc: RemoteException):
        self.exc = exc

    def __reduce__(self):
        return (_Failed, (self.exc,))


class _RemoteValue:
    __slots__ = ("store", "clients", "is_set", "runner")

    def __init__(self, store, whence: int):
        self.store = store
        self.clients = {whence: 1}
        self.is_set = False
        self.runner = 0        # id of the thread running the call that sets it (0: none yet)


_refs: dict[RRID, _RemoteValue] = {}
_refs_lock = threading.Lock()        # guards _refs and every _RemoteValue's clients and is_set
_counter = itertools.count(1)
_held_lock = threading.Lock()        # guards every reference object's _held flag
_releases: queue.SimpleQueue = queue.SimpleQueue()   # (owner, rrid) dropped by __del__


def _next_rrid() -> RRID:
    return RRID(myid(), next(_counter))


# -- the owner's table ---------------------------------------------------------------------
def _lookup(rrid: RRID, make_store: Callable[[], Any] = Channel) -> _RemoteValue:
    """The owner's entry for rrid, created on first use (Julia: lookup_ref)."""
    rv = _refs.get(rrid)
    if rv is not None:
        return rv
    store = make_store()
    with _refs_lock:
        rv = _refs.get(rrid)
        if rv is None:
            rv = _refs[rrid] = _RemoteValue(store, rrid.whence)
    return rv


def _add_client(rrid: RRID, pid: int) -> None:
    rv = _lookup(rrid)
    freed = None
    with _refs_lock:
        count = rv.clients.get(pid, 0) + 1
        if count:
            rv.clients[pid] = count
        else:                             # the matching DEL came first: they cancel out
            rv.clients.pop(pid, None)
            if not rv.clients and _refs.get(rrid) is rv:
                freed = _refs.pop(rrid)
    del freed


def _del_client(rrid: RRID, pid: int) -> None:
    freed = None
    with _refs_lock:
        rv = _refs.get(rrid)
        if rv is None:
            return
        count = rv.clients.get(pid, 0) - 1
        if count:
            rv.clients[pid] = count       # negative while an ADD from elsewhere is in flight
        else:
            rv.clients.pop(pid, None)
        if not rv.clients:
            freed = _refs.pop(rrid)
    del freed                             # the value may hold references: drop it unlocked


def _drop_process(pid: int) -> None:
    """Exit hook: an exited process holds nothing any more."""
    freed = []
    with _refs_lock:
        for rrid, rv in list(_refs.items()):
            if rv.clients.pop(pid, None) is not None and not rv.clients:
                freed.append(_refs.pop(rrid))
    del freed


def _count_new_holder(owner: int, rrid: RRID) -> None:
    """A reference is being pickled for another process: tell the owner now, before this
    process could release its own count (the caller holds `_held_lock`), and undo it if the
    pickle is not sent."""
    dest = destination()
    if dest is None:
        return
    _tell_owner(owner, rrid, dest, +1)
    undo_if_not_sent(lambda: _tell_owner(owner, rrid, dest, -1))


def _tell_owner(owner: int, rrid: RRID, client: int, delta: int) -> None:
    if owner == myid():
        (_add_client if delta > 0 else _del_client)(rrid, client)
        return
    try:
        get_link(owner).send(Kind.ADD_CLIENT, mode=0 if delta > 0 else 1, rrid=rrid, msg_id=client)
    except Exception:
        pass        # the owner is gone or unreachable: there is nothing left to keep alive


def _on_add_client(link, mode, rrid, msg_id, body, buffers) -> None:
    """ADD_CLIENT: mode 0 counts one more holder on process msg_id, mode 1 takes it back."""
    (_add_client if mode == 0 else _del_client)(RRID(*rrid), msg_id)


def _on_del_clients(link, mode, rrid, msg_id, body, buffers) -> None:
    for one in loads(body):
        _del_client(RRID(*one), link.peer)


def _release_loop() -> None:
    while True:
        batch = [_releases.get()]
        while True:
            try:
                batch.append(_releases.get_nowait())
            except queue.Empty:
                break
        by_owner: dict[int, list[RRID]] = {}
        for owner, rrid in batch:
            by_owner.setdefault(owner, []).append(rrid)
        for owner, rrids in by_owner.items():
            try:
                if owner == myid():
                    for rrid in rrids:
                        _del_client(rrid, owner)
                elif owner not in STATE.dead:
                    get_link(owner).send(Kind.DEL_CLIENTS, dumps([tuple(r) for r in rrids])[0])
            except Exception:
                pass    # owner gone: its values went with it


def _release_now(owner: int, rrid: RRID) -> None:
    """Drop this process's count for rrid from a normal thread (not from __del__)."""
    if owner == myid():
        _del_client(rrid, owner)
    else:
        _releases.put((owner, rrid))


# remotecall Futures whose callee may PUSH their small result here (calls.py).
_awaiting_push: "weakref.WeakValueDictionary[RRID, Future]" = weakref.WeakValueDictionary()


def expect_push(fut: "Future") -> None:
    _awaiting_push[fut.rrid] = fut


def _on_push(link, mode, rrid, msg_id, body, buffers) -> None:
    fut = _awaiting_push.pop(RRID(*rrid), None)
    if fut is None or fut._v is not _UNSET:
        return
    try:
        fut._pushed = loads(body, buffers)   # becomes its value (and lets go) when fetched
    except Exception:
        pass                                 # fetch will ask the owner instead


STATE.handlers[Kind.PUSH] = _on_push
STATE.handlers[Kind.ADD_CLIENT] = _on_add_client
STATE.handlers[Kind.DEL_CLIENTS] = _on_del_clients
STATE.exit_hooks.append(_drop_process)
_releaser: threading.Thread | None = None      # runs _release_loop, from the first reference on
_releaser_lock = threading.Lock()


def _start_releasing() -> None:
    """Start the thread that sends releases, when the first reference is made: not at import,
    so the fork server, which imports pydist, has no thread of its own when it forks."""
    global _releaser
    with _releaser_lock:
        if _releaser is None:
            _releaser = threading.Thread(target=_release_loop, name="pydist-refs", daemon=True)
            _releaser.start()


def _forget_releaser() -> None:
    """In a forked child: the parent's release thread and queue are not ours."""
    global _releaser, _releaser_lock, _releases
    _releaser, _releaser_lock, _releases = None, threading.Lock(), queue.SimpleQueue()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_releaser)


# -- owner-side operations (run on the owner; importable so they travel by reference) -------
def store_outcome(rrid: RRID, value: Any) -> bool:
    """Keep a finished call's value (or _Failed) as the Future rrid's value, if still wanted;
    False when nobody wants it (every holder dropped it, or it was cancelled)."""
    rv = _refs.get(rrid)
    if rv is None:
        return False  # every holder dropped the Future before the call finished
    with _refs_lock:
        if rv.is_set:
            return False
        rv.is_set = True
    rv.store.put(value)
    return True


# Past its own timeout, a caller waits this much longer for the owner's answer to a timed
# wait: the owner's outcome (a value, or its own TimeoutError) decides. Only an owner that
# does not answer in time is given up on here; what it answers later goes to `late`.
OWNER_GRACE = 1.0


class _TimedAsk:
    """One timed owner-side operation: its answer, or, once the caller gave up, `late`."""

    def __init__(self, late: Callable[[Any], None] | None):
        self.late = late
        self.lock = threading.Lock()         # guards reply and abandoned
        self.answered = threading.Event()
        self.reply = None
        self.abandoned = False

    def on_done(self, reply) -> None:        # the link's reader thread: hand over at once
        with self.lock:
            self.reply = reply
            abandoned = self.abandoned
        self.answered.set()
        if abandoned and self.late is not None:
            STATE.runner.submit(self._deliver_late, reply)

    def _deliver_late(self, reply) -> None:
        try:
            value = result(reply)
        except Exception:
            return                           # the owner timed out too: nothing was taken
        self.late(value)

    def give_up(self) -> bool:
        """The caller stops waiting; False if the answer came just now (use it)."""
        with self.lock:
            self.abandoned = self.reply is None
            return self.abandoned


def _ask_owner(where: int, func, *args, timeout: float | None = None,
               late: Callable[[Any], None] | None = None):
    """Run an owner-side operation on process `where` (it gets `timeout` as its last argument
    when one is given); a wait that timed out there raises TimeoutError here. If the owner
    does not answer within timeout + OWNER_GRACE, TimeoutError too, and a value it answers
    later goes to `late` (a take puts it back: nothing is lost)."""
    if timeout is None:
        return call_fetch(where, func, *args)
    ask = _TimedAsk(late)
    send_call(where, Mode.FETCH, func, (*args, timeout), on_done=ask.on_done)
    if not ask.answered.wait(timeout + OWNER_GRACE) and ask.give_up():
        raise TimeoutError(f"process {where} did not answer within {timeout:g} s")
    try:
        return result(ask.reply)
    except RemoteException as err:
        if isinstance(err.captured, TimeoutError):
            raise TimeoutError(f"nothing came within {timeout:g} s") from None
        raise


def _cancelled_error() -> concurrent.futures.CancelledError:
    return concurrent.futures.CancelledError("the call was cancelled (Future.cancel)")


def _is_cancelled(value) -> bool:
    return isinstance(value, _Failed) and isinstance(value.exc, concurrent.futures.CancelledError)


@internal
def _owner_cancel(rrid: RRID, interrupt: bool) -> bool:
    """Cancel the Future rrid here on its owner: if its call has not started (or there is no
    call), it becomes cancelled; a running call only with `interrupt`, which raises
    KeyboardInterrupt in it. True if the Future is (now) cancelled."""
    from .calls import interrupt_threads     # calls.py sits above this module
    rv = _lookup(rrid)            # asked by a holder: made now if nothing used it yet
    with _refs_lock:
        if rv.is_set:
            running = None
        else:
            running = rv.runner
            if running and not interrupt:
                return False
            rv.is_set = True
            if running:           # under the lock: its thread cannot store an outcome and
                interrupt_threads({running})     # move on to another call meanwhile
    if running is None:                     # already finished: cancelled only if it was
        return rv.store.isready() and _is_cancelled(rv.store.fetch())
    rv.store.put(_Failed(_cancelled_error()))
    return True


@internal
def _owner_cancelled(rrid: RRID) -> bool:
    rv = _refs.get(rrid)
    return rv is not None and rv.store.isready() and _is_cancelled(rv.store.fetch())


@internal
def _owner_fetch(rrid: RRID, timeout: float | None = None):
    return _lookup(rrid).store.fetch(timeout)


@internal
def _owner_put_future(rrid: RRID, value, release: int | None) -> None:
    rv = _lookup(rrid)
    with _refs_lock:
        if rv.is_set:
            raise InvalidStateError(f"Future {tuple(rrid)} is already set: a Future can be set only once")
        rv.is_set = True
    rv.store.put(value)
    if release is not None:
        _del_client(rrid, release)


@internal
def _owner_wait(rrid: RRID, timeout: float | None = None):
    value = _lookup(rrid).store.fetch(timeout)
    return value if isinstance(value, _Failed) else None


@internal
def _owner_isready(rrid: RRID) -> bool:
    return _lookup(rrid).store.isready()


@internal
def _owner_create(rrid: RRID, make_store) -> None:
    _lookup(rrid, make_store)


@internal
def _owner_op(rrid: RRID, op: str, args: tuple, timeout: float | None = None):
    if timeout is None:
        return getattr(_lookup(rrid).store, op)(*args)
    return getattr(_lookup(rrid).store, op)(*args, timeout=timeout)


def _in_thread(func, *args):
    """An asyncio future for func(*args) run on a pydist runner thread (unbounded, unlike the
    loop's default executor, so any number of pending awaits can wait at once)."""
    import asyncio
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run():
        try:
            value, error = func(*args), None
        except BaseException as err:
            value, error = None, err
        try:
            loop.call_soon_threadsafe(_settle, done, value, error)
        except RuntimeError:
            pass                      # the loop is closed: nobody awaits any more
    STATE.runner.submit(run)
    return done


def _settle(done, value, error) -> None:
    if not done.cancelled():
        done.set_exception(error) if error is not None else done.set_result(value)


def _unwrap(value):
    if isinstance(value, _Failed):
        raise value.exc
    return value


# -- the reference objects ------------------------------------------------------------------
class _Ref:
    __slots__ = ("where", "whence", "id", "_held", "__weakref__")
    # _held: this object still counts on the owner. It changes, and a Future's value is
    # cached, only under _held_lock, which __reduce__ also holds while it tells the owner
    # about a new holder: so that notice always leaves before this object's own release.

    def _init(self, where: int, rrid: RRID, held: bool) -> None:
        if _releaser is None:
            _start_releasing()
        self.where = where
        self.whence, self.id = rrid
        self._held = held

    @property
    def rrid(self) -> RRID:
        return RRID(self.whence, self.id)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Ref) and (self.whence, self.id) == (other.whence, other.id)

    def __hash__(self) -> int:
        return hash((self.whence, self.id))

    def _take_held(self) -> bool:
        """Claim this object's count (once) so exactly one path releases it."""
        with _held_lock:
            held, self._held = self._held, False
        return held

    def __del__(self):
        try:
            if self._held:
                _releases.put((self.where, RRID(self.whence, self.id)))
        except Exception:
            pass        # interpreter shutdown


T = TypeVar("T")


class Future(_Ref, Generic[T]):
    """A value that will be produced once, owned by process `.where` (Julia: Future).

    `remotecall` returns one; `Future(pid)` makes an unset one to `put` into later.
    Fetching caches the value in this copy; the owner frees its copy once no process holds
    an unfetched reference.  A small result the callee pushed ahead (`_pushed`) is only a
    shortcut for this copy's fetch: until then the copy behaves as unfetched (it counts on
    the owner and travels without the value), as in Julia."""

    __slots__ = ("_v", "_pushed", "_fetching")

    def __init__(self, pid: int | None = None):
        self._init(myid() if pid is None else int(pid), _next_rrid(), True)
        self._v = self._pushed = _UNSET
        self._fetching = threading.Lock()

    def fetch(self, timeout: float | None = None) -> T:
        """The value, waiting for it; raises RemoteException if the call failed (every time),
        CancelledError if it was cancelled, TimeoutError if it is not there within `timeout`
        seconds (the Future is unchanged: a later fetch still works)."""
        value = self._v
        if value is _UNSET:
            acquired = False
            try:                            # one fetch at a time; the others use its result
                acquired = self._fetching.acquire(timeout=-1 if timeout is None else timeout)
                if not acquired:
                    raise TimeoutError
                value = self._v
                if value is _UNSET:
                    value = self._fetch_once(timeout)
            except TimeoutError:
                raise TimeoutError(f"Future {tuple(self.rrid)} on process {self.where} was not "
                                   f"ready within {timeout:g} s; it is unchanged (fetch it again "
                                   "later, or cancel it)") from None
            finally:
                if acquired:
                    self._fetching.release()
        return _unwrap(value)

    def _fetch_once(self, timeout: float | None = None):
        rrid = self.rrid
        value = self._pushed
        if value is _UNSET:
            if self.where == myid():
                value = _lookup(rrid).store.fetch(timeout)
            else:
                try:
                    value = _ask_owner(self.where, _owner_fetch, rrid, timeout=timeout)
                except RemoteException as err:   # e.g. the value cannot be unpickled here:
                    value = _Failed(err)         # it fails the same way every time
        with _held_lock:
            self._v = value
            held, self._held = self._held, False
        if held:
            _release_now(self.where, rrid)
        return value

    def put(self, value: T) -> Future[T]:
        """Set the value; a Future can be set once only (InvalidStateError, or
        RemoteException when its owner refused)."""
        if self._v is not _UNSET:
            raise InvalidStateError("this Future is already set: a Future can be set only once")
        release = myid() if self._take_held() else None
        try:
            if self.where == myid():
                _owner_put_future(self.rrid, value, release)
            else:
                call_fetch(self.where, _owner_put_future, self.rrid, value, release)
        except BaseException:
            if release is not None:
                self._held = True
            raise
        self._v = value
        return self

    def isready(self) -> bool:
        """True if fetch would not block."""
        if self._v is not _UNSET or self._pushed is not _UNSET:
            return True
        if self.where == myid():
            return _lookup(self.rrid).store.isready()
        return call_fetch(self.where, _owner_isready, self.rrid)

    def wait(self, timeout: float | None = None) -> Future[T]:
        """Block until the value is set; raises RemoteException if the call failed,
        CancelledError if it was cancelled, TimeoutError after `timeout` seconds."""
        known = self._v if self._v is not _UNSET else self._pushed
        if known is not _UNSET:
            _unwrap(known)
            return self
        if self.where == myid():
            failed = _lookup(self.rrid).store.fetch(timeout)
        else:
            failed = _ask_owner(self.where, _owner_wait, self.rrid, timeout=timeout)
        _unwrap(failed)
        return self

    def done(self) -> bool:
        return self.isready()

    def cancel(self, interrupt: bool = False) -> bool:
        """Cancel the call behind this Future if it has not started (concurrent.futures'
        cancel); with `interrupt=True` a running call is cancelled too, by raising
        KeyboardInterrupt in it (as interrupt(pid) does, for this call only). An unset
        Future(pid) with no call is cancelled at once. Returns True if the Future is now
        cancelled: fetch and wait then raise CancelledError, everywhere."""
        if self._v is not _UNSET or self._pushed is not _UNSET:
            return _is_cancelled(self._v)
        if self.where == myid():
            cancelled = _owner_cancel(self.rrid, interrupt)
        else:
            cancelled = call_fetch(self.where, _owner_cancel, self.rrid, interrupt)
        if cancelled:
            with _held_lock:
                self._v = _Failed(_cancelled_error())
                held, self._held = self._held, False
            if held:
                _release_now(self.where, self.rrid)
        return cancelled

    def cancelled(self) -> bool:
        """True if the Future was cancelled (by this copy or any other)."""
        if self._v is not _UNSET or self._pushed is not _UNSET:
            return _is_cancelled(self._v if self._v is not _UNSET else self._pushed)
        if self.where == myid():
            return _owner_cancelled(self.rrid)
        return call_fetch(self.where, _owner_cancelled, self.rrid)

    def __await__(self) -> Generator[Any, None, T]:
        """`await future` from a running event loop: fetched on a helper thread, so the loop
        keeps running meanwhile. Cancelling the awaiting task (asyncio.wait_for's timeout,
        task.cancel()) cancels the call too, interrupting it if it runs (as wrap_future does
        for a concurrent.futures.Future)."""
        return self._awaited().__await__()

    async def _awaited(self):
        import asyncio
        try:
            return await _in_thread(self.fetch)
        except asyncio.CancelledError:
            STATE.runner.submit(self.cancel, True)       # not on the loop: it is a remote call
            raise

    def __reduce__(self):
        with _held_lock:
            value = self._v
            if value is _UNSET and self._held:
                _count_new_holder(self.where, self.rrid)
        return (_rebuild_future, (self.where, self.whence, self.id, value))

    def __repr__(self) -> str:
        return f"Future(where={self.where}, whence={self.whence}, id={self.id}, {self._state()})"

    def _repr_html_(self) -> str:
        """Jupyter's display: state (asking the owner if need be), where, the result's type."""
        known = self._v if self._v is not _UNSET else self._pushed
        if _is_cancelled(known):
            result = "cancelled"
        elif isinstance(known, _Failed):
            result = f"raised {type(known.exc.captured).__name__}"
        else:
            result = "not fetched yet" if known is _UNSET else type(known).__name__
        where = "the master (process 1)" if self.where == 1 else f"worker {self.where}"
        return _html.fields("Future", [("state", self._state(ask=True)), ("where", where),
                                       ("id", f"{self.whence}/{self.id}"), ("result", result)])

    def _state(self, ask: bool = False) -> str:
        """One word: fetched, cancelled, failed, ready or pending; for a remote owner that
        pushed nothing, "not fetched" unless `ask` (a round trip, which repr never makes)."""
        known = self._v if self._v is not _UNSET else self._pushed
        if _is_cancelled(known):
            return "cancelled"
        if isinstance(known, _Failed):
            return "failed"
        if known is not _UNSET:
            return "fetched" if self._v is not _UNSET else "ready"
        if self.where != myid() and not ask:
            return "not fetched"
        try:
            return "ready" if self.isready() else "pending"
        except Exception as err:            # the owner has exited
            return f"unknown ({err})"


def _rebuild_future(where, whence, id_, value) -> Future:
    fut = Future.__new__(Future)
    fut._init(where, RRID(whence, id_), value is _UNSET)
    fut._v, fut._pushed = value, _UNSET
    fut._fetching = threading.Lock()
    return fut


class RemoteChannel(_Ref):
    """A channel that lives on process `.where` and can be used from any process.

    `RemoteChannel(pid=None, size=1)` backs it with a `Channel(size)`;
    `RemoteChannel(factory, pid)` runs `factory()` on pid to make the backing channel."""

    __slots__ = ()

    def __init__(self, pid: int | Callable[[], Any] | None = None, size: Any = None, *,
                 factory: Callable[[], Any] | None = None):
        if callable(pid):
            factory, pid, size = pid, size, None
        where = myid() if pid is None else int(pid)
        if factory is None:
            factory = _ChannelFactory(1 if size is None else size)
        rrid = _next_rrid()
        if where == myid():
            _lookup(rrid, factory)
        else:
            call_fetch(where, _owner_create, rrid, factory)
        self._init(where, rrid, True)

    def _op(self, op: str, *args, timeout: float | None = None, late=None):
        if self.where == myid():
            return _owner_op(self.rrid, op, args, timeout)
        return _ask_owner(self.where, _owner_op, self.rrid, op, args, timeout=timeout, late=late)

    def isopen(self) -> bool:
        return self._op("isopen")

    def put(self, value: Any) -> "RemoteChannel":
        """Append value, blocking while the channel is full (InvalidStateError if closed)."""
        self._op("put", value)
        return self

    def take(self, timeout: float | None = None) -> Any:
        """Remove and return the first item, blocking while empty; TimeoutError if none came
        within `timeout` seconds (nothing is taken)."""
        return self._op("take", timeout=timeout, late=self._put_back)

    def _put_back(self, item: Any) -> None:
        """An item the owner gave a take that had timed out already: back it goes (last)."""
        try:
            self.put(item)
        except Exception as err:                 # closed meanwhile: say what was lost
            log.warning("pydist: an item taken after its take(timeout=) gave up could not be "
                        "put back into %r: %s", self, err)

    def fetch(self, timeout: float | None = None) -> Any:
        """The first item, without removing it, blocking while empty (TimeoutError after
        `timeout` seconds)."""
        return self._op("fetch", timeout=timeout)

    def isready(self) -> bool:
        return self._op("isready")

    def wait(self, timeout: float | None = None) -> "RemoteChannel":
        """Block until an item is there; it is not removed (TimeoutError after `timeout`)."""
        if self._op("wait", timeout=timeout) is False:          # Channel.wait's timeout
            raise TimeoutError(f"{self!r} had no item within {timeout:g} s")
        return self

    def close(self) -> None:
        self._op("close")

    async def take_async(self) -> Any:
        """`await rc.take_async()`: take without blocking the event loop."""
        return await _in_thread(self.take)

    async def put_async(self, value: Any) -> "RemoteChannel":
        return await _in_thread(self.put, value)

    async def fetch_async(self) -> Any:
        return await _in_thread(self.fetch)

    def __iter__(self):
        while True:
            try:
                yield self.take()
            except InvalidStateError:
                return

    def __reduce__(self):
        with _held_lock:
            if self._held:
                _count_new_holder(self.where, self.rrid)
        return (_rebuild_channel, (self.where, self.whence, self.id))

    def __repr__(self) -> str:
        return f"RemoteChannel(where={self.where}, whence={self.whence}, id={self.id})"


class _ChannelFactory:
    """Makes the default backing Channel; picklable, so it can be run on the owner."""

    def __init__(self, size):
        self.size = size

    def __call__(self) -> Channel:
        return Channel(self.size)


def _rebuild_channel(where, whence, id_) -> RemoteChannel:
    rc = RemoteChannel.__new__(RemoteChannel)
    rc._init(where, RRID(whence, id_), True)
    return rc


# -- functions of API.md ------------------------------------------------------------------
def remoteref_id(ref: _Ref) -> RRID:
    """The RRID naming a Future or RemoteChannel (Julia: remoteref_id)."""
    return ref.rrid


def channel_from_id(rrid) -> Any:
    """The backing channel of the reference `rrid` on its owner (Julia: channel_from_id).

    Raises KeyError when this process holds nothing under that id."""
    return _refs[RRID(*rrid)].store


@overload
def fetch(x: Future[T], timeout: float | None = None) -> T: ...
@overload
def fetch(x: Any, timeout: float | None = None) -> Any: ...


def fetch(x: Any, timeout: float | None = None) -> Any:
    """A Future's value, a RemoteChannel's first item, a task's outcome (distributed());
    anything else is returned as is. TimeoutError if it is not there within `timeout` s."""
    if isinstance(x, (_Ref, Channel)) or getattr(x, "_pydist_future_like", False):
        return x.fetch() if timeout is None else x.fetch(timeout=timeout)
    return x


def put(ref, value: Any):
    """Put value into a Future, RemoteChannel or Channel (Julia: put!)."""
    return ref.put(value)


def take(ref, timeout: float | None = None) -> Any:
    """Take the first item of a RemoteChannel or Channel (Julia: take!); not for a Future.
    TimeoutError if none came within `timeout` seconds (nothing is taken)."""
    if isinstance(ref, Future):
        raise TypeError("take is not defined for a Future (it holds one value): use fetch")
    return ref.take() if timeout is None else ref.take(timeout=timeout)


def isready(ref) -> bool:
    """True if fetch (or take) would not block."""
    return ref.isready()


def wait(ref, timeout: float | None = None):
    """Wait for a Future, RemoteChannel, Channel or anything with .wait(); TimeoutError if it
    is not ready within `timeout` seconds (Julia: wait; timedwait)."""
    if timeout is None:
        ref.wait()
    elif ref.wait(timeout=timeout) is False:     # Channel.wait and Event-likes answer False
        raise TimeoutError(f"{ref!r} was not ready within {timeout:g} s")
    return ref
