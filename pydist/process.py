"""This process's view of the cluster: its id, its links to other processes, the members.

Every process (master and workers) has one `STATE`.  It owns:

* the links (transport.Link) to other processes, one per peer, made at join time or lazily
  on first use when the topology allows it.  Between two workers the higher id dials the
  lower one (the lower asks the higher through the master), so a pair never ends up with two
  links (Julia does the same);
* the membership table (`members`: id -> WorkerInfo), which the master keeps current on
  every worker, so `workers()` and friends agree everywhere;
* the runner (threads.py), whose threads take over a link's reading when the call running
  on its reader waits or runs long, so a call blocked in `take()` never stops another call
  or the reading of its link;
* the heartbeat thread's handle (heartbeat.py runs it).

Upper layers plug into it through `STATE.handlers` (frame kind -> function) and
`STATE.exit_hooks` (run when a peer is gone); this module imports nothing above transport.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import secrets
import socket
import ssl
import sys
import threading
import time
import types
from typing import NoReturn

from . import settings, shm, threads, transport
from .errors import CapturedException, ProcessExitedException, RemoteException
from .messages import NO_RRID, Kind, Mode
from .serialize import dumps, loads, unpicklable
from .handshake import HandshakeError, handshake
from .sockets import dial, open_listener, serve
from .transport import Link, ProtocolError

log = logging.getLogger("pydist")


@dataclasses.dataclass
class WorkerInfo:
    """How to reach a cluster process and where it runs."""
    pid: int
    host: str = ""          # address other processes dial
    port: int = 0
    hostname: str = ""      # machine identity, for procs(pid)
    ospid: int = 0
    shm: str = ""           # its shared memory's identity (shm.host_identity): "" for none


class TopologyError(ConnectionError):
    """The cluster's topology does not connect these two processes."""


class _State:
    def __init__(self):
        self.myid = 1
        self.cookie: str | None = None
        self.cluster_id = secrets.token_hex(6)
        self.topology = "all_to_all"
        self.lazy = True
        self.hostname = socket.gethostname()
        self.cond = threading.Condition()    # guards links, members, dead, dialing, master_info
        self.links: dict[int, Link] = {}
        self.members: dict[int, WorkerInfo] = {}
        self.shm = shm.host_identity() if settings.SHM else ""
        self.master_info = WorkerInfo(1, hostname=self.hostname, ospid=os.getpid(), shm=self.shm)
        self.dead: set[int] = set()
        self.dialing: set[int] = set()
        self.address: tuple[str, int] | None = None   # where this process listens, if it does
        self.listener: socket.socket | None = None
        self.joined = threading.Event()               # worker: the master has sent JOIN
        self.handlers: dict[Kind, object] = {}        # set by refs.py and calls.py
        self.exit_hooks: list = []                    # fn(pid), run once per exited peer
        self.before_exit: list = []                   # fn(), run by exit_process (output.py)
        self.runner = threads.runner
        self.tls = None                               # tls.TLSConfig: wrap every link in TLS
        self._heartbeat: threading.Thread | None = None


STATE = _State()


def internal(func):
    """Mark a pydist function that runs on request of another process: `interrupt` leaves it be."""
    func._pydist_internal = True
    return func


def func_name(func) -> str:
    """What to call `func` in messages: its qualified name, else its type's (an object that
    makes up attributes gives no usable __qualname__)."""
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) and name else type(func).__name__


def is_internal(func) -> bool:
    """Marked by `internal`.  Only plain functions are looked at: a user's object that makes up
    attributes (a proxy's or a Mock's __getattr__) is never taken for one of pydist's."""
    return isinstance(func, types.FunctionType) and func.__dict__.get("_pydist_internal", False)


# -- identity and membership ---------------------------------------------------------------
def myid() -> int:
    """This process's id: 1 on the master, 2, 3, ... on workers (Julia: myid)."""
    return STATE.myid


def cluster_cookie(cookie: str | None = None) -> str:
    """The cluster cookie; with an argument, set it first (Julia: cluster_cookie).

    Every connection proves knowledge of it (HMAC); it never crosses the wire."""
    if cookie is not None:
        if not isinstance(cookie, str):
            raise TypeError(f"the cookie must be a str, not {type(cookie).__name__}")
        if not cookie:
            raise ValueError("an empty cookie authenticates nothing: pass a non-empty string")
        if "\n" in cookie or "\r" in cookie:
            raise ValueError("the cookie cannot contain a newline (workers read it as one line)")
        STATE.cookie = cookie
    elif STATE.cookie is None:
        STATE.cookie = secrets.token_hex(16)
    return STATE.cookie


