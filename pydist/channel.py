"""Channel: a bounded, closable, iterable queue (Julia: Channel).

It is the default store behind a RemoteChannel, and the one-slot store in which the owner
of a Future keeps its value.  All waits end on `close()`.  Waits without a timeout wake up
every WAKE_SECONDS, so that `interrupt` (an exception raised in the waiting thread, which
Python delivers only while the thread runs) reaches a call blocked in take, put or fetch.
A call about to wait first lets another thread read its link (threads.release_reading).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Iterator

from .errors import InvalidStateError
from .replies import WAKE_SECONDS
from .threads import release_reading


def _deadline(timeout: float | None) -> float | None:
    """The monotonic time a wait of `timeout` seconds ends (None: never)."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return time.monotonic() + timeout


class Channel:
    """A queue of at most `size` items (`size=0`: each put waits for its taker;
    `size=math.inf`: unbounded). Safe to use from any thread."""

    def __init__(self, size: float = 1):
        if size < 0:
            raise ValueError(f"Channel size must be >= 0 or math.inf, not {size!r}")
        self.size = size
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())   # guards _items, _closed, _taken
        self._closed = False
        self._taken = 0          # items taken so far: an unbuffered put waits for its own take

    def put(self, item: Any) -> Any:
        """Append `item`, blocking while the channel is full; returns `item`.

        Raises InvalidStateError if the channel is (or becomes) closed."""
        with self._cond:
            limit = max(self.size, 1)
            while not self._closed and len(self._items) >= limit:
                self._wait(WAKE_SECONDS)
            if self._closed:
                raise InvalidStateError("put on a closed channel")
            self._items.append(item)
            ticket = self._taken + len(self._items)
            self._cond.notify_all()
            if self.size == 0:          # rendezvous: wait until a taker has it
                while self._taken < ticket and not self._closed:
                    self._wait(WAKE_SECONDS)
        return item

    def take(self, timeout: float | None = None) -> Any:
        """Remove and return the first item, blocking while empty (Julia: take!).

        Raises InvalidStateError once closed and empty, so a consumer loop ends instead of
        hanging; TimeoutError if no item came within `timeout` seconds (nothing is taken)."""
        deadline = _deadline(timeout)
        with self._cond:
            while not self._items:
                if self._closed:
                    raise InvalidStateError("take on a closed, empty channel")
                self._wait_until(deadline, "take")
            item = self._items.popleft()
            self._taken += 1
            self._cond.notify_all()
            return item

    def fetch(self, timeout: float | None = None) -> Any:
        """Return the first item without removing it, blocking while empty; TimeoutError if
        none came within `timeout` seconds."""
        deadline = _deadline(timeout)
        with self._cond:
            while not self._items:
                if self._closed:
                    raise InvalidStateError("fetch on a closed, empty channel")
                self._wait_until(deadline, "fetch")
            return self._items[0]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an item is there (it is not removed); False if `timeout` ran out.

        Raises InvalidStateError if the channel is closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise InvalidStateError("wait on a closed, empty channel")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wait(remaining)
            return True

    def _wait(self, timeout: float | None) -> None:
        release_reading()
        self._cond.wait(timeout)

    def _wait_until(self, deadline: float | None, what: str) -> None:
        """Wait for a change, at most until `deadline` (TimeoutError after it)."""
        if deadline is None:
            self._wait(WAKE_SECONDS)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: no item came within the timeout")
        self._wait(min(remaining, WAKE_SECONDS))

    def isready(self) -> bool:
        """True if a take would not block."""
        return bool(self._items)

    def isopen(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Refuse further puts; wakes every waiter. Items already in can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        """Take items until the channel is closed and empty."""
        while True:
            try:
                yield self.take()
            except InvalidStateError:
                return

    def __repr__(self) -> str:
        size = "inf" if self.size == math.inf else self.size
        state = "closed" if self._closed else "open"
        return f"Channel(size={size}, {len(self._items)} items, {state})"
