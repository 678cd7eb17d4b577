"""The `pydist` command, also `python -m pydist` (Julia: `julia -p N`, `--machine-file`,
`--worker`), and cluster status.

    pydist -p 4 script.py [args]           run script.py as __main__ with 4 local workers added
    pydist --machine-file hosts script.py  ... with SSH workers from a Julia-style machine file
    pydist -p 2 -c "code" | -m module      like python -c / -m; no script: an interactive console
    pydist worker --join HOST:PORT [--cookie-file F]   a worker that joins a master
    pydist status [--json] [CLUSTER]       the workers of running clusters on this machine
    pydist docker prune [--all]            remove worker containers a crashed master left
    pydist demo [-p N]                     start workers and estimate pi with pmap
    pydist --version

A bad argument or file is one line on stderr and exit status 2 (pydist._args).

Running a script.  As `python script.py` does, the script's directory becomes sys.path[0]
and sys.argv is [script, *args]; the workers are added first, and they get the master's
sys.path when they join, so modules next to the script import on the workers too.  The
script runs as `__main__` (runpy), so its functions, lambdas and classes travel by value
to remotecall and pmap.  When it ends, the workers are removed; the exit status is the
script's.

Machine file (Julia's format): one `[count*][user@]host[:port] [bind_addr]` per line,
`count` a number or `auto` (one worker per core), `#` starts a comment.  Each line becomes
one `("[user@]host[:port][ bind_addr]", count)` entry of `addprocs(list)`, the SSH manager.

Status.  `cluster_status()` (master only) gathers one row per process with one internal call
per worker, all in parallel, each bounded by STATUS_TIMEOUT: id, host, ospid, uptime, user
calls running, resident memory.  To let `pydist status` in another shell see it, the master
serves those rows on a Unix socket, `~/.pydist/<cluster id>.sock` (`serve_status()`; done
for you by `pydist script.py`): the directory is 0700 and the socket 0600, a connecting
process must run as the same user (SO_PEERCRED) or root, and the server reads nothing from
its clients: it answers each connection with a fresh JSON snapshot and closes it.  So no
data goes to other users, nothing is polled while nobody asks, and a stale socket of a
master that died is detected (connection refused) and removed by `pydist status`.
The accept loop is the thread `pydist-status`; it ends with `stop_status()` or the master.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import runpy
import socket
import stat
import struct
import sys
import threading
import time
import types
from pathlib import Path

from . import calls
from ._args import ArgumentParser, fail, version
from .messages import Mode
from .process import STATE, internal, myid, result, send_call, workers

__all__ = ["main", "parse_machine_file", "parse_machine_line", "cluster_status", "serve_status",
           "stop_status", "status_dir"]

# A worker that does not answer the status call within this many seconds is shown as
# unresponsive: long enough for a busy machine, short enough for a person waiting.
STATUS_TIMEOUT = 5.0
# `pydist status` waits this long for a master's answer (it gathers within STATUS_TIMEOUT).
CLIENT_TIMEOUT = STATUS_TIMEOUT + 10.0
SUBCOMMANDS = ("worker", "status", "docker", "demo")


# -- machine files ---------------------------------------------------------------------------
def parse_machine_line(line: str) -> tuple[str, int | str] | None:
    """One machine-file line -> `(spec, count)` for addprocs, or None for a blank/comment line.

    `"2*alice@node1:2222 10.0.0.5"` -> `("alice@node1:2222 10.0.0.5", 2)`; raises ValueError
    for a bad count, port or an extra word."""
    line = line.split("#", 1)[0].strip()
    if not line:
        return None
    words = line.split()
    if len(words) > 2:
        raise ValueError(f"expected '[count*][user@]host[:port] [bind_addr]', got {line!r}")
    machine = words[0]
    count: int | str = 1
    if "*" in machine:
        text, machine = machine.split("*", 1)
        if text == "auto":
            count = "auto"
        else:
            try:
                count = int(text)
            except ValueError:
                raise ValueError(f"bad worker count {text!r} in {line!r}: use a number or 'auto'") from None
            if count < 1:
                raise ValueError(f"worker count must be at least 1, not {count}, in {line!r}")
    _check_machine(machine, line)
    return (" ".join([machine, *words[1:]]), count)


def _check_machine(machine: str, line: str) -> None:
    user, _, hostport = machine.rpartition("@")
    if machine.count("@") > 1 or not hostport or (not user and "@" in machine):
        raise ValueError(f"bad machine {machine!r} in {line!r}: expected [user@]host[:port]")
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"bad bracketed IPv6 address {hostport!r} in {line!r}")
        port = rest[1:] if rest else None
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, None       # a plain host, or a bare IPv6 address without port
    if not host:
        raise ValueError(f"no host in {machine!r} ({line!r})")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port {port!r} in {line!r}: expected 1-65535")


def parse_machine_file(path: str | os.PathLike) -> list[tuple[str, int | str]]:
    """The machines of a Julia-style machine file, as `addprocs` takes them."""
    machines = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                entry = parse_machine_line(line)
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: {err}") from None
            if entry is not None:
                machines.append(entry)
    if not machines:
        raise ValueError(f"{path} lists no machines: write one '[count*][user@]host[:port]' per line")
    return machines


# -- status of this cluster -------------------------------------------------------------------
@internal
def _process_stats() -> dict:
    """Runs on each process: what `pydist status` shows about it."""
    with calls._running_lock:
        running = len(calls._running)
    return {"id": myid(), "host": socket.gethostname(), "ospid": os.getpid(),
            "started": _started_at(), "calls": running, "rss": _rss_bytes()}


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


def cluster_status(timeout: float = STATUS_TIMEOUT) -> list[dict]:
    """One row per process, master first: id, host, ospid, uptime (s), calls (user calls
    running), rss (bytes), error (None, or why a worker did not answer within `timeout`).

    Master only; one internal call per worker, all at once, so it costs one round trip."""
    if myid() != 1:
        raise RuntimeError("cluster_status() runs on the master (process 1)")
    from .cluster import registry
    pending = {}
    rows = {}
    for pid in (p for p in workers() if p != 1):
        try:
            pending[pid] = send_call(pid, Mode.FETCH, _process_stats)
        except Exception as err:
            rows[pid] = _error_row(pid, err)
    rows[1] = _process_stats()
    deadline = time.monotonic() + timeout
    for pid, reply in pending.items():
        if not reply.wait(deadline - time.monotonic()):
            rows[pid] = _error_row(pid, f"no answer within {timeout:.0f} s")
            continue
        try:
            rows[pid] = result(reply)
        except Exception as err:
            rows[pid] = _error_row(pid, err)
    now = time.time()
    known = registry()
    for pid, row in rows.items():
        started = row.pop("started", None)
        if started is None and pid in known:
            started = known[pid].started        # when it joined: the best estimate there is
        row["uptime"] = None if started is None else max(now - started, 0.0)
        row.setdefault("error", None)
    return [rows[pid] for pid in sorted(rows)]


def _error_row(pid: int, err) -> dict:
    info = STATE.members.get(pid)
    return {"id": pid, "host": info.hostname if info else None, "ospid": info.ospid if info else None,
            "started": None, "calls": None, "rss": None, "error": str(err) or type(err).__name__}


# -- serving status to other processes ----------------------------------------------------------
_server: dict | None = None            # {"sock", "path", "thread"} while serving
_server_lock = threading.Lock()        # guards _server


def status_dir() -> Path:
    """Where masters put their status sockets: ~/.pydist."""
    return Path.home() / ".pydist"


def serve_status(directory: str | os.PathLike | None = None) -> str:
    """Let `pydist status` in another process show this cluster; returns the socket path.

    Serves `<directory or ~/.pydist>/<cluster id>.sock` (directory 0700, socket 0600) until
    `stop_status()` or exit. Idempotent. Master only. Raises OSError if it cannot."""
    global _server
    if myid() != 1:
        raise RuntimeError("serve_status() runs on the master (process 1)")
    with _server_lock:
        if _server is not None:
            return _server["path"]
        folder = Path(directory) if directory is not None else status_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        path = str(folder / f"{STATE.cluster_id}.sock")
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
                    conn.sendall(json.dumps(_snapshot()).encode())
            except Exception:
                pass                # the client went away; the next one gets a fresh snapshot


def _same_user(conn: socket.socket) -> bool:
    """The peer runs as this user or as root (Linux: SO_PEERCRED; else the 0600 mode decides)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def _snapshot() -> dict:
    return {"cluster_id": STATE.cluster_id, "argv": sys.argv, "time": time.time(),
            "processes": cluster_status()}


