"""The master's join listener: the port workers that dial in offer themselves on, and which of
those offers belong to a launch of this process (pydist.managers._join).

An offer whose ident a launch expects waits for that launch; one whose launch is over is
*stale* and refused at once (a worker that joins after its launch failed or gave up on it must
not become a member); the rest (ElasticManager's) are left to whoever asks for unclaimed ones.

Threads: `pydist-join-<port>` (`pydist-join-any` for port 0), one per listener, accepts and
starts a handshake thread per connection until the listener is closed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

from pydist import WorkerConfig
from pydist.manager import serve_offers

from ._base import refuse

log = logging.getLogger("pydist")

DEFAULT_PORT = 9090


_lock = threading.Lock()                 # guards _expected and _awaiting
_expected: set[str] = set()             # every ident a launch of this process ever waited for
_awaiting: set[str] = set()             # the idents a launch waits for now


def awaiting(idents: list[str]) -> None:
    """A launch waits for these workers: their offers are its (call before they can dial in)."""
    with _lock:
        _expected.update(idents)
        _awaiting.update(idents)


def awaited(idents: list[str]) -> None:
    """No launch waits for these workers any more (joined, or given up): a new offer is stale."""
    with _lock:
        _awaiting.difference_update(idents)


def _stale(ident: str) -> bool:
    with _lock:
        return ident in _expected and ident not in _awaiting


def unclaimed(config: WorkerConfig) -> bool:
    """An offer no launch of this process expects (ElasticManager takes only these)."""
    with _lock:
        return str(config.ident) not in _expected


class JoinListener:
    """The master's side of the join path: a port that authenticated workers offer themselves
    on.  Offers wait until a launch takes one (`next_offer`); stale ones are refused."""

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, advertise: str | None = None):
        self._cond = threading.Condition()        # guards _offers and _closed
        self._offers: list[WorkerConfig] = []
        self._closed = False
        self.socket = serve_offers(host, port, self._on_offer, f"pydist-join-{port or 'any'}")
        self.host, self.port = advertise or host, self.socket.getsockname()[1]

    def _on_offer(self, sock: socket.socket, offer: dict) -> None:
        config = WorkerConfig(sock=sock, host=offer.get("host"), port=offer.get("port"),
                              ident=offer.get("ident"), userdata=offer)
        if _stale(str(config.ident)):
            log.warning("pydist: refused worker %s: its launch is over (it failed or timed out)", config.ident)
            refuse(config)
            return
        with self._cond:
            closed = self._closed
            if not closed:
                self._offers.append(config)
                self._cond.notify_all()
        if closed:
            refuse(config)

    def refuse_stale(self) -> None:
        """Refuse the queued offers whose launch ended meanwhile."""
        with self._cond:
            stale = [config for config in self._offers if _stale(str(config.ident))]
            self._offers = [config for config in self._offers if config not in stale]
        for config in stale:
            log.warning("pydist: refused worker %s: its launch is over", config.ident)
            refuse(config)

    def close(self) -> None:
        """Stop listening, refuse the offers no launch took and wake every next_offer (which
        then returns None).  Only for a listener of one's own: join_listener's are shared."""
        with self._cond:
            self._closed = True
            offers, self._offers = self._offers, []
            self._cond.notify_all()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept(); close alone does not
        except OSError:
            pass
        self.socket.close()
        for config in offers:
            refuse(config)

    def wake(self) -> None:
        """Make every waiting next_offer look at its `stop` event."""
        with self._cond:
            self._cond.notify_all()

    def next_offer(self, timeout: float | None, accept: Callable[[WorkerConfig], bool] | None = None,
                   stop: threading.Event | None = None) -> WorkerConfig | None:
        """The oldest offer `accept` takes (default: any), waiting up to `timeout` seconds
        (None: for ever, or until `stop` is set and wake() called, or close()); None if none came."""
        accept = accept or (lambda config: True)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        with self._cond:
            while not self._closed and (stop is None or not stop.is_set()):
                for i, config in enumerate(self._offers):
                    if accept(config):
                        return self._offers.pop(i)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None


_listeners: dict[tuple[str, int], JoinListener] = {}
_listeners_lock = threading.Lock()      # guards _listeners


def join_listener(host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                  advertise: str | None = None) -> JoinListener:
    """The master's join listener on host:port, opened on first use (port 0: any free port,
    reusing a listener already open on that host)."""
    with _listeners_lock:
        for (h, p), listener in _listeners.items():
            if h == host and (port == 0 or p == port):
                return listener
        listener = JoinListener(host, port, advertise)
        _listeners[(host, listener.port)] = listener
        return listener
