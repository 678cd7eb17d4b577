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
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import ipaddress
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

from pydist import ClusterManager, LaunchError, WorkerConfig, cluster_cookie, settings
from pydist.manager import ask_to_exit
from pydist.worker import parse_address

from ._base import worker_argv, worker_env

log = logging.getLogger("pydist")

PID_MARKER = "pydist_ssh_pid:"
# Default ConnectTimeout: long enough for a busy login node, short enough that a host that
# is down fails addprocs promptly instead of stalling it.
CONNECT_TIMEOUT = 15.0
# Slack on the core's own timers (it starts them a moment after launch hands a worker over)
# before a watcher decides the core gave up on a worker and stops it.
GRACE = 1.0
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# OpenSSH options understood in sshflags (-o Key=Value) and ~/.ssh/config.
OPTIONS = ("BatchMode", "Compression", "ConnectTimeout", "GlobalKnownHostsFile", "HostName",
           "IdentitiesOnly", "IdentityFile", "Port", "ProxyCommand", "ProxyJump",
           "ServerAliveInterval", "StrictHostKeyChecking", "User", "UserKnownHostsFile", "LogLevel")
_FLAGS = {"-i": "identityfile", "-p": "port", "-l": "user", "-J": "proxyjump", "-F": "configfile"}
_SWITCHES = {"-C": ("compression", "yes"), "-q": None, "-T": None}
_known_hosts_lock = threading.Lock()    # guards appending to known_hosts files (accept-new)


class _StartError(Exception):
    """A host or worker could not be started; the message says why and what to do next."""


@dataclasses.dataclass(frozen=True)
class _Machine:
    spec: str               # as written by the user, for messages
    host: str               # as written: the name looked up in ssh_config
    user: str | None
    port: int | None
    bind: str               # --bind-to of its workers
    count: int | str        # a number of workers or "auto"


@dataclasses.dataclass
class _Target:
    """Everything one SSH connection needs, after the machine spec, sshflags and ssh_config."""
    host: str
    port: int
    user: str
    key_files: list[str]
    identities_only: bool
    known_hosts: list[str]      # user files; new keys go to the first one
    global_known_hosts: list[str]
    strict: str                 # StrictHostKeyChecking: yes, accept-new or no
    timeout: float
    compress: bool
    keepalive: int
    proxy_command: str | None
    jumps: list["_Target"]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