def workers() -> list[int]:
    """Ids of the workers, ascending; [1] when there are none (the master works then)."""
    with STATE.cond:
        ids = sorted(STATE.members)
    return ids or [1]


def nworkers() -> int:
    """Number of workers; 1 when there are none."""
    return len(STATE.members) or 1


def procs(pid: int | None = None) -> list[int]:
    """Ids of all processes, master included; with `pid`, those on the same host as `pid`."""
    with STATE.cond:
        infos = {1: STATE.master_info, **STATE.members}
    if pid is None:
        return sorted(infos)
    if pid not in infos:
        raise ValueError(f"no process with id {pid}; procs() are {sorted(infos)}")
    host = infos[pid].hostname
    return sorted(p for p, info in infos.items() if info.hostname == host)


def nprocs() -> int:
    """Number of processes, master included."""
    return len(STATE.members) + 1


def worker_id_from_socket(sock) -> int:
    """The id of the process at the other end of `sock`; -1 if it is not a cluster link."""
    with STATE.cond:
        for pid, link in STATE.links.items():
            if link.sock is sock or link.sock.fileno() == getattr(sock, "fileno", lambda: -2)():
                return pid
    return -1


def add_members(infos: list[WorkerInfo], master: WorkerInfo | None = None) -> None:
    """Record processes that joined (sent by the master to every worker)."""
    with STATE.cond:
        for info in infos:
            if info.pid != STATE.myid and info.pid not in STATE.dead:
                STATE.members[info.pid] = info
            elif info.pid == STATE.myid:
                STATE.members[info.pid] = info
        if master is not None:
            STATE.master_info = master
        STATE.cond.notify_all()


# -- links -----------------------------------------------------------------------------------
def get_link(pid: int) -> Link:
    """The link to process `pid`, connecting first if the topology allows it."""
    link = STATE.links.get(pid)
    if link is not None and not link.closed:
        return link
    return _connect(pid)


def _connect(pid: int) -> Link:
    deadline = time.monotonic() + settings.WORKER_TIMEOUT
    with STATE.cond:
        while True:
            link = STATE.links.get(pid)
            if link is not None and not link.closed:
                return link
            if pid in STATE.dead:
                raise ProcessExitedException(pid)
            if pid == STATE.myid:
                raise ValueError(f"process {pid} is this process: it has no link to itself")
            if pid == 1:                      # a worker's master link is gone: so is the master
                raise ProcessExitedException(pid)
            if STATE.myid == 1:               # the master dials nobody: every worker joined it
                if pid in STATE.members:      # its link just closed; peer_exited is under way
                    raise ProcessExitedException(pid, "its link is closed")
                raise ValueError(f"no process with id {pid}; procs() are {procs()}")
            info = STATE.members.get(pid)
            if info is None:
                raise ValueError(f"no process with id {pid}; procs() are {procs()}")
            if STATE.topology != "all_to_all":
                raise TopologyError(f"process {STATE.myid} cannot call process {pid}: the cluster's "
                                    f"topology is {STATE.topology!r}, which does not connect them; "
                                    "use topology='all_to_all' or list the peer in connect_idents")
            if pid not in STATE.dialing:
                STATE.dialing.add(pid)
                break
            if not STATE.cond.wait(deadline - time.monotonic()):
                raise TimeoutError(f"no link to process {pid} within {settings.WORKER_TIMEOUT:.0f} s")
    try:
        if STATE.myid > pid:
            return dial_peer(info)
        # The lower id asks the higher one, through the master, to dial it.
        try:
            call_fetch(1, _ask_to_dial, pid, STATE.myid)
        except RemoteException as err:
            while isinstance(err, RemoteException):
                err = err.captured
            raise err from None
        with STATE.cond:
            if not STATE.cond.wait_for(lambda: pid in STATE.links or pid in STATE.dead,
                                       deadline - time.monotonic()):
                raise TimeoutError(f"process {pid} did not connect within {settings.WORKER_TIMEOUT:.0f} s")
            if pid in STATE.dead:
                raise ProcessExitedException(pid)
            return STATE.links[pid]
    finally:
        with STATE.cond:
            STATE.dialing.discard(pid)
            STATE.cond.notify_all()


@internal
def _ask_to_dial(higher: int, lower: int) -> None:
    """Master: have worker `higher` dial worker `lower` (which asked for the link)."""
    call_fetch(higher, _dial_back, lower)


@internal
def _dial_back(lower: int) -> None:
    get_link(lower)


