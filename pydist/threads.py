"""Which thread runs what: the runner's threads, and moving a link's reading off a thread.

An incoming call runs on the thread that read it from its link (transport.Link.run_inline):
a quick call then costs no thread switch.  A call must not keep its link unread, though,
so the reading moves to another thread when the call

* is about to wait (`release_reading`, called by every pydist wait: a Channel, a Reply,
  an interruptible sleep), since the awaited answer may come over that very link, or
* runs longer than INLINE_SECONDS (the thread `pydist-inline-watch`, `watch`, which ticks
  only while calls run inline).

The threads that take over come from the `Runner` (`STATE.runner`), which also runs calls
made to this process itself and work handed over by reply callbacks.  It keeps idle threads
for reuse and starts new ones freely up to SOFT_LIMIT, then only when work is starved, so a
call blocked for good (a take on an empty channel) never keeps another call from running,
while a burst of calls does not start a thread per call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("pydist")

_monotonic = time.monotonic
INLINE_SECONDS = 0.001       # a call may keep its link's reader this long; then reading moves


class Runner:
    """Runs submitted functions (incoming calls, link readers) on threads, reusing idle ones.

    Up to SOFT_LIMIT threads start as soon as work has no idle thread.  Past that, work waits
    in a backlog, and the thread `pydist-runner-watch` starts one more thread each
    STARVATION_CHECK seconds in which no work finished: calls blocked for good (a take on an
    empty channel, a call back into its caller) still never keep another call from running,
    while a burst of calls does not start a thread per call. Quick calls need no thread at
    all (they run on the link's reader); a thread is taken when a call waits or runs long."""

    IDLE_SECONDS = 30.0      # an idle thread lingers this long for the next call
    SOFT_LIMIT = 128         # threads started at once; more only when work is starved
    STARVATION_CHECK = 0.01  # short: a starved call waits this long per extra thread

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Condition()   # guards _idle, _alive, _backlog, _done, _started
        self._idle = 0         # threads waiting for work that nobody has claimed
        self._alive = 0        # threads running or waiting
        self._backlog = 0      # queued work no thread is claimed for yet
        self._done = 0         # work finished so far (progress, for the watch)
        self._started = 0
        self._watch: threading.Thread | None = None

    def submit(self, fn, *args) -> None:
        spawn = False
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._alive < self.SOFT_LIMIT:
                spawn = True
                self._alive += 1
            else:
                self._backlog += 1
                if self._backlog == 1:
                    self._lock.notify()         # wake the watch: a backlog began
                if self._watch is None:
                    self._watch = threading.Thread(target=self._watch_backlog, daemon=True,
                                                   name="pydist-runner-watch")
                    self._watch.start()
        self._queue.put((fn, args))
        if spawn:
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._started += 1
            number = self._started
        threading.Thread(target=self._loop, name=f"pydist-call-{number}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                fn, args = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:          # nobody claimed this thread: retire it
                        self._idle -= 1
                        self._alive -= 1
                        return
                continue                        # claimed just now: its work is on the way
            try:
                fn(*args)
            except BaseException:               # a stray interrupt must not kill the thread
                log.exception("pydist: a call handler failed")
            with self._lock:
                self._done += 1
                if self._backlog:
                    self._backlog -= 1          # take waiting work: stay claimed
                else:
                    self._idle += 1

    def _watch_backlog(self) -> None:
        with self._lock:
            while True:
                self._lock.wait_for(lambda: self._backlog > 0)
                done = self._done
                progressed = self._lock.wait_for(lambda: self._done != done, self.STARVATION_CHECK)
                if self._backlog and not progressed:         # nothing finished: starved
                    self._backlog -= 1
                    self._alive += 1
                    self._lock.release()
                    try:
                        self._spawn()
                    finally:
                        self._lock.acquire()


_inline = threading.local()      # .call: the InlineCall this thread runs on a link's reader


class InlineCall:
    """A call running on the thread that read it; `hand_off` moves the reading to another
    thread (once: `read_elsewhere()`), after which that thread reads and this one only
    finishes the call. `role_lock` is the link's: it orders `moved` against `done`."""

    __slots__ = ("role_lock", "read_elsewhere", "started", "moved", "done")

    def __init__(self, role_lock: threading.Lock, read_elsewhere):
        self.role_lock, self.read_elsewhere = role_lock, read_elsewhere
        self.started = _monotonic()
        self.moved = self.done = False

    def begin(self) -> None:
        """On the reading thread, before the call runs."""
        _inline.call = self
        watch.add(self)

    def end(self) -> bool:
        """On the same thread, after the call: True if reading moved to another thread."""
        _inline.call = None
        watch.remove(self)
        with self.role_lock:
            self.done = True
        return self.moved

    def hand_off(self) -> None:
        with self.role_lock:
            if self.moved or self.done:
                return
            self.moved = True
        self.read_elsewhere()


def inline_call() -> InlineCall | None:
    """The call this thread runs on a link's reader, if any."""
    return getattr(_inline, "call", None)


def release_reading() -> None:
    """This thread is about to wait: if it runs a call on a link's reader, let another thread
    read that link first (the awaited answer may come over it)."""
    call = getattr(_inline, "call", None)
    if call is not None:
        _inline.call = None
        call.hand_off()


class _InlineWatch:
    """Hands off the reading of links whose inline call has run for INLINE_SECONDS (a long
    computation, a wait outside pydist). Its thread ticks only while calls run inline."""

    def __init__(self):
        self._calls: dict[InlineCall, None] = {}
        self._started = 0            # inline calls begun so far: activity since the last tick
        self._parked = True
        self._wake = threading.Event()
        self._tick = threading.Event()   # never set: a sleep that a patched time.sleep cannot touch
        self._thread: threading.Thread | None = None

    def add(self, call: InlineCall) -> None:
        self._calls[call] = None
        self._started += 1
        if self._parked:
            self._parked = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pydist-inline-watch",
                                                daemon=True)
                self._thread.start()
            self._wake.set()

    def remove(self, call: InlineCall) -> None:
        self._calls.pop(call, None)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                seen = self._started
                self._tick.wait(INLINE_SECONDS)
                now = _monotonic()
                for call in list(self._calls):
                    if now - call.started >= INLINE_SECONDS:
                        self._calls.pop(call, None)
                        call.hand_off()
                if self._calls or self._started != seen:
                    continue
                self._parked = True          # add() sees this, or we see its call below
                if self._calls or self._started != seen:
                    self._parked = False
                    continue
                break


watch = _InlineWatch()


runner = Runner()        # this process's (process.STATE.runner)
