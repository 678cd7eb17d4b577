"""The `pydist` command, also `python -m pydist` (Julia: `julia -p N`, `--machine-file`,
`--worker`).

    pydist -p 4 script.py [args]           run script.py as __main__ with 4 local workers added
    pydist --machine-file hosts script.py  ... with SSH workers from a Julia-style machine file
    pydist -p 2 -c "code" | -m module      like python -c / -m; no script: an interactive console
    pydist worker --join HOST:PORT [--cookie-file F]   a worker that joins a master
    pydist -p 4 --dashboard script.py      ... and serve the web dashboard (prints its URL)
    pydist status [--json] [--address URL] [CLUSTER]   the workers of this user's clusters
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

Status and dashboard.  Every master serves `pydist status` (pydist.status); `pydist status`
itself is `pydist.status.status_command`.  `--dashboard` also serves the web dashboard
(pydist.web) and prints its URL.
"""

from __future__ import annotations

import os
import runpy
import sys
import types

from . import settings
from ._args import ArgumentParser, fail, version
from .process import workers
from .status import serve_status

__all__ = ["main", "parse_machine_file", "parse_machine_line"]

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


# -- `pydist [options] script.py` -------------------------------------------------------------------
def _run_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pydist", usage="pydist [-p N|auto] [--machine-file FILE] [-c CODE | -m MODULE | script.py] [args]\n"
                             "       pydist worker --join HOST:PORT [--cookie-file FILE]\n"
                             "       pydist status [--json] [--address URL] [CLUSTER]\n"
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
                        help="do not serve `pydist status` (as PYDIST_STATUS=0)")
    parser.add_argument("--dashboard", action="store_true",
                        help="serve the web dashboard on 127.0.0.1 and print its URL (pydist.web)")
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

    from .cluster import addprocs
    from .removal import rmprocs
    from .errors import LaunchError
    if opts.no_status:
        settings.STATUS = False
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
        if opts.dashboard:
            from .web import dashboard
            dashboard()
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
        from .status import status_command
        return status_command(argv[1:])
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