def dial_peer(info: WorkerInfo) -> Link:
    """Dial and authenticate a peer worker, introduce ourselves, and register the link."""
    try:
        sock = dial(info.host, info.port)
    except OSError as err:
        raise ProcessExitedException(info.pid, f"it cannot be reached at {info.host}:{info.port} "
                                     f"({err})") from err
    try:
        sock = secure(sock, server=False)
        handshake(sock, cluster_cookie(), dialer=True)
    except (HandshakeError, ssl.SSLError):
        sock.close()
        raise
    except OSError as err:
        sock.close()
        raise ProcessExitedException(info.pid, f"the connection to it failed ({err})") from err
    link = Link(sock, on_frame, on_close, peer=info.pid)
    link.send(Kind.IDENT, dumps((STATE.myid, STATE.shm))[0])
    register_link(link, info.shm)
    return link


def share_memory(link: Link, peer_shm: str) -> None:
    """Let large buffers on `link` go through shared memory when its peer, whose shared
    memory is `peer_shm` (WorkerInfo.shm, or what it said when it dialed), shares this
    process's (pydist/shm.py). Each end decides from what the other said of itself on this
    very link's set-up, so both always agree."""
    if STATE.shm and peer_shm == STATE.shm:
        link.segments = shm.Segments(STATE.cluster_id, STATE.myid, link.peer)
        link.segments.link = link


def register_link(link: Link, peer_shm: str) -> None:
    """Make `link` the link to its peer and start serving it."""
    share_memory(link, peer_shm)
    with STATE.cond:
        old = STATE.links.get(link.peer)
        STATE.links[link.peer] = link
        STATE.cond.notify_all()
    if old is not None and old is not link:
        log.warning("pydist: replacing the link to process %s", link.peer)
    link.start(f"pydist-reader-{link.peer}")


def secure(sock: socket.socket, server: bool) -> socket.socket:
    """Wrap a fresh connection in TLS when the cluster uses it (before the cookie handshake)."""
    return STATE.tls.wrap(sock, server) if STATE.tls is not None else sock


def accept(sock: socket.socket, addr, on_offer=None) -> None:
    """Serve one incoming connection: authenticate, then read who it is (listener thread).
    `on_offer(link, offer)` takes workers that dial in to join (the master's join listeners)."""
    try:
        sock = secure(sock, server=True)
        handshake(sock, cluster_cookie(), dialer=False)
    except (HandshakeError, OSError) as err:
        log.warning("pydist: refused a connection from %s: %s", _addr(addr), err)
        sock.close()
        return
    link = Link(sock, on_frame, on_close)
    try:
        sock.settimeout(settings.HANDSHAKE_TIMEOUT)
        kind, _mode, _rrid, _msg_id, body, _buffers = link.read_frame()
        sock.settimeout(None)
        what = loads(body)
    except Exception as err:
        log.warning("pydist: closing a connection from %s: bad first frame (%s)", _addr(addr), err)
        link.closed = True
        sock.close()
        return
    if (kind is Kind.IDENT and isinstance(what, tuple) and len(what) == 2 and isinstance(what[0], int)
            and what[0] > 1 and what[0] != STATE.myid):
        link.peer = what[0]
        register_link(link, str(what[1]))
    elif kind is Kind.JOIN and STATE.on_join is not None and not STATE.joined.is_set():
        STATE.on_join(link, what)
    elif kind is Kind.OFFER and on_offer is not None:
        on_offer(link, what)
    else:
        log.warning("pydist: closing a connection from %s: unexpected %s", _addr(addr), kind.name)
        link.closed = True
        sock.close()


STATE.on_join = None    # worker.py: fn(link, join) for the master's first frame


