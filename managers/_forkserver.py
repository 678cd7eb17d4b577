"""The master's side of the fork server (pydist/worker/forkserver.py): LocalManager asks one
warm process to fork its workers instead of starting an interpreter for each.

`ForkServer.for_command(argv_prefix, env, cwd)` returns the server for that interpreter,
flags, environment and directory (started on first use, kept for the session), or None when
forking is not available here or is turned off (PYDIST_FORK_SERVER=0). `spawn` returns a
`ForkedProcess`, which offers what the core uses of a subprocess.Popen (pid, stdout, poll,
wait, terminate, kill); the server, the worker's parent, reports its exit status.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading

from pydist import settings

_servers: dict[tuple, "ForkServer | None"] = {}
_servers_lock = threading.Lock()


class ForkServerError(OSError):
    """The fork server is gone or refused the request (LocalManager then spawns the worker)."""


class ForkedProcess:
    """A worker forked by the fork server; `stdout` is its output (stderr included)."""

    def __init__(self, pid: int, stdout):
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One running fork server and the workers it forked."""

    def __init__(self, argv_prefix: list[str], env: dict, cwd: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._process = subprocess.Popen(
            [*argv_prefix, "--fork-server", str(theirs.fileno())], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        theirs.close()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()        # guards _replies, _children, _early_exits, _gone
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition(self._lock)
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}     # pid -> code, reported before spawn() saw it
        self._gone = False
        threading.Thread(target=self._read, name="pydist-forkserver", daemon=True).start()

    @classmethod
    def for_command(cls, argv_prefix: list[str], env: dict, cwd: str) -> "ForkServer | None":
        """The server that starts workers as `argv_prefix ...` would, with env in cwd."""
        if not settings.FORK_SERVER or not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            return None
        key = (tuple(argv_prefix), tuple(sorted(env.items())), cwd)
        with _servers_lock:
            server = _servers.get(key)
            if server is None or server._gone:
                try:
                    server = _servers[key] = cls(argv_prefix, env, cwd)
                except OSError:
                    return None         # no such interpreter or directory: spawning says why
            return server

    def spawn(self, argv: list[str], linked: int | None = None) -> tuple[ForkedProcess, object]:
        """Fork a worker running `python -m pydist.worker argv` (plus `--linked-fd` for the
        descriptor `linked`, the worker's end of a socket pair); returns it and the writable
        end of its stdin (a file)."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        ident = next(self._ids)
        try:
            try:
                socket.send_fds(self._sock, [json.dumps({"id": ident, "argv": argv}).encode()],
                                [stdin_r, stdout_w, *([linked] if linked is not None else [])])
            except OSError as err:
                raise ForkServerError(f"the fork server is gone ({err})") from err
            with self._lock:
                self._arrived.wait_for(lambda: ident in self._replies or self._gone,
                                       settings.WORKER_TIMEOUT)
                reply = self._replies.pop(ident, None)
                if reply is None:
                    raise ForkServerError("the fork server did not answer (it has exited)")
                process = ForkedProcess(reply["pid"], os.fdopen(stdout_r, "rb"))
                self._children[process.pid] = process
                if process.pid in self._early_exits:    # it ended before we got here
                    process._set_exit(self._early_exits.pop(process.pid))
                    del self._children[process.pid]
        except BaseException:
            os.close(stdin_w)
            os.close(stdout_r)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        return process, os.fdopen(stdin_w, "wb")

    def _read(self) -> None:
        while True:
            try:
                message = self._sock.recv(65536)
            except OSError:
                message = b""
            if not message:
                break
            news = json.loads(message)
            with self._lock:
                if "exited" in news:
                    child = self._children.pop(news["exited"], None)
                    if child is not None:
                        child._set_exit(news["code"])
                    else:
                        self._early_exits[news["exited"]] = news["code"]
                else:
                    self._replies[news["id"]] = news
                    self._arrived.notify_all()
        with self._lock:          # no one reports exits now: the workers were re-parented
            self._gone = True
            self._arrived.notify_all()
            orphans, self._children = list(self._children.values()), {}
        threading.Thread(target=_watch_orphans, args=(orphans,), daemon=True).start()
        self._process.wait()


def _watch_orphans(children: list[ForkedProcess]) -> None:
    """Workers whose fork server died: poll for their end (no exit status is left to read)."""
    pause = threading.Event()
    while children:
        for child in list(children):
            try:
                os.kill(child.pid, 0)
            except ProcessLookupError:
                child._set_exit(-1)
                children.remove(child)
        pause.wait(0.2)
