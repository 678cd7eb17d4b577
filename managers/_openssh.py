"""OpenSSH compatibility for SSHManager: what `ssh` does for the user that paramiko does not.

paramiko speaks the SSH protocol but is not the `ssh` command: it does not parse OpenSSH's client
flags, resolve a host through ~/.ssh/config the way `ssh` does, or match known_hosts lines that
use patterns.  Users pass Julia-style `sshflags` and expect their ssh_config and known_hosts to
work unchanged, so this module gives SSHManager:

- `_parse_sshflags`: the flags (-i, -p, -l, -J, -F, -C, -q, -T, -o Key=Value) as options;
- `_resolve`: one machine's `_Target` (host, port, user, keys, host-key checking, ProxyJump
  hops...), merged from the machine spec, sshflags, addprocs keywords, ssh_config and defaults;
- `_HostKeyPolicy`: StrictHostKeyChecking (yes, accept-new, no) and known_hosts patterns
  (`*`, `?`, `!`, matched by `_host_matches`), where paramiko matches names exactly;
- `_Connection`: one connection to a `_Target` through its jump hosts (ProxyJump,
  ProxyCommand), shared by the workers that use it and closed with the last of them.

No I/O here except reading ssh_config and known_hosts, appending a key (accept-new) and
`_Connection`'s SSH sessions.
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
import threading
import time
from typing import Sequence

import paramiko

from ._base import host_port

log = logging.getLogger("pydist")

# Default ConnectTimeout: long enough for a busy login node, short enough that a host that
# is down fails addprocs promptly instead of stalling it.
CONNECT_TIMEOUT = 15.0
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# OpenSSH options understood in sshflags (-o Key=Value) and ~/.ssh/config.
OPTIONS = ("BatchMode", "Compression", "ConnectTimeout", "GlobalKnownHostsFile", "HostName",
           "IdentitiesOnly", "IdentityFile", "Port", "ProxyCommand", "ProxyJump",
           "ServerAliveInterval", "StrictHostKeyChecking", "User", "UserKnownHostsFile", "LogLevel")
_FLAGS = {"-i": "identityfile", "-p": "port", "-l": "user", "-J": "proxyjump", "-F": "configfile"}
_SWITCHES = {"-C": ("compression", "yes"), "-q": None, "-T": None}
_known_hosts_lock = threading.Lock()    # guards appending to known_hosts files (accept-new)


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
        return f"{self.user}@{host_port(self.host, self.port)}"

    def known_hosts_files(self) -> list[str]:
        """The known_hosts files that exist, user files first."""
        return [f for f in self.known_hosts + self.global_known_hosts if os.path.isfile(f)]


# -- machine specs and ProxyJump hops: `[user@]host[:port]` ---------------------------------------
def parse_machine(machine: str) -> tuple[str, int | None]:
    """(host, port or None) of `"[user@]host[:port]"`, a machine (SSHManager.parse_machine) or
    a ProxyJump hop; IPv6 in brackets when a port follows (`"[::1]:2222"`).  A bind address
    after a space is ignored here.  Raises ValueError naming the bad text for a bad port or
    bracket."""
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
    host, port = parse_machine(hop.strip())
    return host, hop.strip().rpartition("@")[0] or None, port


# -- host keys: StrictHostKeyChecking and known_hosts patterns -----------------------------------
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
        files = self.target.known_hosts_files()
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
        known = ", ".join(files) or f"none of {', '.join(self.target.known_hosts)} exists"
        raise _HostKeyError(f"the host key of {hostname} ({key.get_name()} {fingerprint}) is not in "
                            f"known_hosts ({known}). "
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


class _StartError(Exception):
    """A host or worker could not be started; the message says why and what to do next."""


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
                        raise _StartError(f"the jump host {hop} could not connect to "
                                          f"{host_port(nxt.host, nxt.port)} ({err}); check the ProxyJump "
                                          "host and that it may forward (AllowTcpForwarding)") from err
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
    for path in target.known_hosts_files():
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
