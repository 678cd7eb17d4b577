"""The cluster manager interface (Julia: ClusterManager, WorkerConfig, launch/manage/connect/kill).

A backend subclasses `ClusterManager` and writes `launch` and `manage`; `connect` and `kill`
have working defaults.  `launch` runs on a thread of its own: it appends a `WorkerConfig` to
`launched` for every worker it started and notifies `notify`, so the master sets up each
worker while the others are still starting.

This module is the core's whole side of the manager interface: besides the four verbs it
holds the few core services a backend needs (the cluster id, asking a worker to exit, the
`pydist_worker:PORT#HOST` line, a join listener's socket, retiring workers).  Backends do not
import it directly: `pydist.managers.base` gathers these names with the backends' shared
bases into the one module a manager author imports from (docs/managers/writing.md).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from . import settings
from .process import STATE, accept, exit_process, internal, send_call
from .messages import Mode
from .sockets import dial, open_listener, serve
from .worker import parse_address


@dataclasses.dataclass
class WorkerConfig:
    """What a manager knows about one worker it launched (Julia: WorkerConfig).

    Master-connects: set `io` (a binary stream the worker prints `pydist_worker:PORT#HOST`
    on) or `host` and `port`.  `ident` names the worker for the manager, `connect_idents`
    lists the idents it must connect to in the "custom" topology, `userdata` is the
    manager's own."""
    io: Any = None
    host: str | None = None
    port: int | None = None
    bind_addr: str | None = None
    count: int | None = None
    exename: str | None = None
    exeflags: list[str] | None = None
    environ: dict | None = None
    ident: Any = None
    connect_idents: list | None = None
    userdata: Any = None
    process: Any = None
    ospid: int | None = None
    tunnel: bool | None = None
    multiplex: bool | None = None
    forward: str | None = None
    sshflags: list[str] | None = None
    max_parallel: int | None = None
    connect_at: Any = None
    enable_threaded_blas: bool | None = None
    sock: socket.socket | None = None   # an already authenticated link (worker-connects managers)


def default_addprocs_params() -> dict:
    """The defaults every addprocs call starts from (Julia: default_addprocs_params)."""
    return {
        "topology": "all_to_all",
        "lazy": True,
        "dir": os.getcwd(),
        "exename": sys.executable,
        "exeflags": [],
        "env": {},
        "enable_threaded_blas": False,
    }


class ClusterManager(abc.ABC):
    """Starts and stops workers for `addprocs` (Julia: ClusterManager).

    `params` extends the keywords addprocs accepts with this manager's own, with defaults."""

    params: dict = {}

    @abc.abstractmethod
    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Start workers; append a WorkerConfig per worker to `launched` and notify `notify`."""

    @abc.abstractmethod
    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Hook for "register", "deregister", "interrupt" and "finalize" of worker `pid`."""

    def connect(self, pid: int, config: WorkerConfig):
        """Open the master's link to worker `pid`; returns (reader, writer), here one socket."""
        if config.sock is not None:
            return config.sock, config.sock
        host = config.bind_addr or config.host
        if host is None or config.port is None:
            raise ValueError(f"worker {pid}: the manager gave neither an address line (io) nor host and port")
        sock = dial(host, int(config.port))
        return sock, sock

    def replacement(self, config: WorkerConfig) -> "ClusterManager":
        """A manager that launches one worker like the one `config` describes, to replace it
        after it died (`addprocs(..., restart=True)`). Managers that can start a worker on
        their own say how; this default says they cannot."""
        raise TypeError(f"{type(self).__name__} cannot start a replacement for a worker that died "
                        "(restart=True): it has no replacement() method. Restart such workers "
                        "where they are started, or use a manager that starts its own workers")

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Make worker `pid` exit: ask it, then SIGTERM, then SIGKILL its process if there is one."""
        if not ask_to_exit(pid, settings.EXIT_TIMEOUT):
            stop_process(config.process)
        reap(config.process)


@internal
def _exit_now() -> None:
    exit_process(0)



def ask_to_exit(pid: int, timeout: float) -> bool:
    """Tell worker `pid` to exit and wait until its link is gone; False if it did not go."""
    if pid not in STATE.links:
        return pid in STATE.dead          # never joined, or already gone
    try:
        send_call(pid, Mode.DO, _exit_now)
    except Exception:
        pass
    with STATE.cond:
        return STATE.cond.wait_for(lambda: pid in STATE.dead, timeout)


def stop_process(process) -> None:
    """SIGTERM a local worker process, then SIGKILL it if it is still there after TERM_TIMEOUT."""
    if not hasattr(process, "poll") or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(settings.TERM_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()


def reap(process) -> None:
    """Collect an exited local worker process so no zombie is left (a subprocess.Popen, or
    LocalManager's ForkedProcess, which its fork server reaps)."""
    if hasattr(process, "wait"):
        try:
            process.wait(settings.TERM_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- core services for backends (re-exported by pydist.managers.base) ---------------------------
def cluster_id() -> str:
    """This cluster's id: names and labels a backend gives its resources (pods, containers) so
    they can be found and cleaned up, and told apart from another master's."""
    return STATE.cluster_id


def master_hostname() -> str:
    """The master's hostname, as its workers are told it."""
    return STATE.hostname


def serve_offers(host: str, port: int, on_offer, name: str) -> socket.socket:
    """Listen on host:port (0: any free port) for workers that dial in to join: each connection
    is authenticated with the cookie on a thread of its own, then `on_offer(sock, offer)` gets
    the worker's link and its offer (a dict with `ident`, `host`, `port`).  The listener runs
    on a thread named `name` until the returned socket is closed."""
    sock = open_listener(host, port)
    serve(sock, lambda conn, addr: accept(conn, addr, on_offer=lambda link, offer: on_offer(link.sock, offer)),
          name)
    return sock


def retire_workers(pids: list[int], timeout: float) -> None:
    """Let workers leave cleanly before their resources go away (a job's walltime): lend them
    no more work, let their running calls finish for up to `timeout` seconds, remove them."""
    from .pools import retire_workers as retire     # pools is a layer above this module
    retire(pids, timeout)


__all__ = ["ClusterManager", "WorkerConfig", "default_addprocs_params", "ask_to_exit", "stop_process",
           "reap", "cluster_id", "master_hostname", "parse_address", "serve_offers", "retire_workers"]
