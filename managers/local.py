"""LocalManager: workers as processes on this machine (Julia: LocalManager).

Each worker is `python -m pydist.worker --bind-to 127.0.0.1`, started in a session of its
own (a Ctrl-C at the terminal reaches the master only).  The cookie goes in on stdin; the
worker prints its address on stdout, which stays the worker's output relay.  The master
dials it (master connects).  `kill` asks the worker to exit, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import subprocess
import threading

from pydist import ClusterManager, WorkerConfig, cluster_cookie

from ._base import worker_argv, worker_env


class LocalManager(ClusterManager):
    """`n` workers on this machine; `restrict=True` binds them to 127.0.0.1 only."""

    def __init__(self, n: int, restrict: bool = True):
        self.n = n
        self.restrict = restrict

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        bind = "127.0.0.1" if params.get("restrict", self.restrict) else "0.0.0.0"
        argv = worker_argv(params, "--bind-to", bind)
        env = {**os.environ, **worker_env(params)}
        cookie = (cluster_cookie() + "\n").encode()
        for _ in range(self.n):
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, cwd=params["dir"], env=env,
                                       start_new_session=True)
            process.stdin.write(cookie)
            process.stdin.close()
            with notify:
                launched.append(WorkerConfig(io=process.stdout, process=process, ospid=process.pid,
                                             exename=params["exename"], exeflags=params["exeflags"]))
                notify.notify_all()

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Nothing to do: the core interrupts calls and relays output for local workers."""

    def __repr__(self) -> str:
        return f"LocalManager(n={self.n}, restrict={self.restrict})"
