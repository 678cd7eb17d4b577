"""Shared helpers: timing statistics, errors, process tracking, deadlines, versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import statistics
import sys
import threading
import time

import psutil

MB = 1e6  # the suite reports sizes in decimal units: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes
GB = 1e9

perf_counter = time.perf_counter


class BenchError(Exception):
    """A benchmark produced a wrong result or could not be measured honestly.

    Never caught silently: the peer's row for that case shows FAILED, the
    message is printed and the run exits non-zero."""


class CaseSkipped(Exception):
    """The peer has no equivalent of this operation (reported as n/a, not as a failure)."""


class Timeout(Exception):
    """A case exceeded its time limit (see ``deadline``)."""


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p99(xs):
    """Nearest-rank 99th percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def repeat_timed(step, warmup: int, min_reps: int, min_s: float, max_reps: int) -> list:
    """Run ``step()`` ``warmup`` times, then at least ``min_reps`` times and until ``min_s``
    seconds were measured (at most ``max_reps``): a fast operation gets enough runs for a
    stable median, a slow one no more than it needs.  ``step`` returns the tuple of seconds
    it measured; the list of the measured runs' tuples is returned."""
    for _ in range(warmup):
        step()
    runs, spent = [], 0.0
    while len(runs) < min_reps or (spent < min_s and len(runs) < max_reps):
        times = step()
        runs.append(times)
        spent += sum(times)
    return runs


def check(cond: bool, what: str) -> None:
    """Raise BenchError(what) unless cond: every result is checked, none assumed."""
    if not cond:
        raise BenchError(what)


# ---------------------------------------------------------------------------
# deadlines: a hung peer must not hang the whole suite


_deadline_state = threading.local()


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Interrupt the main thread (KeyboardInterrupt -> Timeout) after ``seconds``.

    The main thread gets a SIGINT, which breaks blocking waits, so a peer that
    hangs turns into a Timeout for that case only; the harness then stops the
    peer and kills what it left behind."""
    fired = threading.Event()
    main_ident = threading.main_thread().ident

    def fire():
        fired.set()
        # a real SIGINT aimed at the main thread: it also breaks a blocking
        # lock.acquire() or recv() (EINTR), which _thread.interrupt_main() does not
        signal.pthread_kill(main_ident, signal.SIGINT)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            raise Timeout(f"{what} did not finish within {seconds:.0f} s") from None
        raise
    finally:
        timer.cancel()


# ---------------------------------------------------------------------------
# processes: every peer must leave nothing behind


# Helpers that a library starts once per parent process and keeps, by design,
# until that parent exits (they are not workers and hold no work): the
# resource trackers of multiprocessing and loky.  They are reported, not killed.
# Children a library keeps for the session by design, not workers: multiprocessing's and
# loky's resource tracker, pydist's fork server (its workers, forked from it, carry the same
# command line, but are its children, not the master's).
PERSISTENT_HELPERS = ("resource_tracker", "pydist.worker --fork-server")


def _is_persistent_helper(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
        direct = p.ppid() == os.getpid()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return direct and any(h in cmd for h in PERSISTENT_HELPERS)


class ProcessTracker:
    """Remembers every descendant process seen while a peer runs.

    ``snapshot()`` is called while the peer is up (after start, after each case),
    so processes that a peer's daemon started and that were re-parented are still
    known by pid.  ``wait_gone()`` then checks that every one of them exited.
    Per-parent helpers (PERSISTENT_HELPERS) are set aside in ``helpers``.
    """

    def __init__(self):
        self.me = psutil.Process()
        self.baseline = {p.pid for p in self.me.children(recursive=True)}
        self.seen: dict[int, psutil.Process] = {}
        self.helpers: dict[int, str] = {}

    def snapshot(self) -> list[psutil.Process]:
        procs = []
        for p in self.me.children(recursive=True):
            if p.pid in self.baseline or p.pid in self.helpers:
                continue
            if _is_persistent_helper(p):
                self.helpers[p.pid] = " ".join(p.cmdline())[:120]
                continue
            self.seen.setdefault(p.pid, p)
            procs.append(p)
        return procs

    def alive(self) -> list[psutil.Process]:
        self.snapshot()  # picks up processes started since the last one
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def wait_gone(self, timeout: float = 30.0) -> list[str]:
        """Wait until every tracked process has exited; return descriptions of leftovers.

        Leftovers are killed afterwards (they are this process's own descendants)
        so that the next peer starts on a clean machine, and reported as an error."""
        end = time.monotonic() + timeout
        while True:
            left = self.alive()
            if not left:
                self.seen.clear()
                return []
            if time.monotonic() > end:
                break
            time.sleep(0.05)
        desc = []
        for p in left:
            try:
                desc.append(f"pid {p.pid} {' '.join(p.cmdline())[:120]!r}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        self.seen.clear()
        return desc


def _wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` (each is a sleep that ended in
    a wake-up); /proc/PID/status alone counts only the main thread."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile (its switches are lost: an undercount)
    return total


def cpu_snapshot() -> dict:
    """{pid: (CPU seconds, wake-ups)} of this process and every descendant (the peer's
    workers, schedulers and daemons), for ``cpu_per_unit``.  Taken outside timed regions."""
    me = psutil.Process()
    snap = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            snap[p.pid] = (t.user + t.system, _wakeups(p.pid))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, OSError):
            pass  # exited meanwhile
    return snap


def cpu_per_unit(before: dict, after: dict, units: int) -> dict:
    """Where the time of ``units`` tasks (or calls) went: CPU µs of the master and of all
    the peer's other processes, and wake-ups of all of them, per unit.  A process that
    started in between counts from its start; one that exited in between is missed."""
    me = os.getpid()
    d = {pid: (cpu - before.get(pid, (0.0, 0))[0], wk - before.get(pid, (0.0, 0))[1])
         for pid, (cpu, wk) in after.items()}
    return {
        "master_cpu_us": d.get(me, (0.0, 0))[0] / units * 1e6,
        "others_cpu_us": sum(c for pid, (c, _) in d.items() if pid != me) / units * 1e6,
        "wakeups": sum(w for _, w in d.values()) / units,
    }


def system_load() -> dict:
    """How busy the machine is besides us: load averages and a 0.5 s CPU sample."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()],
            "cpu_percent": psutil.cpu_percent(interval=0.5)}