# -- `pydist status` ----------------------------------------------------------------------------
def _status_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pydist status", description="Show the processes of the "
                                     "pydist clusters running as this user on this machine.")
    parser.add_argument("cluster", nargs="?", help="only the cluster whose id starts with this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--dir", help=f"where masters serve status (default {status_dir()})")
    args = parser.parse_args(argv)
    folder = Path(args.dir) if args.dir else status_dir()
    snapshots = []
    for path in sorted(folder.glob("*.sock")) if folder.is_dir() else []:
        if args.cluster and not path.stem.startswith(args.cluster):
            continue
        snapshot = _ask(path)
        if snapshot is not None:
            snapshots.append(snapshot)
    if args.json:
        print(json.dumps(snapshots, indent=2))
    else:
        for snapshot in snapshots:
            print(_table(snapshot))
    if not snapshots:
        which = f"cluster {args.cluster}" if args.cluster else "pydist cluster"
        print(f"no running {which} found in {folder}: start one with `pydist -p N script.py`, or call "
              "pydist.cli.serve_status() in the master", file=sys.stderr)
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


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
            path.unlink()
    except OSError:
        pass


def _table(snapshot: dict) -> str:
    rows = snapshot["processes"]
    command = " ".join(snapshot.get("argv") or [])
    lines = [f"cluster {snapshot['cluster_id']}: {len(rows) - 1} worker(s); master: {command}",
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
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return "?"


# -- `pydist [options] script.py` -------------------------------------------------------------------
def _run_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pydist", usage="pydist [-p N|auto] [--machine-file FILE] [-c CODE | -m MODULE | script.py] [args]\n"
                             "       pydist worker --join HOST:PORT [--cookie-file FILE]\n"
                             "       pydist status [--json] [CLUSTER]\n"
                             "       pydist docker prune [--all] [--dry-run]\n"
                             "       pydist demo [-p N] [-n DARTS]",
        description="Run a Python script with pydist workers already added (Julia: julia -p N). "
                    "Without a script: an interactive console. Subcommands: worker, status, "
                    "docker prune, demo (each with --help).")
    parser.add_argument("--version", action="version", version=f"pydist {version()}")
    parser.add_argument("-p", "--procs", metavar="N|auto",
                        help="start N local workers (auto: one per core)")
    parser.add_argument("--machine-file", metavar="FILE",
                        help="start SSH workers on the machines FILE lists, one "
                             "'[count*][user@]host[:port] [bind_addr]' per line")
    parser.add_argument("-c", dest="code", metavar="CODE", help="run CODE instead of a script")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run MODULE as a script")
    parser.add_argument("--no-status", action="store_true",
                        help="do not serve `pydist status` (see serve_status)")
    return parser


