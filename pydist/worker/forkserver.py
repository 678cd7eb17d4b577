"""The fork server: `python -m pydist.worker --fork-server FD`, a worker-to-be that forks workers.

Starting a Python worker costs ~80 ms of CPU here (interpreter, site, imports), so 32 workers
on 2 cores take seconds. The fork server pays that once: it imports what a worker needs, then
for each request on its Unix socket (FD) forks a child that becomes a worker, exactly as if
`python -m pydist.worker ARGS` had been started with the server's interpreter, flags,
environment and directory (LocalManager starts one server per such combination).

Requests (SOCK_SEQPACKET, one JSON message each, with two or three file descriptors
attached: the child's stdin and stdout, and the worker's end of a socket pair to the master,
passed on as `--linked-fd`):  {"id": n, "argv": [...]}  ->  {"id": n, "pid": child}
Unasked:  {"exited": pid, "code": returncode}  when a child ends (the server reaps it).
The server ignores SIGINT (a Ctrl-C reaches the workers and the master, which handle it) and
exits when the master closes the socket. It starts no thread (importing pydist starts none),
so a fork copies one thread only.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import traceback

from . import main as worker_main

MAX_MESSAGE = 1 << 16


def serve(fd: int) -> None:
    """Fork workers on request until the master closes the socket; never returns."""
    sock = socket.socket(fileno=fd)
    gc.freeze()     # the children's collections skip what is here now: no copy-on-write storm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)     # wakes select through wake_w
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            while _drained(wake_r):
                pass
            _report_exits(sock)
        if sock in ready:
            message, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 3)
            if not message:
                os._exit(0)                 # the master is gone; its workers leave on their own
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                _become_worker(request["argv"], fds)
            for descriptor in fds:
                os.close(descriptor)
            sock.send(json.dumps({"id": request["id"], "pid": pid}).encode())


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _become_worker(argv: list[str], fds: list[int]) -> None:
    """In the forked child: take the given stdin and stdout (stderr joins stdout, as for a
    spawned local worker), leave the server's session and signal set-up, run the worker."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    stdin, stdout, *linked = fds
    if linked:
        argv = [*argv, "--linked-fd", str(linked[0])]
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    os.dup2(stdout, 2)
    os.close(stdin)
    os.close(stdout)
    sys.argv = [sys.argv[0], *argv]
    code = 0
    try:
        worker_main(argv)
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
