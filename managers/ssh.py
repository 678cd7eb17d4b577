"""SSHManager: workers on other hosts, started over SSH with paramiko (Julia: SSHManager).

How a worker starts: the master opens an SSH session to the worker's host and runs, through
the remote user's login shell (POSIX sh syntax, every word quoted with shlex.quote),

    echo pydist_ssh_pid:$$; cd DIR || exit 1; exec env VAR=... python3 -m pydist.worker --bind-to ADDR

then writes the cookie on the session's stdin (never on a command line).  The marker line gives
the worker's pid, which is also its process group (sshd starts every session in a session of its
own).  The session's stdout and stderr, merged, become `WorkerConfig.io`: the core reads the
`pydist_worker:PORT#HOST` line from it and relays every other line as `From worker N:`.

Which side connects: the master dials the worker (master connects), directly to the address the
worker advertises, or with tunnel=True through an SSH "direct-tcpip" channel that a pair of
threads bridges to a local socket pair.  Workers always dial each other directly.  With
multiplex=True all workers of a host share one SSH connection, otherwise each has its own.

kill: ask the worker over its link to exit; if its session reports no exit within TERM_TIMEOUT,
`kill -TERM` and then `kill -KILL` its process group over SSH; then close the session.
interrupt: nothing here, the core raises KeyboardInterrupt in the running calls over the link.
A worker exits on its own when its master link is gone (the master died), and a worker that
never joins is stopped by its watcher: before its address line when the core's worker_timeout
has passed, after it by itself (its PYDIST_WORKER_TIMEOUT is set to worker_timeout).

Threads: `pydist-ssh_N` (the launch pool: at most max_parallel connects and starts at once),
`pydist-ssh-watch-<ident>` (one per worker until it registers or is stopped),
`pydist-ssh-tunnel-<pid>-up/-down` (per tunnelled link, until either end closes), and the
threads paramiko runs per connection.

What paramiko lacks of OpenSSH (sshflags, ~/.ssh/config, known_hosts patterns) is in _openssh.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Sequence

try:
    import paramiko
except ImportError as _err:  # pragma: no cover - depends on the installation
    raise ImportError("SSHManager needs paramiko: pip install 'pydist[ssh]'") from _err

from .base import (ClusterManager, LaunchError, WorkerConfig, ask_to_exit, cluster_cookie, forwarded_env,
                   host_port, parse_address, settings, worker_argv, worker_env)
from ._openssh import (_Connection, _HostKeyError, _load_ssh_config, _parse_sshflags, _resolve, _StartError,
                       _Target, parse_machine)

log = logging.getLogger("pydist")

PID_MARKER = "pydist_ssh_pid:"
# Slack on the core's own timers (it starts them a moment after launch hands a worker over)
# before a watcher decides the core gave up on a worker and stops it.
GRACE = 1.0
# What reading or writing a channel raises once it or its connection is gone.
_CLOSED = (OSError, EOFError, paramiko.SSHException)


@dataclasses.dataclass(frozen=True)
class _Machine:
    spec: str               # as written by the user, for messages
    host: str               # as written: the name looked up in ssh_config
    user: str | None
    port: int | None
    bind: str               # --bind-to of its workers
    count: int | str        # a number of workers or "auto"


class SSHManager(ClusterManager):
    """Workers on the given machines, started over SSH: `addprocs(["host", "user@host:2222",
    ("host", 4), ("host", "auto")], **kw)` builds one (Julia: SSHManager)."""

    # Keywords addprocs accepts for SSH on top of the common ones, with their defaults (Julia's
    # SSHManager keywords, then ours; see docs/managers/ssh.md).
    params = {"tunnel": False, "multiplex": False, "sshflags": [], "max_parallel": 10, "shell": "posix",
              "ssh_config": "~/.ssh/config", "known_hosts": None, "accept_new_host_keys": False}

    def __init__(self, machines: Sequence[str | tuple[str, int | str]] | str):
        self.machines = [self._parse_entry(m) for m in ([machines] if isinstance(machines, str) else machines)]

    # -- machine specs (no I/O) ---------------------------------------------------------------
    parse_machine = staticmethod(parse_machine)     # "[user@]host[:port]" -> (host, port or None)

    @classmethod
    def _parse_entry(cls, entry) -> _Machine:
        spec, count = (entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, 1))
        if not isinstance(spec, str):
            raise TypeError(f"a machine is 'host', 'user@host:port' or (machine, count), not {entry!r}")
        if count != "auto" and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"machine {spec!r}: count {count!r} must be a number >= 0 or 'auto'")
        host, port = cls.parse_machine(spec)
        words = spec.split()
        if len(words) > 2:
            raise ValueError(f"machine {spec!r}: expected '[user@]host[:port] [bind address]'")
        user = words[0].rpartition("@")[0] or None
        return _Machine(spec, host, user, port, words[1] if len(words) == 2 else "0.0.0.0", count)

    @staticmethod
    def worker_command(params: dict, bind: str = "0.0.0.0") -> str:
        """The remote shell command that starts one worker (printable; no I/O, no cookie).

        exename: the master's default (sys.executable) means `python3` on the remote PATH.
        dir: the master's current directory (the default) when it exists there, like Julia on
        a shared file system, else the login directory; another dir must exist; None or "~"
        means the login directory."""
        if params.get("shell", "posix") != "posix":
            raise ValueError(f"shell={params['shell']!r} is not supported: SSHManager runs POSIX sh "
                             "commands (sh, bash, zsh, ksh); use shell='posix'")
        exename = params.get("exename")
        exename = "python3" if exename in (None, sys.executable) else str(exename)
        env = forwarded_env()
        env["PYDIST_WORKER_TIMEOUT"] = f"{float(params.get('worker_timeout') or settings.WORKER_TIMEOUT):g}"
        env.update(worker_env(params))
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"env: {name!r} is not a valid environment variable name")
        argv = worker_argv(params, "--bind-to", bind, exename=exename)
        directory = params.get("dir")
        if directory in (None, "", "~"):
            cd = ""
        elif directory == os.getcwd():
            cd = f"cd -- {_shell_path(directory)} 2>/dev/null || cd; "
        else:
            cd = f"cd -- {_shell_path(directory)} || exit 1; "
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        # 2>&1: one pipe for both, so the worker marks its stderr lines (pydist.output) and
        # the master relays them to its stderr, as for local workers.
        return (f"echo {PID_MARKER}$$; {cd}exec env {assignments} {_shell_path(argv[0])} "
                + shlex.join(argv[1:]) + " 2>&1")

    # -- launch ---------------------------------------------------------------------------------
    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Start every machine's workers, at most max_parallel connects at a time; raises
        LaunchError for the hosts or workers that could not be started (the others stay)."""
        options = _parse_sshflags(params.get("sshflags") or [])
        config = _load_ssh_config(options.get("configfile", [params.get("ssh_config")])[0])
        failures: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max(1, int(params.get("max_parallel") or 10)),
                                thread_name_prefix="pydist-ssh") as pool:
            hosts = {pool.submit(self._prepare, m, params, options, config): m for m in self.machines}
            starts, numbers = {}, {}
            for done in as_completed(hosts):
                machine = hosts[done]
                try:
                    host = done.result()
                except Exception as err:
                    failures.append((machine.spec, _reason(err)))
                    continue
                for _ in range(host.count):
                    numbers[str(host.target)] = number = numbers.get(str(host.target), 0) + 1
                    ident = f"{host.target}#{number}"
                    starts[pool.submit(self._start, host, ident, params, launched, notify)] = ident
            for done in as_completed(starts):
                try:
                    done.result()
                except Exception as err:
                    failures.append((starts[done], _reason(err)))
        if failures:
            raise LaunchError(failures)

    def _prepare(self, machine: _Machine, params: dict, options: dict, config) -> "_Host":
        """Resolve how to reach a machine; connect now if its workers share the connection
        (multiplex) or its core count is needed ("auto")."""
        target = _resolve(machine.host, machine.user, machine.port, params, options, config)
        host = _Host(machine, target, 0 if machine.count == "auto" else int(machine.count))
        if machine.count == "auto" or (params.get("multiplex") and host.count):
            conn = _Connection.open(target)
            if machine.count == "auto":
                try:
                    _status, out = conn.run("nproc 2>/dev/null || getconf _NPROCESSORS_ONLN", target.timeout)
                    host.count = int(out.split()[-1])
                except Exception as err:
                    conn.release()
                    raise _StartError(f"could not count the cores of {target} for 'auto' ({err}); "
                                      "give a number of workers instead") from err
            if params.get("multiplex"):
                host.shared = conn
                conn.acquire(host.count - 1)            # one reference per worker
            else:
                host.spare = conn                       # the first worker uses it
        return host

    def _start(self, host: "_Host", ident: str, params: dict, launched: list, notify) -> None:
        """Start one worker: run its command, send the cookie, read the pid marker, hand the
        session's output to the core."""
        conn = host.connection()
        channel = None
        try:
            channel = conn.transport.open_session(timeout=host.target.timeout)
            channel.set_combine_stderr(True)
            channel.exec_command(self.worker_command(params, host.machine.bind))
            channel.sendall((cluster_cookie() + "\n").encode())
            channel.shutdown_write()
            out = channel.makefile("rb")
            early, pgid = _read_marker(out, channel, params["worker_timeout"], host.target)
        except BaseException:
            if channel is not None:
                channel.close()
            conn.release()
            raise
        tunnel = bool(params.get("tunnel"))
        remote = _Remote(ident, conn, channel, pgid, host.machine.bind, tunnel, host.machine.spec)
        config = WorkerConfig(io=_Output(out, early, remote), host=host.target.host, ident=ident,
                              count=host.count, exename=params.get("exename"),
                              exeflags=params.get("exeflags"), tunnel=tunnel,
                              multiplex=bool(params.get("multiplex")), sshflags=params.get("sshflags"),
                              max_parallel=params.get("max_parallel"), userdata=remote)
        threading.Thread(target=remote.watch, args=(float(params["worker_timeout"]),),
                         name=f"pydist-ssh-watch-{ident}", daemon=True).start()
        with notify:
            launched.append(config)
            notify.notify_all()

    # -- the other three verbs -------------------------------------------------------------------
    def connect(self, pid: int, config: WorkerConfig):
        """Dial the worker; with tunnel=True through its SSH connection (a local socket pair
        bridged to a direct-tcpip channel, so the core gets a real socket)."""
        remote: _Remote = config.userdata
        if not remote.tunnel:
            return super().connect(pid, config)
        dest = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(remote.bind, remote.bind)
        try:
            channel = remote.conn.transport.open_channel("direct-tcpip", (dest, int(config.port)),
                                                         ("127.0.0.1", 0), timeout=settings.HANDSHAKE_TIMEOUT)
        except (paramiko.SSHException, OSError) as err:
            raise ConnectionError(f"{remote.ident}: SSH port forwarding to {host_port(dest, config.port)} "
                                  f"was refused ({err}); allow it on that host (sshd_config "
                                  "AllowTcpForwarding yes) or use tunnel=False") from err
        mine, theirs = socket.socketpair()
        _bridge(theirs, channel, f"pydist-ssh-tunnel-{pid}")
        return mine, mine

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """"register" ends the worker's watch; "deregister" (it left, or was removed) makes sure
        its process is gone and closes its session, on a thread: exit hooks must not block."""
        remote: _Remote = config.userdata
        if op == "register":
            remote.note(registered=True)
        elif op == "deregister":
            threading.Thread(target=remote.stop, name=f"pydist-ssh-stop-{pid}", daemon=True).start()

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Ask worker `pid` to exit; if it does not, TERM then KILL its process group over SSH."""
        ask_to_exit(pid, settings.EXIT_TIMEOUT)
        config.userdata.stop()

    def replacement(self, config: WorkerConfig) -> "SSHManager":
        """One worker on the machine of the one that died (same user, port, bind address)."""
        return SSHManager([(config.userdata.machine, 1)])

    def __repr__(self) -> str:
        return f"SSHManager({[m.spec if m.count == 1 else (m.spec, m.count) for m in self.machines]!r})"


def _shell_path(path: str) -> str:
    """shlex.quote, except that a leading ~ still means the remote home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