class SSHManager(ClusterManager):
    """Workers on the given machines, started over SSH: `addprocs(["host", "user@host:2222",
    ("host", 4), ("host", "auto")], **kw)` builds one (Julia: SSHManager)."""

    # Keywords addprocs accepts for SSH on top of the common ones (see docs/managers/ssh.md).
    params = {"ssh_config": "~/.ssh/config", "known_hosts": None, "accept_new_host_keys": False}

    def __init__(self, machines: Sequence[str | tuple[str, int | str]] | str):
        self.machines = [self._parse_entry(m) for m in ([machines] if isinstance(machines, str) else machines)]

    # -- machine specs (no I/O) ---------------------------------------------------------------
    @staticmethod
    def parse_machine(machine: str) -> tuple[str, int | None]:
        """(host, port or None) of `"[user@]host[:port]"`; IPv6 in brackets when a port
        follows (`"[::1]:2222"`).  A bind address after a space is ignored here.  Raises
        ValueError naming the bad text for a bad port or bracket."""
        text = machine.split(None, 1)[0] if machine.strip() else ""
        hostport = text.rpartition("@")[2]
        if hostport.startswith("["):
            host, sep, rest = hostport[1:].partition("]")
            if not sep:
                raise ValueError(f"machine {machine!r}: {hostport!r} has no closing ']'")
            if rest and not rest.startswith(":"):
                raise ValueError(f"machine {machine!r}: {rest!r} after ']' is not ':PORT'")
            port_text = rest[1:] if rest else None
        elif hostport.count(":") > 1:       # a bare IPv6 address, without a port
            host, port_text = hostport, None
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"machine {machine!r}: {host!r} is not an IPv6 address; write "
                                 "[ADDRESS]:PORT to give an IPv6 address with a port") from None
        else:
            host, sep, port_text = hostport.partition(":")
            port_text = port_text if sep else None
        if not host:
            raise ValueError(f"machine {machine!r}: no host name")
        if port_text is None:
            return host, None
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"machine {machine!r}: bad port {port_text!r} (expected 1-65535)")
        return host, int(port_text)

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
        env = {k: v for k, v in os.environ.items()
               if k.startswith("PYDIST_") and not re.search("COOKIE|SECRET|TOKEN|PASSWORD|KEY", k)}
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
        return (f"echo {PID_MARKER}$$; {cd}exec env {assignments} {_shell_path(argv[0])} "
                + shlex.join(argv[1:]))

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
        remote = _Remote(ident, conn, channel, pgid, host.machine.bind, bool(params.get("tunnel")))
        config = WorkerConfig(io=_Output(out, early, remote), host=host.target.host, ident=ident,
                              count=host.count, exename=params.get("exename"),
                              exeflags=params.get("exeflags"), tunnel=bool(params.get("tunnel")),
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
            raise ConnectionError(f"{remote.ident}: SSH port forwarding to {dest}:{config.port} was "
                                  f"refused ({err}); allow it on that host (sshd_config AllowTcpForwarding "
                                  "yes) or use tunnel=False") from err
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

    def __repr__(self) -> str:
        return f"SSHManager({[m.spec if m.count == 1 else (m.spec, m.count) for m in self.machines]!r})"


# -- connections ---------------------------------------------------------------------------------
class _Connection:
    """One SSH connection (through its jump hosts), closed when the last worker using it is."""

    def __init__(self, clients: list[paramiko.SSHClient]):
        self.clients = clients                  # jump hosts first, the host itself last
        self.transport = clients[-1].get_transport()
        self._lock = threading.Lock()           # guards _refs
        self._refs = 1

    @classmethod
    def open(cls, target: _Target) -> "_Connection":
        chain, clients, sock = [*target.jumps, target], [], None
        try:
            for i, hop in enumerate(chain):
                if sock is None and hop.proxy_command:
                    sock = paramiko.ProxyCommand(hop.proxy_command)
                clients.append(_client(hop, sock))
                if i + 1 < len(chain):
                    nxt = chain[i + 1]
                    try:
                        sock = clients[-1].get_transport().open_channel(
                            "direct-tcpip", (nxt.host, nxt.port), ("127.0.0.1", 0), timeout=hop.timeout)
                    except paramiko.SSHException as err:
                        raise _StartError(f"the jump host {hop} could not connect to {nxt.host}:{nxt.port} "
                                          f"({err}); check the ProxyJump host and that it may forward "
                                          "(AllowTcpForwarding)") from err
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        return cls(clients)

    def acquire(self, n: int = 1) -> None:
        with self._lock:
            self._refs += n

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            for client in reversed(self.clients):
                client.close()

    def run(self, command: str, timeout: float) -> tuple[int, str]:
        """Run a short command in a new session; (exit status, output). Bounded by timeout."""
        deadline = time.monotonic() + timeout
        channel = self.transport.open_session(timeout=timeout)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
            out = bytearray()
            while chunk := channel.recv(1 << 16):
                out += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command!r} still printing after {timeout:.0f} s")
            if not channel.status_event.wait(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"{command!r} did not finish within {timeout:.0f} s")
            return channel.recv_exit_status(), out.decode(errors="replace")
        finally:
            channel.close()


def _client(target: _Target, sock) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in target.known_hosts + target.global_known_hosts:
        if os.path.isfile(path):
            client.load_system_host_keys(path)
    client.set_missing_host_key_policy(_HostKeyPolicy(target))
    keys = [k for k in target.key_files if os.path.isfile(k)]
    for missing in set(target.key_files) - set(keys):
        log.debug("pydist: identity file %s does not exist", missing)
    try:
        client.connect(target.host, target.port, username=target.user, key_filename=keys or None,
                       timeout=target.timeout, banner_timeout=target.timeout, auth_timeout=target.timeout,
                       allow_agent=not target.identities_only,
                       look_for_keys=not target.identities_only, compress=target.compress, sock=sock)
    except paramiko.AuthenticationException as err:
        client.close()
        tried = ", ".join(keys) or "none"
        raise _StartError(f"{target} refused authentication ({err}); keys tried: {tried}"
                          + ("" if target.identities_only else " (plus ssh-agent and ~/.ssh/id_*)")
                          + f". Pass the right key (sshflags=['-i', KEY]) and check that its public "
                          f"key is in ~{target.user}/.ssh/authorized_keys there") from None
    except BaseException:
        client.close()
        raise
    if target.keepalive:
        client.get_transport().set_keepalive(target.keepalive)
    return client


