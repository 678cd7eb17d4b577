"""The answer to a call a Link sent: filled in by the link's reader (or by whoever closes the
link), waited on by the caller or handed to a callback (transport.Link.request makes them)."""

from __future__ import annotations

import logging
import threading
import time

from .threads import release_reading

log = logging.getLogger("pydist")

_monotonic = time.monotonic
WAKE_SECONDS = 0.2           # a waiter wakes this often so interrupt() can reach it


class Reply:
    """The answer to one call, filled in by the link's reader thread (or the one closing the
    link). Waiting costs one lock acquire."""

    __slots__ = ("pid", "kind", "body", "buffers", "error", "_done")

    def __init__(self, pid: int):
        self.pid = pid
        self.kind = self.body = self.buffers = self.error = None
        self._done = threading.Lock()
        self._done.acquire()

    def set(self, kind, body, buffers, error: BaseException | None = None) -> None:
        self.kind, self.body, self.buffers, self.error = kind, body, buffers, error
        self._done.release()

    def done(self) -> bool:
        return self.kind is not None or self.error is not None

    def wait(self, timeout: float | None = None) -> bool:
        if not self.done():
            release_reading()
        if timeout is None:
            while not self._done.acquire(timeout=WAKE_SECONDS):
                pass            # wake now and then: an interrupt is delivered between waits
        else:
            deadline = _monotonic() + timeout
            while not self._done.acquire(timeout=min(max(deadline - _monotonic(), 0), WAKE_SECONDS)):
                if _monotonic() >= deadline:
                    return False
        self._done.release()
        return True


class CallbackReply(Reply):
    """A Reply no one waits on: `on_done(reply)` runs on the thread that fills it in, so it
    must be quick. It makes, takes and releases no lock: pmap, the executor and pool
    remotecalls send many calls answered this way."""

    __slots__ = ("_on_done",)

    def __init__(self, pid: int, on_done):        # no lock: nobody waits
        self.pid = pid
        self.kind = self.body = self.buffers = self.error = None
        self._on_done = on_done

    def set(self, kind, body, buffers, error: BaseException | None = None) -> None:
        self.kind, self.body, self.buffers, self.error = kind, body, buffers, error
        try:
            self._on_done(self)
        except Exception:
            log.exception("pydist: a reply callback failed")

    def wait(self, timeout: float | None = None) -> bool:
        if not self.done():
            raise RuntimeError("a CallbackReply is read in its on_done function, once answered")
        return True