def _addr(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


def listen(host: str, port: int = 0, advertise: str | None = None) -> tuple[str, int]:
    """Start accepting cluster connections on host:port; returns the advertised address."""
    listener = open_listener(host, port)
    STATE.listener = listener
    port = listener.getsockname()[1]
    STATE.address = (advertise or host, port)
    serve(listener, accept, "pydist-listener")
    return STATE.address


def on_frame(link: Link, kind: Kind, mode, rrid, msg_id, body, buffers) -> bool:
    """Dispatch one frame; True when another thread reads the link now (Link.run_inline)."""
    handler = STATE.handlers.get(kind)
    if handler is None:
        raise ProtocolError(f"unexpected {kind.name} frame")
    return handler(link, mode, rrid, msg_id, body, buffers)


def on_close(link: Link, reason: str) -> None:
    pid = link.peer
    if pid is None:
        return
    with STATE.cond:
        if STATE.links.get(pid) is link:
            del STATE.links[pid]
        STATE.cond.notify_all()
    if pid == 1 and STATE.myid != 1:
        _master_gone(reason)
    peer_exited(pid)


@internal
def note_exit(pid: int, reason: str) -> None:
    """Process `pid` tells why it is about to exit: its link's failures will say so."""
    link = STATE.links.get(pid)
    if link is not None:
        link.exit_note = reason


def _master_gone(reason: str) -> None:
    """A worker without its master exits at once: no orphans, whatever the backend."""
    try:
        if STATE.shm:
            shm.forget_cluster(STATE.cluster_id)
    finally:
        exit_process(0)


def exit_process(code: int) -> NoReturn:
    """End this worker now (os._exit: its threads may hold any lock, so no atexit, no
    interpreter shutdown), after its unfinished output lines (STATE.before_exit hooks)."""
    try:
        for hook in list(STATE.before_exit):
            try:
                hook()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def peer_exited(pid: int) -> None:
    """Forget process `pid`; run the exit hooks once (refs, pools, the master's registry)."""
    with STATE.cond:
        if pid in STATE.dead:
            return
        STATE.dead.add(pid)
        STATE.members.pop(pid, None)
        link = STATE.links.pop(pid, None)
        STATE.cond.notify_all()
    if link is not None:
        link.close("the process has exited")
    if STATE.shm:
        shm.forget(STATE.cluster_id, STATE.myid, pid)
    for hook in list(STATE.exit_hooks):
        try:
            hook(pid)
        except Exception:
            log.exception("pydist: an exit hook for process %s failed", pid)


# -- calls -----------------------------------------------------------------------------------
def send_call(pid: int, mode: Mode, func, args=(), kwargs=None, rrid=NO_RRID, flush: bool = True,
              on_done=None):
    """Send `func(*args, **kwargs)` to process `pid`; returns the Reply for FETCH and WAIT
    (with `on_done`, a CallbackReply that calls it when answered). flush=False leaves a
    small call queued until the link's next flush (Link.send); an unanswered call (FUTURE,
    DO) in a burst may go out through the link's writer thread."""
    answered = mode is Mode.FETCH or mode is Mode.WAIT
    if on_done is not None and not answered:
        raise ValueError(f"on_done needs an answered call (FETCH or WAIT), not {mode.name}")
    link = get_link(pid)
    try:
        body, buffers = dumps((func, args, kwargs or {}), dest=pid)
    except (TypeError, AttributeError, pickle.PicklingError) as err:    # what pickling raises
        raise _unpicklable_call(err, pid, func, args, kwargs or {}) from err
    if answered:
        return link.request(mode, body, buffers, rrid, flush, on_done)
    link.send(Kind.CALL, body, buffers, mode=mode, rrid=rrid, flush=flush and transport.SOON)
    return None


def _unpicklable_call(err: Exception, pid: int, func, args, kwargs: dict) -> Exception:
    """`err` (pickling a call failed) with the culprit named: the function, one of its
    captured variables, an argument, or a part of one."""
    name = func_name(func)
    parts = [(func, f"the function {name}"), *((arg, f"argument {i}") for i, arg in enumerate(args, 1)),
             *((value, f"keyword argument {key!r}") for key, value in kwargs.items())]
    found = next(filter(None, (unpicklable(part, what) for part, what in parts)), None)
    if found is None:
        return err
    where, cause = found
    message = (f"cannot send the call to process {pid}: {where} cannot be pickled ({cause}); "
               "pass something picklable, or create it on the worker")
    return (TypeError if isinstance(err, TypeError) else pickle.PicklingError)(message)


def result(reply, timeout: float | None = None) -> object:
    """Wait for a Reply and return its value, or raise what the call raised.

    TimeoutError after `timeout` seconds; the call goes on, and its late answer is dropped."""
    if not reply.wait(timeout):
        link = STATE.links.get(reply.pid)
        if link is not None:
            link.abandon(reply)
        raise TimeoutError(f"process {reply.pid} did not answer within {timeout:g} s; the call "
                           "may still be running there (interrupt() stops it)")
    if reply.error is not None:
        raise reply.error
    if reply.kind is Kind.RESULT:
        try:
            return loads(reply.body, reply.buffers)
        except Exception as err:
            raise RemoteException(reply.pid, CapturedException(
                type(err).__name__, f"the result could not be unpickled on process {STATE.myid}: {err}",
                "")) from err
    try:
        exc = loads(reply.body)
    except Exception as err:
        exc = RemoteException(reply.pid, CapturedException(type(err).__name__, str(err)))
    raise exc


def call_fetch(pid: int, func, *args, timeout: float | None = None):
    """Run func(*args) on process `pid` and return its result (no local shortcut: pid is
    remote); TimeoutError after `timeout` seconds."""
    return result(send_call(pid, Mode.FETCH, func, args), timeout)