# -- one worker ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Host:
    machine: _Machine
    target: _Target
    count: int
    shared: _Connection | None = None   # multiplex: every worker's connection
    spare: _Connection | None = None    # the "auto" probe's connection, for the first worker
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)    # guards spare

    def connection(self) -> _Connection:
        if self.shared is not None:
            return self.shared
        with self.lock:
            spare, self.spare = self.spare, None
        return spare or _Connection.open(self.target)


def _read_marker(out, channel, timeout: float, target: _Target) -> tuple[list[bytes], int]:
    """Read up to the pid marker; returns the lines before it (login noise) and the pid."""
    deadline = time.monotonic() + timeout
    early: list[bytes] = []
    while True:
        channel.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            line = out.readline()
        except socket.timeout:
            raise _StartError(f"the login shell on {target} printed nothing within {timeout:.0f} s") from None
        if not line:
            status = channel.recv_exit_status() if channel.status_event.wait(1.0) else "unknown"
            text = b"".join(early[-20:]).decode(errors="replace")
            raise _StartError(f"the login shell on {target} exited (status {status}) before starting "
                              f"the worker; its output was:\n{text}")
        before, marker, pid = line.partition(PID_MARKER.encode())
        if marker:      # login noise may lack a final newline: the marker then ends its line
            channel.settimeout(None)
            return early + ([before + b"\n"] if before.strip() else []), int(pid)
        early.append(line)


