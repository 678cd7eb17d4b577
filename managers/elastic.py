"""ElasticManager: workers dial the master and join (worker connects).

The master listens on one port; `python -m pydist.worker --join HOST:PORT --cookie-file F`
dials it, authenticates, offers itself and gets the next id.  This is the one model that
survives NAT, login-node firewalls and pods the driver cannot reach, so the Kubernetes and
Slurm managers use the same `JoinListener`.

`addprocs(ElasticManager(n=4))` waits for 4 joins (up to `timeout`); with
`keep_accepting=True`, workers that join later (a scaled-up Deployment) are added by
themselves, on a thread of their own.  `kill` asks the worker to exit.

Threads: `pydist-join-<port>`, one per listener, accepts and starts a handshake thread per
connection; it ends when the listener is closed (`close()`: only a listener of one's own,
port=0, which `ElasticManager.stop()` closes).  `pydist-elastic`, one per keep_accepting
manager, adds late workers until `stop()`.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from typing import Callable

from pydist import ClusterManager, LaunchError, WorkerConfig, addprocs
from pydist import process
from pydist.transport import open_listener, serve

from ._base import host_port, refuse

DEFAULT_PORT = 9090


class JoinListener:
    """The master's side of the join path: a port that authenticated workers offer
    themselves on.  Offers wait until a launch takes one; a manager that launches workers
    itself (Slurm, Kubernetes) `claim`s the offers it recognises, and ElasticManager takes
    only the unclaimed rest, so two managers never take each other's workers."""

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, advertise: str | None = None):
        self.socket = open_listener(host, port)
        self.host, self.port = advertise or host, self.socket.getsockname()[1]
        self._cond = threading.Condition()        # guards _offers, _claims and _closed
        self._offers: list[WorkerConfig] = []
        self._claims: list[Callable[[WorkerConfig], bool]] = []
        self._closed = False
        serve(self.socket, functools.partial(process.accept, on_offer=self._on_offer),
              f"pydist-join-{self.port}")          # last: offers may arrive at once

    def _on_offer(self, link, offer: dict) -> None:
        config = WorkerConfig(sock=link.sock, host=offer.get("host"), port=offer.get("port"),
                              ident=offer.get("ident"), userdata=offer)
        self.give_back(config)

    def claim(self, recognises: Callable[[WorkerConfig], bool]) -> None:
        """Reserve the offers `recognises` accepts for the caller (ElasticManager skips them)."""
        with self._cond:
            self._claims.append(recognises)

    def unclaimed(self, config: WorkerConfig) -> bool:
        return not any(recognises(config) for recognises in self._claims)

    def give_back(self, config: WorkerConfig) -> None:
        """Queue an offer (again), for whichever launch accepts it; refused once closed."""
        with self._cond:
            closed = self._closed
            if not closed:
                self._offers.append(config)
                self._cond.notify_all()
        if closed:
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


class ElasticManager(ClusterManager):
    """Accepts workers that join by themselves (`python -m pydist.worker --join HOST:PORT`).

    n: workers addprocs waits for; timeout: seconds to wait for them; keep_accepting: add
    workers that join after addprocs returned, in the background, until `stop()`.
    port=0 gives this manager a listener of its own on a free port, closed by `stop()`; a
    fixed port is shared with the other managers that listen there (each takes only the
    offers it recognises) and stays open."""

    def __init__(self, n: int = 0, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                 advertise: str | None = None, timeout: float = 60.0, keep_accepting: bool = False):
        self.n = n
        self.timeout = timeout
        self.keep_accepting = keep_accepting
        self.listener = join_listener(host, port, advertise) if port else JoinListener(host, 0, advertise)
        self._own_listener = not port           # then stop() closes it
        self._background: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """Where workers should dial: pass it as --join HOST:PORT."""
        return self.listener.host, self.listener.port

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        deadline = time.monotonic() + self.timeout
        got = 0
        while got < self.n:
            config = self.listener.next_offer(deadline - time.monotonic(), self.listener.unclaimed)
            if config is None:
                raise LaunchError([(f"{self.n - got} of {self.n} workers",
                                    f"did not join {host_port(*self.address)} within "
                                    f"{self.timeout:.0f} s; check that they were started with --join "
                                    "and the same cookie")])
            with notify:
                launched.append(config)
                notify.notify_all()
            got += 1
        if self.keep_accepting and self._background is None:
            self._background = threading.Thread(target=self._accept_late, name="pydist-elastic",
                                                daemon=True)
            self._background.start()

    def stop(self) -> None:
        """Stop adding workers that join late; those already added stay.  A listener of the
        manager's own (port=0) is closed: its port refuses connections from then on."""
        self._stopped.set()
        self.listener.wake()
        if self._own_listener:
            self.listener.close()

    def _accept_late(self) -> None:
        while not self._stopped.is_set():
            config = self.listener.next_offer(None, self.listener.unclaimed, self._stopped)
            if config is None:
                continue
            try:
                addprocs(_Joined(self, config))
            except Exception as err:
                print(f"pydist: a late worker ({config.ident}) could not join: {err}")

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Nothing to do: the core sends interrupts and exit requests over the link."""


class _Joined(ClusterManager):
    """One worker that already dialed in, added by ElasticManager in the background."""

    def __init__(self, owner: ElasticManager, config: WorkerConfig):
        self.owner, self.config = owner, config

    def launch(self, params, launched, notify):
        with notify:
            launched.append(self.config)
            notify.notify_all()

    def manage(self, pid, config, op):
        self.owner.manage(pid, config, op)

    def kill(self, pid, config):
        self.owner.kill(pid, config)