def wait_quiet(max_wait_s: float, busy_percent: float = 25.0) -> dict:
    """Wait (at most max_wait_s) until the whole machine's CPU use is below busy_percent."""
    end = time.monotonic() + max_wait_s
    load = system_load()
    while load["cpu_percent"] >= busy_percent and time.monotonic() < end:
        time.sleep(1.0)
        load = system_load()
    return load


def rss_of(pids) -> dict:
    """RSS and USS (bytes) of each pid: RSS counts shared pages, USS only the process's own."""
    out = {}
    for pid in pids:
        p = psutil.Process(pid)
        try:
            full = p.memory_full_info()
            out[pid] = {"rss": full.rss, "uss": full.uss}
        except psutil.AccessDenied:
            out[pid] = {"rss": p.memory_info().rss, "uss": None}
    return out


def total_rss(procs) -> dict:
    """Summed RSS and USS of a list of psutil.Process (a peer's whole process tree)."""
    rss = uss = 0
    for p in procs:
        try:
            full = p.memory_full_info()
            rss += full.rss
            uss += full.uss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return {"rss": rss, "uss": uss, "nprocs": len(procs)}


# ---------------------------------------------------------------------------
# the machine and the versions


DISTRIBUTIONS = ["pydist", "cloudpickle", "numpy", "psutil", "loky", "dask", "distributed",
                 "ray", "ipyparallel", "pyzmq", "tornado", "msgpack"]


def version_of(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pydist_version():
    v = version_of("pydist")
    if v is not None:
        return v
    try:  # a source checkout that is not pip-installed
        import pydist
        return getattr(pydist, "__version__", "source checkout")
    except Exception:
        return None


def git_head(repo: str):
    """Short HEAD, with "+dirty" when pydist/ or managers/ differ from it (the code measured)."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "pydist", "managers"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return None
    return (head + ("+dirty" if dirty else "")) or None


def machine_info(repo: str) -> dict:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {d: version_of(d) for d in DISTRIBUTIONS}
    versions["pydist"] = pydist_version()
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "versions": versions,
        "git_head": git_head(repo),
        # settings that change what is measured: pydist's tuning knobs (shared memory, spin)
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("PYDIST_SHM", "PYDIST_SPIN", "PYDIST_FORK", "OPENBLAS_"))},
    }