class _Output:
    """A worker's output as the core reads it: the login noise first, then the session; notes
    when the core starts reading, when the address line passes and when the session ends."""

    def __init__(self, file, early: list[bytes], remote: "_Remote"):
        self._file, self._early, self._remote = file, list(early), remote
        self._address_seen = False

    def readline(self) -> bytes:
        if self._remote.reading is None:
            self._remote.note(reading=True)
        if self._early:
            return self._early.pop(0)
        try:
            line = self._file.readline()
        except _CLOSED:
            line = b""
        if not line:
            self._remote.note(eof=True)
        elif not self._address_seen:
            try:
                self._address_seen = parse_address(line.decode(errors="replace")) is not None
            except ValueError:
                pass
            if self._address_seen:
                self._remote.note(address=True)
        return line

    def close(self) -> None:
        self._file.close()


class _Remote:
    """One worker's SSH session and how far it got (WorkerConfig.userdata)."""

    def __init__(self, ident: str, conn: _Connection, channel, pgid: int, bind: str, tunnel: bool,
                 machine: str):
        self.ident, self.conn, self.channel, self.pgid = ident, conn, channel, pgid
        self.bind, self.tunnel = bind, tunnel
        self.machine = machine                  # its machine spec: where a replacement starts
        self._cond = threading.Condition()      # guards the times below and _stopped
        self.reading: float | None = None       # monotonic times: the core started reading,
        self.address: float | None = None       # the address line passed,
        self.eof = self.registered = False      # the session ended; the core registered it
        self._stopped = False

    def note(self, reading=False, address=False, eof=False, registered=False) -> None:
        with self._cond:
            now = time.monotonic()
            self.reading = self.reading or (now if reading else None)
            self.address = self.address or (now if address else None)
            self.eof, self.registered = self.eof or eof, self.registered or registered
            self._cond.notify_all()

    def _wait(self, done: Callable[[], bool], deadline: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: done() or self.eof or self.registered,
                                       max(deadline - time.monotonic(), 0))

    def watch(self, worker_timeout: float) -> None:
        """Stop the worker if the core gave up on it (watcher thread; ends when it registers)."""
        start = time.monotonic()
        self._wait(lambda: self.reading is not None, start + worker_timeout + GRACE)
        self._wait(lambda: self.address is not None, (self.reading or start) + worker_timeout + GRACE)
        if self.address is not None:
            # The core now dials (and maybe tunnels), authenticates and sends JOIN.
            self._wait(lambda: False, self.address + 2 * worker_timeout + 3 * settings.HANDSHAKE_TIMEOUT + GRACE)
        if not self.registered:
            self.stop(patience=0)

    def stop(self, patience: float | None = None) -> None:
        """Make sure the worker's process group is gone, then close its session (idempotent).
        Waits `patience` seconds (default TERM_TIMEOUT) for it to exit by itself, then
        TERM_TIMEOUT after each signal."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
        for signal in ("TERM", "KILL", None):
            wait = settings.TERM_TIMEOUT if patience is None or signal != "TERM" else patience
            if self.channel.status_event.wait(wait):
                break
            if signal is None:
                log.warning("pydist: worker %s (process group %s) is still running after SIGKILL",
                            self.ident, self.pgid)
                break
            try:    # `-s NAME -- -PGID`: the one spelling both bash and dash accept
                self.conn.run(f"kill -s {signal} -- -{self.pgid}", settings.TERM_TIMEOUT)
            except Exception as err:
                log.warning("pydist: could not signal worker %s (process group %s): %s", self.ident,
                            self.pgid, err)
                break
        self.channel.close()
        self.conn.release()


def _bridge(sock: socket.socket, channel, name: str) -> None:
    """Copy bytes both ways between a local socket and an SSH channel, one thread per
    direction (a single thread could block sending one way while the other fills up);
    when either side ends, both are closed."""

    def close() -> None:
        channel.close()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def pump(recv, send) -> None:
        try:
            while data := recv(1 << 16):
                send(data)
        except _CLOSED:
            pass
        finally:
            close()

    for direction, recv, send in (("up", sock.recv, channel.sendall), ("down", channel.recv, sock.sendall)):
        threading.Thread(target=pump, args=(recv, send), name=f"{name}-{direction}", daemon=True).start()


def _reason(err: BaseException) -> str:
    """A launch failure in the user's words: what went wrong and what to do next."""
    if isinstance(err, (_StartError, _HostKeyError, ValueError)):
        return str(err)
    if isinstance(err, paramiko.BadHostKeyException):
        return (f"the host key of {err.hostname} differs from the one in known_hosts: the host was "
                "reinstalled, or someone is in between. Check with its administrator, then fix the entry")
    if isinstance(err, (socket.timeout, paramiko.ssh_exception.NoValidConnectionsError, OSError)):
        return (f"cannot reach it over SSH ({type(err).__name__}: {err}); check the host name, the "
                "port, that sshd runs there and that no firewall is in between")
    return f"{type(err).__name__}: {err}"