_TAKES_VALUE = {"-p", "--procs", "--machine-file", "-c", "-m"}


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options, and the rest: the script (or -c/-m's arguments) and its arguments."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[:i], argv[i + 1:]
        if arg in ("-c", "-m"):
            return argv[:i + 2], argv[i + 2:]
        if arg in _TAKES_VALUE:
            i += 2
        elif arg.startswith("-") and arg != "-":
            i += 1
        else:
            return argv[:i], argv[i:]
    return argv, []


def _procs(text: str) -> int:
    """-p's value: a number of workers >= 0, or 'auto' (one per core); ValueError otherwise."""
    if text == "auto":
        return os.cpu_count() or 1
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"-p expects a number of workers or 'auto', not {text!r}") from None
    if n < 0:
        raise ValueError(f"-p expects a number of workers >= 0, not {n}")
    return n


def _machines(path: str) -> list[tuple[str, int | str]] | None:
    """--machine-file's machines; a missing, unreadable or bad file is a usage error."""
    try:
        return parse_machine_file(path)
    except OSError as err:
        fail("pydist", f"--machine-file {path}: {err.strerror or err}")
    except UnicodeDecodeError:
        fail("pydist", f"--machine-file {path}: not a text file")
    except ValueError as err:                   # it names the file and the line
        fail("pydist", f"--machine-file {err}")


