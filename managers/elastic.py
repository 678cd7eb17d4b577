"""ElasticManager: workers dial the master and join (worker connects).

The master listens on one port; `python -m pydist.worker --join HOST:PORT --cookie-file F`
dials it, authenticates, offers itself and gets the next id.  This is the one model that
survives NAT, login-node firewalls and pods the driver cannot reach, so the Kubernetes and
Slurm managers use the same listener (pydist.managers._join); ElasticManager takes only the
offers no launch of theirs expects.

`addprocs(ElasticManager(n=4))` waits for 4 joins (up to `timeout`); with
`keep_accepting=True`, workers that join later (a scaled-up Deployment) are added by
themselves, on a thread of their own.  `kill` asks the worker to exit.

Threads: `pydist-elastic`, one per keep_accepting manager, adds late workers until `stop()`;
a listener of the manager's own (port=0) is closed by `stop()` too.
"""

from __future__ import annotations

import threading
import time

from .base import ClusterManager, LaunchError, WorkerConfig, addprocs, host_port
from ._listener import DEFAULT_PORT, JoinListener, join_listener, unclaimed


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
        """Wait for `n` workers to dial in (up to `timeout` seconds) and hand them to the core."""
        deadline = time.monotonic() + self.timeout
        got = 0
        while got < self.n:
            config = self.listener.next_offer(deadline - time.monotonic(), unclaimed)
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
            config = self.listener.next_offer(None, unclaimed, self._stopped)
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
