"""Cluster status: one row per process, served to `pydist status` by every master.

`cluster_status()` (master only) gathers one row per process with one internal call per
worker, all in parallel, each bounded by STATUS_TIMEOUT: id, host, ospid, uptime, user calls
running and queued, CPU seconds, resident memory.

Every master serves those rows on a Unix socket, `~/.pydist/<cluster id>.sock`, from its
first `addprocs` on (however it was started: `pydist -p N`, a plain script, a notebook, a
batch job), unless PYDIST_STATUS=0. The directory is 0700 and the socket 0600, a connecting
process must run as the same user (SO_PEERCRED) or root, and the server reads nothing from
its clients: it answers each connection with a fresh JSON snapshot and closes it. So no data
goes to other users, nothing is polled while nobody asks, and a stale socket of a master
that died is detected (connection refused) and removed by `pydist status`. The accept loop
is the thread `pydist-status`; it ends with `stop_status()` or the master.

`pydist status` (`status_command`) asks every socket of this user on this machine, or, with
`--address URL`, a master's dashboard (pydist.web) anywhere, using the URL it printed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import resource
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path

from . import calls, cluster, settings
from .messages import Mode
from .process import STATE, internal, myid, result, send_call, workers

log = logging.getLogger("pydist")

__all__ = ["cluster_status", "serve_status", "stop_status", "status_dir", "status_command",
           "snapshot"]

# A worker that does not answer the status call within this many seconds is shown as
# unresponsive: long enough for a busy machine, short enough for a person waiting.
STATUS_TIMEOUT = 5.0
# `pydist status` waits this long for a master's answer (it gathers within STATUS_TIMEOUT).
CLIENT_TIMEOUT = STATUS_TIMEOUT + 10.0


# -- status of this cluster -------------------------------------------------------------------
@internal
def process_stats() -> dict:
    """Runs on each process: what `pydist status` and the dashboard show about it."""
    with calls._running_lock:
        running = len(calls._running)
    with calls._lanes_lock:
        in_lanes = sum(len(lane.queued) for lane in calls._lanes.values())
    cpu = os.times()
    return {"id": myid(), "host": socket.gethostname(), "ospid": os.getpid(),
            "started": _started_at(), "calls": running, "queued": STATE.runner._backlog + in_lanes,
            "cpu": cpu.user + cpu.system, "rss": _rss_bytes()}


def _started_at() -> float | None:
    """This process's start time (Unix seconds), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])    # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _rss_bytes() -> int | None:
    """Resident memory now (VmRSS); elsewhere the peak (ru_maxrss), the best there is."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def gather(func, *args, timeout: float = STATUS_TIMEOUT) -> dict[int, object]:
    """Run the internal `func(*args)` on every process (here for the master), all at once;
    pid -> its result, or the exception that stands for it (TimeoutError after `timeout`).
    Master only; costs one round trip."""
    pending, out = {}, {}
    for pid in (p for p in workers() if p != 1):
        try:
            pending[pid] = send_call(pid, Mode.FETCH, func, args)
        except Exception as err:
            out[pid] = err
    out[1] = func(*args)
    deadline = time.monotonic() + timeout
    for pid, reply in pending.items():
        if not reply.wait(deadline - time.monotonic()):
            out[pid] = TimeoutError(f"no answer within {timeout:.0f} s")
            continue
        try:
            out[pid] = result(reply)
        except Exception as err:
            out[pid] = err
    return out


def cluster_status(timeout: float = STATUS_TIMEOUT) -> list[dict]:
    """One row per process, master first: id, host, ospid, manager, uptime (s), calls (user
    calls running), queued (calls waiting for a thread or behind their lane's running call:
    pmap's next batches), cpu (CPU seconds so far), rss
    (bytes), error (None, or why a worker did not answer within `timeout`).

    Master only; one internal call per worker, all at once, so it costs one round trip."""
    if myid() != 1:
        raise RuntimeError("cluster_status() runs on the master (process 1)")
    return status_rows(gather(process_stats, timeout=timeout))


def status_rows(answers: dict[int, dict | BaseException]) -> list[dict]:
    """cluster_status's rows from process_stats' answers (or the errors in their place)."""
    rows = {}
    for pid, row in answers.items():
        rows[pid] = _error_row(pid, row) if isinstance(row, BaseException) else dict(row)
    now = time.time()
    known = cluster.registry()
    for pid, row in rows.items():
        worker = known.get(pid)
        started = row.pop("started", None)
        if started is None and worker is not None:
            started = worker.started            # when it joined: the best estimate there is
        row["uptime"] = None if started is None else max(now - started, 0.0)
        row["manager"] = type(worker.manager).__name__ if worker is not None else None
        row.setdefault("error", None)
    return [rows[pid] for pid in sorted(rows)]


def _error_row(pid: int, err: BaseException) -> dict:
    info = STATE.members.get(pid)
    return {"id": pid, "host": info.hostname if info else None, "ospid": info.ospid if info else None,
            "started": None, "calls": None, "queued": None, "cpu": None, "rss": None,
            "error": str(err) or type(err).__name__}


def snapshot() -> dict:
    """What `pydist status` gets from a master: the cluster id, its command line, the rows."""
    return {"cluster_id": STATE.cluster_id, "argv": sys.argv, "time": time.time(),
            "processes": cluster_status()}


# -- serving status to other processes ----------------------------------------------------------
_server: dict | None = None            # {"sock", "path", "thread"} while serving
_server_lock = threading.Lock()        # guards _server


def status_dir() -> Path:
    """Where masters put their status sockets: ~/.pydist."""
    return Path.home() / ".pydist"


def serve_status(directory: str | os.PathLike | None = None) -> str:
    """Let `pydist status` in another process show this cluster; returns the socket path.

    Serves `<directory or ~/.pydist>/<cluster id>.sock` (directory 0700, socket 0600) until
    `stop_status()` or exit; every master does this on its first addprocs (PYDIST_STATUS=0
    turns that off). Idempotent; another directory moves the socket. Master only. Raises
    OSError if it cannot."""
    global _server
    if myid() != 1:
        raise RuntimeError("serve_status() runs on the master (process 1)")
    folder = Path(directory) if directory is not None else status_dir()
    path = str(folder / f"{STATE.cluster_id}.sock")
    with _server_lock:
        if _server is not None and _server["path"] == path:
            return path
    stop_status()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(8)
    except OSError:
        sock.close()
        raise
    thread = threading.Thread(target=_serve, args=(sock,), name="pydist-status", daemon=True)
    with _server_lock:
        if _server is not None:              # another thread won the race: keep its socket
            sock.close()
            return _server["path"]
        _server = {"sock": sock, "path": path, "thread": thread}
    thread.start()
    return path


def stop_status() -> None:
    """Stop serving status and remove the socket."""
    global _server
    with _server_lock:
        server, _server = _server, None
    if server is None:
        return
    try:
        os.unlink(server["path"])
    except OSError:
        pass
    try:
        server["sock"].shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    server["sock"].close()
    server["thread"].join(STATUS_TIMEOUT + 1)


atexit.register(stop_status)


def _serve_by_default(_added: list[int]) -> None:
    """addprocs hook: every master answers `pydist status` unless PYDIST_STATUS=0."""
    if not settings.STATUS or _server is not None:
        return
    try:
        serve_status()
    except (OSError, RuntimeError) as err:           # RuntimeError: no home directory
        log.warning("pydist: `pydist status` will not see this cluster: %s (PYDIST_STATUS=0 "
                    "silences this)", err)


cluster._added_hooks.append(_serve_by_default)


def _serve(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return                  # closed by stop_status
        with conn:
            try:
                conn.settimeout(CLIENT_TIMEOUT)
                if _same_user(conn):
                    conn.sendall(json.dumps(snapshot()).encode())
            except Exception:
                pass                # the client went away; the next one gets a fresh snapshot


def _same_user(conn: socket.socket) -> bool:
    """The peer runs as this user or as root (Linux: SO_PEERCRED; else the 0600 mode decides)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


# -- `pydist status` ----------------------------------------------------------------------------
def status_command(argv: list[str]) -> int:
    """`pydist status [--json] [--dir D | --address URL] [CLUSTER]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="pydist status", description="Show the processes of the "
                                     "pydist clusters running as this user on this machine, or of "
                                     "the master whose dashboard is at --address.")
    parser.add_argument("cluster", nargs="?", help="only the cluster whose id starts with this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--dir", help=f"where masters serve status (default {status_dir()})")
    parser.add_argument("--address", metavar="URL",
                        help="a master's dashboard, as the URL it printed (with its token)")
    args = parser.parse_args(argv)
    if args.address:
        where = args.address
        snapshots = [s for s in [_ask_dashboard(args.address)] if s is not None]
    else:
        folder = Path(args.dir) if args.dir else status_dir()
        where = str(folder)
        snapshots = []
        for path in sorted(folder.glob("*.sock")) if folder.is_dir() else []:
            if args.cluster and not path.stem.startswith(args.cluster):
                continue
            answer = _ask(path)
            if answer is not None:
                snapshots.append(answer)
    if args.json:
        print(json.dumps(snapshots, indent=2))
    else:
        for answer in snapshots:
            print(_table(answer))
    if not snapshots:
        which = f"cluster {args.cluster}" if args.cluster else "pydist cluster"
        print(f"no running {which} found at {where}: start one with `pydist -p N script.py` or "
              "addprocs() in any script (unless PYDIST_STATUS=0 is set there)", file=sys.stderr)
        return 1
    return 0


def _ask(path: Path) -> dict | None:
    """One master's snapshot; removes the socket of a master that is gone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        sock.connect(str(path))
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionRefusedError:
        _remove_stale(path)
        return None
    except OSError as err:
        print(f"pydist status: {path}: {err}", file=sys.stderr)
        return None
    finally:
        sock.close()
    if not chunks:
        print(f"pydist status: {path}: the master refused to answer (another user?)", file=sys.stderr)
        return None
    return json.loads(b"".join(chunks))


def _ask_dashboard(url: str) -> dict | None:
    """A master's snapshot from its dashboard (`/api/status`, the token of the URL it printed)."""
    import urllib.error  # here: urllib.request costs every process ~8 ms
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url if "://" in url else "http://" + url)
    api = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/api/status", parts.query, ""))
    try:
        with urllib.request.urlopen(api, timeout=CLIENT_TIMEOUT) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        hint = ": give the whole URL the master printed, with its ?token=" if err.code == 403 else ""
        print(f"pydist status: {api.split('?')[0]}: HTTP {err.code} {err.reason}{hint}", file=sys.stderr)
    except (OSError, ValueError) as err:
        print(f"pydist status: {api.split('?')[0]}: {err}", file=sys.stderr)
    return None


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
            path.unlink()
    except OSError:
        pass


def _table(answer: dict) -> str:
    rows = answer["processes"]
    command = " ".join(answer.get("argv") or [])
    lines = [f"cluster {answer['cluster_id']}: {len(rows) - 1} worker(s); master: {command}",
             f"{'id':>4}  {'host':<20} {'ospid':>8} {'uptime':>10} {'calls':>6} {'rss':>10}"]
    for row in rows:
        if row.get("error"):
            lines.append(f"{row['id']:>4}  {row['host'] or '?':<20} {row['ospid'] or '?':>8}  "
                         f"not answering: {row['error']}")
            continue
        lines.append(f"{row['id']:>4}  {row['host']:<20} {row['ospid']:>8} {_duration(row['uptime']):>10} "
                     f"{row['calls']:>6} {_size(row['rss']):>10}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    """`1d 2:03:04`: an uptime for people."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def _size(nbytes: float | None) -> str:
    """`48.0 MiB`: a byte count for people."""
    if nbytes is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return "?"
