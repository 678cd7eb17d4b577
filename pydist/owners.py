"""The owner's side of Futures and RemoteChannels: values by RRID, and who still holds them.

A reference (refs.py) names a value by RRID (whence, id): `whence` is the process that
created the reference, `id` a counter there.  The value lives on the owner (`.where`), in
this process's table `_refs` (rrid -> _RemoteValue), as Julia keeps it in `PGRP.refs`: a
RemoteChannel's backing channel, or a one-slot Channel holding a Future's value.  Callers
act on it through the `_owner_*` functions, which run on the owner (they travel by
reference); `_ask_owner` runs one with a timeout.

Counting holders.  The owner keeps, per rrid, how many live reference objects each process
holds (`clients`).  The creator's object is counted when the entry is made.  When a
reference is pickled for process D (serialize.destination()), the sender tells the owner
first (ADD_CLIENT, on the same ordered link when D is the owner), so the count can never
drop to zero while a copy is in flight; when a reference object dies, its process sends
DEL_CLIENTS.  A Future that has fetched (or put) its value caches it and stops counting at
once, and a cached value travels with the Future.  When every count is zero the owner
frees the value; when a process exits, its counts are dropped.

Reference objects die in `__del__`, which may run inside the garbage collector on any
thread, holding any lock; so it only queues the release (`release_later`), and the thread
`pydist-refs` (started with the first reference) sends the batched DEL_CLIENTS and
decrements local counts.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
import time
from typing import Any, Callable, NamedTuple

from .channel import Channel
from .errors import InvalidStateError, RemoteException
from .messages import Kind, Mode
from .process import STATE, call_fetch, get_link, internal, myid, result, send_call
from .replies import WAKE_SECONDS
from .threads import release_reading
from .serialize import destination, dumps, loads, undo_if_not_sent


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


def release_later(owner: int, rrid: RRID) -> None:
    """A reference object died (its __del__: any thread, inside the GC): queue the release."""
    _releases.put((owner, rrid))


def _release_now(owner: int, rrid: RRID) -> None:
    """Drop this process's count for rrid from a normal thread (not from __del__)."""
    if owner == myid():
        _del_client(rrid, owner)
    else:
        _releases.put((owner, rrid))


STATE.handlers[Kind.ADD_CLIENT] = _on_add_client
STATE.handlers[Kind.DEL_CLIENTS] = _on_del_clients
STATE.exit_hooks.append(_drop_process)
_releaser: threading.Thread | None = None      # runs _release_loop, from the first reference on
_releaser_lock = threading.Lock()


def _start_releasing() -> None:
    """Start the thread that sends releases, when the first reference is made: not at import,
    so the fork server, which imports pydist, has no thread of its own when it forks."""
    global _releaser
    if _releaser is not None:            # every reference passes here: no lock once started
        return
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
    release_reading()                       # the answer may come over the link this thread reads
    deadline = time.monotonic() + timeout + OWNER_GRACE
    while not ask.answered.wait(min(max(deadline - time.monotonic(), 0), WAKE_SECONDS)):
        if time.monotonic() >= deadline:    # (waking now and then lets interrupt() in)
            if ask.give_up():
                raise TimeoutError(f"process {where} did not answer within {timeout:g} s")
            break
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