class _HostKeyError(paramiko.SSHException):
    """The host key is unknown (and new keys are not accepted) or differs from the known one."""


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking for a host paramiko found no entry for.  paramiko
    matches names exactly, so known_hosts lines with patterns (`*`, `?`, `!`) are checked
    here; then `yes` refuses, `accept-new` appends the key to the first known_hosts file and
    `no` accepts it for this connection only."""

    def __init__(self, target: _Target):
        self.target = target

    def missing_host_key(self, client, hostname: str, key) -> None:
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        files = [f for f in self.target.known_hosts + self.target.global_known_hosts if os.path.isfile(f)]
        verdict = _pattern_verdict(files, hostname, key)
        if verdict == "changed":
            raise _HostKeyError(f"the host key of {hostname} ({key.get_name()} {fingerprint}) differs from "
                                f"the one known_hosts lists for it: the host was reinstalled, or someone "
                                f"is in between. Check with its administrator, then fix the known_hosts "
                                f"entry ({', '.join(files)})")
        if verdict == "known":
            return
        if self.target.strict == "accept-new":
            path = self.target.known_hosts[0]
            with _known_hosts_lock:
                os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
                with open(path, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            log.warning("pydist: added the host key of %s (%s %s) to %s", hostname, key.get_name(),
                        fingerprint, path)
            return
        if self.target.strict in ("no", "off"):
            log.warning("pydist: accepting the unknown host key of %s (%s %s) without checking "
                        "(StrictHostKeyChecking=no)", hostname, key.get_name(), fingerprint)
            return
        host, _, port = hostname.strip("[").partition("]:")
        scan = f"ssh-keyscan {'-p ' + port + ' ' if port else ''}{host}"
        raise _HostKeyError(f"the host key of {hostname} ({key.get_name()} {fingerprint}) is not in "
                            f"known_hosts ({', '.join(files) or 'none of ' + ', '.join(self.target.known_hosts) + ' exists'}). "
                            f"Check the fingerprint and add it (`{scan} >> ~/.ssh/known_hosts`), pass "
                            "known_hosts=FILE, or trust it on first use with accept_new_host_keys=True")


def _pattern_verdict(files: list[str], hostname: str, key) -> str | None:
    """"known" or "changed" if a wildcard known_hosts line matches `hostname`, else None."""
    verdict = None
    for path in files:
        with open(path, errors="replace") as f:
            for line in f:
                fields = line.split()
                marker = fields.pop(0) if fields and fields[0].startswith("@") else None
                if len(fields) < 3 or fields[0].startswith("#"):
                    continue
                patterns = fields[0]
                if marker == "@cert-authority" or patterns.startswith("|") or not re.search(r"[*?!]", patterns) \
                        or not _host_matches(patterns, hostname) or fields[1] != key.get_name():
                    continue
                same = fields[2] == key.get_base64()
                if marker == "@revoked":
                    if same:
                        return "changed"
                    continue
                verdict = "known" if same else (verdict or "changed")
    return verdict


def _host_matches(patterns: str, name: str) -> bool:
    """OpenSSH host pattern lists: `*` and `?` wildcards, `!` negates, comma separated."""
    hit = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        if re.fullmatch(regex, name, re.IGNORECASE):
            if negated:
                return False
            hit = True
    return hit


# -- options: sshflags, ssh_config ---------------------------------------------------------------
def _parse_sshflags(flags: Sequence[str] | str) -> dict[str, list[str]]:
    """sshflags as OpenSSH options, {lower-case name: [values in the order given]}.  Raises
    ValueError for a flag or option SSHManager does not implement (rather than ignore it)."""
    flags = shlex.split(flags) if isinstance(flags, str) else [str(f) for f in flags]
    known = {o.lower(): o for o in OPTIONS}
    out: dict[str, list[str]] = {}
    words = iter(flags)
    for flag in words:
        if flag in _SWITCHES:
            if _SWITCHES[flag]:
                out.setdefault(_SWITCHES[flag][0], []).append(_SWITCHES[flag][1])
            continue
        short = flag[:2]
        if short == "-o" or short in _FLAGS:
            value = flag[2:] or next(words, None)
            if value is None:
                raise ValueError(f"sshflags: {flag} needs a value")
            if short == "-o":
                name, sep, value = value.partition("=")
                if not sep:
                    name, _, value = name.strip().partition(" ")
                name = name.strip().lower()
                if name not in known:
                    raise ValueError(f"sshflags: -o {name} is not supported; SSHManager understands "
                                     f"-o {', '.join(OPTIONS)}")
            else:
                name = _FLAGS[short]
            out.setdefault(name, []).append(value.strip())
            continue
        raise ValueError(f"sshflags: {flag!r} is not supported; SSHManager understands -i FILE, -p PORT, "
                         "-l USER, -J JUMP, -F CONFIG, -C, -q, -T and -o Key=Value")
    return out


def _load_ssh_config(path: str | None):
    if not path:
        return None
    path = os.path.expanduser(path)
    return paramiko.SSHConfig.from_path(path) if os.path.isfile(path) else None


def _resolve(alias: str, user: str | None, port: int | None, params: dict, options: dict, config,
             jump: bool = False) -> _Target:
    """A machine's connection settings; first found wins: the machine spec, sshflags, the
    addprocs keywords, ssh_config, OpenSSH's defaults."""
    found = config.lookup(alias) if config is not None else {"hostname": alias}

    def pick(name, default=None):
        if name in options and not (jump and name in ("port", "user", "hostname")):
            return options[name][0]
        value = found.get(name, default)
        return value[0] if isinstance(value, list) and name != "identityfile" else value

    def files(value) -> list[str]:
        value = [value] if isinstance(value, str) else list(value)
        return [os.path.expanduser(p) for v in value for p in str(v).split()]

    strict = options.get("stricthostkeychecking", [None])[0] or (
        "accept-new" if params.get("accept_new_host_keys") else found.get("stricthostkeychecking", "yes"))
    strict = {"true": "yes", "ask": "yes", "false": "no"}.get(strict.lower(), strict.lower())
    known = (options.get("userknownhostsfile", [None])[0] or params.get("known_hosts")
             or found.get("userknownhostsfile") or DEFAULT_KNOWN_HOSTS)
    hops = pick("proxyjump")
    jumps = [] if jump or not hops or hops == "none" else [
        _resolve(*_split_hop(hop), params, options, config, jump=True) for hop in hops.split(",")]
    proxy = pick("proxycommand")
    return _Target(
        host=pick("hostname", alias),
        port=int(port or pick("port", 22)),
        user=user or pick("user") or getpass.getuser(),
        key_files=files(options.get("identityfile", [])) + files(found.get("identityfile", [])),
        identities_only=str(pick("identitiesonly", "no")).lower() == "yes",
        known_hosts=files(known), global_known_hosts=files(pick("globalknownhostsfile") or GLOBAL_KNOWN_HOSTS),
        strict=strict, timeout=float(pick("connecttimeout") or CONNECT_TIMEOUT),
        compress=str(pick("compression", "no")).lower() == "yes",
        keepalive=int(pick("serveraliveinterval") or 0),
        proxy_command=None if not proxy or proxy == "none" else proxy, jumps=jumps)


def _split_hop(hop: str) -> tuple[str, str | None, int | None]:
    """(host, user, port) of one ProxyJump hop, `[user@]host[:port]`."""
    host, port = SSHManager.parse_machine(hop.strip())
    return host, hop.strip().rpartition("@")[0] or None, port


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
        except (OSError, EOFError, paramiko.SSHException):
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

    def __init__(self, ident: str, conn: _Connection, channel, pgid: int, bind: str, tunnel: bool):
        self.ident, self.conn, self.channel, self.pgid = ident, conn, channel, pgid
        self.bind, self.tunnel = bind, tunnel
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
        except (OSError, EOFError, paramiko.SSHException):
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
