"""LocalManager: workers as processes on this machine (Julia: LocalManager).

Each worker is `python -m pydist.worker --bind-to 127.0.0.1`, started in a session of its
own (a Ctrl-C at the terminal reaches the master only).  The cookie goes in on stdin; the
worker prints its address on stdout, which stays the worker's output relay.  The master's
link to it is a Unix socket pair made at launch (`--linked-fd`): a message costs fewer
system-call cycles than over loopback TCP (round trips ~1/3 shorter here), and no port is
dialed; the worker still listens on TCP for its peers, and the link authenticates as any
other.  `kill` asks the worker to exit, then SIGTERM, then SIGKILL.

Workers are forked by a fork server (_forkserver.py) started with that same command line,
environment and directory, so a worker costs a fork instead of an interpreter start; where
that cannot be (PYDIST_FORK_SERVER=0, no fork, the server failed) each worker is spawned.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading

from .base import ClusterManager, WorkerConfig, cluster_cookie, worker_argv, worker_command, worker_env
from ._forkserver import ForkServer, ForkServerError

log = logging.getLogger("pydist")


class LocalManager(ClusterManager):
    """`n` workers on this machine; `restrict=True` binds them to 127.0.0.1 only."""

    def __init__(self, n: int, restrict: bool = True):
        self.n = n
        self.restrict = restrict
        self.params = {"restrict": restrict}     # addprocs's keywords for LocalManager, with defaults

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        bind = "127.0.0.1" if params.get("restrict", self.restrict) else "0.0.0.0"
        argv = worker_argv(params, "--bind-to", bind)
        command = worker_command(params)
        env = {**os.environ, **worker_env(params)}
        cookie = (cluster_cookie() + "\n").encode()
        server = ForkServer.for_command(command, env, params["dir"])
        for _ in range(self.n):
            process = stdin = None
            ours, theirs = _socket_pair()
            try:
                if server is not None:
                    try:
                        process, stdin = server.spawn(argv[len(command):], theirs.fileno())
                    except ForkServerError as err:
                        log.warning("pydist: %s; starting workers one by one instead", err)
                        server = None
                if process is None:
                    process = subprocess.Popen([*argv, "--linked-fd", str(theirs.fileno())],
                                               pass_fds=[theirs.fileno()], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               cwd=params["dir"], env=env, start_new_session=True)
                    stdin = process.stdin
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            try:
                stdin.write(cookie)
                stdin.close()
            except OSError:
                ours.close()        # the worker is gone already: setup reports its output
            with notify:
                launched.append(WorkerConfig(io=process.stdout, process=process, ospid=process.pid,
                                             exename=params["exename"], exeflags=params["exeflags"],
                                             userdata={"link": ours}))
                notify.notify_all()

    def connect(self, pid: int, config: WorkerConfig):
        """The master's end of the worker's socket pair (launch), taken once; the worker's
        address when the pair is closed at the other end (an `exename` wrapper that closes
        inherited descriptors: the worker then listens as any other)."""
        link = _take_link(config)
        if link is not None and not _closed_at_the_other_end(link):
            return link, link
        if link is not None:
            link.close()
        return super().connect(pid, config)

    def kill(self, pid: int, config: WorkerConfig) -> None:
        link = _take_link(config)         # a worker abandoned before connect: close its pair
        if link is not None:
            link.close()
        super().kill(pid, config)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Nothing to do: the core interrupts calls and relays output for local workers."""

    def replacement(self, config: WorkerConfig) -> "LocalManager":
        return LocalManager(1, restrict=self.restrict)

    def __repr__(self) -> str:
        return f"LocalManager(n={self.n}, restrict={self.restrict})"


# Socket buffers of the master's link to a local worker: the default (~200 KiB) makes a big
# array cross in many more wake-ups; 4 MiB moved 100 MB at 2.45 GB/s median against 2.09 here
# (loopback TCP, which sizes its own buffers: 1.71).
LINK_BUFFER_BYTES = 4 << 20


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    pair = socket.socketpair()
    for sock in pair:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, LINK_BUFFER_BYTES)
            except OSError:
                pass        # capped by the system (net.core.wmem_max): the default still works
    return pair


def _take_link(config: WorkerConfig) -> socket.socket | None:
    return config.userdata.pop("link", None) if isinstance(config.userdata, dict) else None


def _closed_at_the_other_end(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False            # open, nothing sent yet
    except OSError:
        return True
