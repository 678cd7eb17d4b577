"""Future and RemoteChannel, the references to values that live on one process (Julia:
remoteref.jl); the owner's table and the counting of holders are owners.py's.

A reference object counts as a holder on its owner until it is dropped, or, for a Future,
until it has fetched (or put) the value, which it then caches. `_held` says whether it still
counts; it changes, and a Future's value is cached, only under `_held_lock`, which pickling
a reference (`__reduce__`, telling the owner of the new holder first) also holds.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Generator
from typing import Any, Callable, Generic, TypeVar, overload

from . import _html
from .channel import Channel
from .errors import InvalidStateError, RemoteException
from .messages import Kind
from .owners import (_UNSET, RRID, _ask_owner, _cancelled_error, _count_new_holder, _Failed,
                     _is_cancelled, _lookup, _next_rrid, _owner_cancel, _owner_cancelled,
                     _owner_create, _owner_fetch, _owner_isready, _owner_op, _owner_put_future,
                     _owner_wait, _refs, _release_now, _start_releasing, release_later)
from .process import STATE, call_fetch, myid
from .serialize import loads

log = logging.getLogger("pydist")
_held_lock = threading.Lock()        # guards every reference object's _held flag


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
                release_later(self.where, RRID(self.whence, self.id))
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
    # asked of the type: an object that makes up attributes (a Mock, a proxy) is a plain value
    if isinstance(x, (_Ref, Channel)) or getattr(type(x), "_pydist_future_like", False):
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