def _run(argv: list[str]) -> int:
    own, rest = _split_argv(argv)
    opts = _run_parser().parse_args(own)
    if opts.code is not None and opts.module is not None:
        fail("pydist", "give -c or -m, not both")
    try:
        procs = _procs(opts.procs) if opts.procs else 0
    except ValueError as err:
        fail("pydist", str(err))
    machines = _machines(opts.machine_file) if opts.machine_file else None

    # As python does: sys.argv and sys.path[0] first, so workers inherit the path on joining.
    if opts.code is not None:
        sys.argv, path0 = ["-c", *rest], ""
    elif opts.module is not None:
        sys.argv, path0 = [opts.module, *rest], os.getcwd()
    elif rest:
        script = rest[0]
        if not os.path.isfile(script):
            fail("pydist", f"can't open file {os.path.abspath(script)!r}: no such file")
        sys.argv, path0 = list(rest), os.path.dirname(os.path.abspath(script))
    else:
        sys.argv, path0 = [""], ""
    if sys.path:
        sys.path[0] = path0
    else:
        sys.path.insert(0, path0)

    from .cluster import addprocs, rmprocs
    from .errors import LaunchError
    added: list[int] = []
    try:
        try:
            if procs:
                added += addprocs(procs)
            if machines:
                added += addprocs(machines)
        except LaunchError as err:
            print(f"pydist: {err}", file=sys.stderr)
            return 1
        if not opts.no_status:
            try:
                serve_status()
            except OSError as err:
                print(f"pydist: `pydist status` will not see this cluster: {err}", file=sys.stderr)
        if opts.code is not None:
            module = types.ModuleType("__main__")
            module.__dict__["__builtins__"] = __builtins__
            sys.modules["__main__"] = module
            exec(compile(opts.code, "<string>", "exec"), module.__dict__)
        elif opts.module is not None:
            runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
        elif rest:
            runpy.run_path(rest[0], run_name="__main__")
        else:
            _interact(added)
    finally:
        stop_status()
        alive = [p for p in workers() if p != 1]
        if alive:
            try:
                rmprocs(*alive, waitfor=30)
            except Exception as err:
                print(f"pydist: removing workers {alive}: {err}", file=sys.stderr)
    return 0


def _interact(added: list[int]) -> None:
    import code
    try:
        __import__("readline")          # line editing and history in the console
    except ImportError:
        pass
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    exec("from pydist import *", module.__dict__)
    banner = (f"pydist {version()} (Python {sys.version.split()[0]}): workers {workers()} "
              "(from pydist import * done); Ctrl-D to quit")
    code.interact(banner=banner, local=module.__dict__, exitmsg="")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pydist` and `python -m pydist`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command == "worker":
        from .worker import main as worker_main
        worker_main(argv[1:], prog="pydist worker")   # serves until the master goes
        return 0
    if command == "status":
        return _status_command(argv[1:])
    if command == "docker":
        return _docker_command(argv[1:])
    if command == "demo":
        from .demo import main as demo_main
        return demo_main(argv[1:], prog="pydist demo")
    return _run(argv)


def _docker_command(argv: list[str]) -> int:
    """`pydist docker prune ...`: the Docker manager's own command (needs pydist[docker])."""
    try:
        from .managers.docker import main as docker_main
    except ImportError as err:
        print(f"pydist docker: {err}", file=sys.stderr)
        return 1
    return docker_main(argv, prog="pydist docker")


if __name__ == "__main__":
    # `python -m pydist.cli`: use the importable module, not this __main__ copy, so the
    # status functions travel to workers by reference and their state lives in one place.
    from pydist.cli import main as _main
    sys.exit(_main())
