"""The worker process: `python -m pydist.worker` (Julia: `julia --worker`).

Master connects (local, SSH, Docker): the worker reads the cookie as the first line of its
stdin, listens, prints `pydist_worker:PORT#HOST` on stdout and waits for the master to dial
it and send JOIN (a local worker is handed an already connected socket pair instead,
`--linked-fd`, and is joined over it; its address is for its peers).  Worker connects
(Kubernetes, Slurm, Helm, ElasticManager): `python -m pydist.worker --join HOST:PORT
--cookie-file F` dials the master, retrying with backoff for `--join-timeout` seconds, offers
itself and waits for JOIN.

Either way the worker also listens for its peers, and exits as soon as its link to the
master is gone, so no worker outlives its cluster.  `time.sleep` is made interruptible, and
SIGINT interrupts the running calls instead of killing the process.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import ssl
import sys
import threading
import time
import types
from typing import TextIO

from .. import settings
from .._args import ArgumentParser
from ..calls import interrupt_calls, interruptible_sleep
from ..messages import Kind
from ..heartbeat import configure_heartbeat
from ..process import (STATE, WorkerInfo, accept, add_members, cluster_cookie, dial_peer, exit_process,
                       listen, on_close, on_frame, register_link, secure)
from ..serialize import dumps, loads
from ..handshake import HandshakeError, handshake
from ..sockets import dial
from ..transport import Link

ADDRESS_PREFIX = "pydist_worker:"


def format_address(port: int, host: str) -> str:
    """The line a worker prints once it listens (read by `parse_address` on the master)."""
    return f"{ADDRESS_PREFIX}{port}#{host}"


def parse_address(line: str) -> tuple[str, int] | None:
    """(host, port) from a `pydist_worker:PORT#HOST` line; None for any other line."""
    line = line.strip()
    if not line.startswith(ADDRESS_PREFIX):
        return None
    port, _, host = line[len(ADDRESS_PREFIX):].partition("#")
    return host, int(port)


def init_worker(cookie: str | None = None, manager=None) -> None:
    """Make this process a worker-to-be: set the cookie and wait for a master's JOIN
    (Julia: init_worker)."""
    if cookie is not None:
        cluster_cookie(cookie)
    STATE.myid = 0              # no id until the master sends JOIN
    STATE.on_join = _on_join
    time.sleep = interruptible_sleep
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: interrupt_calls())
        # SIGTERM (docker stop, a deleted pod, scancel): leave now; the master sees the link
        # close and deregisters us. As PID 1 without an init, Python would ignore it.
        signal.signal(signal.SIGTERM, lambda *_: _leave())


def _leave() -> None:
    exit_process(0)


def start_worker(out: TextIO = sys.stdout, cookie: str | None = None, bind: str = "0.0.0.0",
                 advertise: str | None = None, linked: socket.socket | None = None) -> None:
    """Listen, print the address line on `out`, serve the cluster; never returns
    (Julia: start_worker). Exits with status 1 if no master joins within WORKER_TIMEOUT.
    `linked`: a socket already connected to the master (LocalManager's socket pair): the
    master authenticates and joins us over it rather than dialing the address, which is
    then for our peers."""
    from ..output import capture_output
    init_worker(cookie)
    capture_output()            # whole lines on our stdout, which the master reads
    host, port = listen(bind, 0, advertise or _advertised(bind))
    if linked is not None:
        threading.Thread(target=accept, args=(linked, "the master's socket pair"), daemon=True,
                         name="pydist-linked").start()
    print(format_address(port, host), file=out, flush=True)
    if not STATE.joined.wait(settings.WORKER_TIMEOUT):
        print(f"pydist worker: no master connected within {settings.WORKER_TIMEOUT:.0f} s "
              "(PYDIST_WORKER_TIMEOUT); exiting", file=sys.stderr, flush=True)
        os._exit(1)
    threading.Event().wait()     # serve until the master's link closes (which exits)


def join_master(host: str, port: int, cookie: str, timeout: float, bind: str = "0.0.0.0",
                advertise: str | None = None, ident: str | None = None) -> None:
    """Dial the master at host:port and join it (worker connects); never returns."""
    init_worker(cookie)
    listen(bind, 0, advertise or _advertised(bind))
    _offer_and_join(_dial_with_backoff(host, port, timeout), ident)
    threading.Event().wait()


def _offer_and_join(sock: socket.socket, ident: str | None) -> None:
    """On an authenticated connection to the master: offer ourselves, take its JOIN."""
    link = Link(sock, on_frame, on_close)
    my_host, my_port = STATE.address
    offer = {"ident": ident or os.environ.get("PYDIST_WORKER_IDENT") or socket.gethostname(),
             "host": my_host, "port": my_port, "hostname": STATE.hostname, "ospid": os.getpid()}
    link.send(Kind.OFFER, dumps(offer)[0])
    kind, _mode, _rrid, _msg_id, body, _buffers = link.read_frame()
    if kind is not Kind.JOIN:
        raise SystemExit(f"pydist worker: the master answered {kind.name}, not JOIN")
    _forward_output()           # before joining: a call may print as soon as we have joined
    _on_join(link, loads(body))


def process_messages(reader, writer, incoming: bool = True) -> None:
    """Serve the cluster protocol on a connection a custom transport made (Julia:
    process_messages). `reader` and `writer` are the same connected socket. incoming=True:
    the peer dialed us (it authenticates, then sends JOIN or IDENT); incoming=False: we
    dialed the master, and join it. Returns at once; the link is served on threads."""
    if reader is not writer or not isinstance(reader, socket.socket):
        raise TypeError("process_messages needs one connected socket as both reader and writer")
    if incoming:
        threading.Thread(target=accept, args=(reader, reader.getpeername()), daemon=True,
                         name="pydist-accept").start()
        return
    if STATE.address is None:
        listen("0.0.0.0", 0, _advertised("0.0.0.0"))
    sock = secure(reader, server=False)
    handshake(sock, cluster_cookie(), dialer=True)
    threading.Thread(target=_offer_and_join, args=(sock, None), daemon=True, name="pydist-join").start()


def _forward_output() -> None:
    """A joined worker has no stdout pipe to the master: its print()s and tracebacks go to
    the master over the link (as `From worker N:` lines), and to its own stdout as before."""
    from ..output import capture_output, forward_over_link, relay_lines
    from ..messages import Mode
    from ..process import send_call

    def send(lines: list[str]) -> None:          # on the thread pydist-output
        if not STATE.joined.wait(settings.WORKER_TIMEOUT):
            raise ConnectionError("never joined")   # this worker exits on its own
        send_call(1, Mode.DO, relay_lines, (STATE.myid, lines))
    capture_output(forward_over_link(send))


def _dial_with_backoff(host: str, port: int, timeout: float):
    deadline = time.monotonic() + timeout
    delay, last = 0.1, None
    pause = threading.Event()
    while time.monotonic() < deadline:
        try:
            sock = dial(host, port)
        except OSError as err:
            last = err
            pause.wait(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 5.0)
            continue
        try:
            sock = secure(sock, server=False)
            handshake(sock, cluster_cookie(), dialer=True)
            return sock
        except (HandshakeError, ssl.SSLError) as err:
            sock.close()
            raise SystemExit(f"pydist worker: the master at {host}:{port} refused us: {err}") from err
    raise SystemExit(f"pydist worker: could not reach the master at {host}:{port} for {timeout:.0f} s "
                     f"({last}); check the address and that addprocs(ElasticManager(...)) is running")


def _on_join(link: Link, join: dict) -> None:
    """The master's JOIN: take the id, learn the cluster, dial peers, answer JOINED."""
    STATE.myid = join["pid"]
    STATE.cluster_id = join["cluster_id"]
    STATE.topology = join["topology"]
    STATE.lazy = join["lazy"]
    for path in join.get("sys_path", ()):
        if path not in sys.path and (path == "" or os.path.isdir(path)):
            sys.path.append(path)
    add_members(join["members"], join["master"])
    if "heartbeat" in join:
        configure_heartbeat(*join["heartbeat"])
    if join.get("memory_limit"):
        from .memory import watch
        watch(join["memory_limit"])
    link.peer = 1
    for info in join["dial"]:
        dial_peer(info)
    host, port = STATE.address
    me = WorkerInfo(STATE.myid, host, port, STATE.hostname, os.getpid(), STATE.shm)
    add_members([me])
    link.send(Kind.JOINED, dumps(me)[0])
    register_link(link, join["master"].shm)
    STATE.joined.set()


def _advertised(bind: str) -> str:
    """The address peers should dial: the bind address, or this host's own address."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    try:
        candidates = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        candidates = set()
    routable = sorted(a for a in candidates if not a.startswith("127."))
    return routable[0] if routable else "127.0.0.1"


def _linked(fd: int | None) -> socket.socket | None:
    """The socket pair end passed as --linked-fd, made non-inheritable (a program the worker
    starts must not hold the link open after the worker dies: the master would not see it
    go). None if there is none or it did not survive the way here (a wrapper that closes
    descriptors): the master then dials our address as for any worker."""
    if fd is None:
        return None
    try:
        os.set_inheritable(fd, False)
        return socket.socket(fileno=fd)
    except OSError as err:
        print(f"pydist worker: --linked-fd {fd} is not usable ({err}); the master will dial us",
              file=sys.stderr, flush=True)
        return None


def _read_cookie(args, parser: argparse.ArgumentParser) -> str:
    """The cookie from --cookie-file, the file --cookie-env names, or stdin's first line; a
    missing or empty one is a usage error (exit 2)."""
    if args.cookie_env and not args.cookie_file:
        if not os.environ.get(args.cookie_env):
            parser.error(f"--cookie-env {args.cookie_env}: that environment variable is not set")
        args.cookie_file = os.environ[args.cookie_env]
    if args.cookie_file:
        try:
            with open(args.cookie_file) as f:
                cookie = f.read().strip()
        except OSError as err:
            parser.error(f"cannot read the cookie file {args.cookie_file}: {err.strerror or err}")
        if not cookie:
            parser.error(f"the cookie file {args.cookie_file} is empty")
        return cookie
    line = sys.stdin.readline().strip()
    if not line:
        parser.error("expected the cluster cookie as the first line of stdin (or --cookie-file FILE)")
    return line


def _join_address(text: str) -> tuple[str, int] | None:
    """(host, port) from --join's HOST:PORT ([v6]:PORT too); None if it is not one."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once: the fork server builds it before it forks (building costs a forked worker
    ~2 ms, most of it copy-on-write faults), so a forked worker only parses."""
    parser = ArgumentParser(prog="python -m pydist.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--bind-to", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument("--advertise", help="address peers should dial (default: the bind address "
                                            "or this host's)")
    parser.add_argument("--join", metavar="HOST:PORT", help="dial the master there instead of "
                                                            "waiting to be dialed")
    parser.add_argument("--join-timeout", type=float, default=settings.WORKER_TIMEOUT,
                        help="seconds to keep retrying --join (default PYDIST_WORKER_TIMEOUT)")
    parser.add_argument("--cookie-file", help="read the cookie from this file (else from stdin)")
    parser.add_argument("--cookie-env", help="read the cookie from the file this variable names")
    parser.add_argument("--ident", help="how the worker names itself to the master when joining")
    parser.add_argument("--tls-cert", help="this worker's TLS certificate (PEM); with --tls-key, --tls-ca")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", help="the CA that signs every certificate of the cluster")
    parser.add_argument("--fork-server", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--linked-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run a worker (`python -m pydist.worker`, `pydist worker`); `prog` names the command in
    help and errors."""
    parser = _parser()
    if prog is not None:
        parser.prog = prog
    args = parser.parse_args(argv)
    if args.fork_server is not None:        # LocalManager's fork server (forkserver.py)
        from .forkserver import serve
        serve(args.fork_server)
    if args.join and not _join_address(args.join):
        parser.error(f"--join expects HOST:PORT, not {args.join!r}")
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            parser.error("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
        paths = (args.tls_cert, args.tls_key, args.tls_ca)
        unreadable = [path for path in paths if not os.access(path, os.R_OK)]
        if unreadable:
            parser.error(f"cannot read {', '.join(unreadable)} (--tls-cert, --tls-key, --tls-ca)")
        from ..tls import TLSConfig
        STATE.tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca)
    cookie = _read_cookie(args, parser)
    # User code sent with everywhere() runs in a clean __main__, not in this module.
    sys.modules["__main__"] = types.ModuleType("__main__")
    if args.join:
        host, port = _join_address(args.join)
        join_master(host, port, cookie, args.join_timeout, args.bind_to, args.advertise, args.ident)
    else:
        start_worker(sys.stdout, cookie, args.bind_to, args.advertise, _linked(args.linked_fd))

