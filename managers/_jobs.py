"""What batch-system managers share: submit a job, watch it, await its workers' joins, cancel it.

A backend (Slurm, Grid Engine, PBS: one job of n tasks per launch; a backend that makes one
resource per worker subclasses _join.ResourceManager instead) subclasses `JobManager` and
writes only what differs (STYLE.md §3):

    worker_count() -> n                              how many workers the next launch starts
    build_spec(n, params, head, launch_id) -> spec   the job, built without I/O
    submit(spec) -> job_id                           hand it to the scheduler
    poll(job_ids) -> {job_id: JobStatus}             ONE scheduler call for all the ids
                                                     (JobStatus/JobState: _join's Status/State)
    cancel(job_ids)                                  safe to repeat, also for ended jobs
    output_tail(job_id) -> str                       optional: the end of the job's output
    cookie_file(launch_id) -> path | None            optional: where the job reads the cookie
    output_dir                                       where both are by default (pydist-*.out/.cookie)

Inside a job (a Slurm allocation, a Grid Engine parallel job) the spec is a `LocalLaunch`: the
launcher commands (srun, qrsh -inherit) this process runs; the base starts them instead of
calling submit, and the backend's poll and cancel use launch_status and stop_launches
(pydist.managers._launches).

How one launch goes (`JobManager.launch`, on addprocs's `pydist-launch` thread):

1. Open the master's join listener (pydist.managers._listener) and, if the backend wants one, write
   the cookie to a 0600 file the job can read.  Build the spec and submit it: one job of n tasks.
2. Wait for joins (`_join.Joins`).  Every worker of the job is `python -m pydist.worker --join
   HEAD` with the ident `<job_id>.<launch>.<task>`, so each offer maps to its launch, job and
   task (the random launch id keeps idents apart across clusters whose job ids repeat); offers of
   a launch that is over (a cancelled launch's late workers) are refused.  The watcher
   reports the job's state to the launch:
   * PENDING longer than `queue_timeout` (counted from submission): cancel, LaunchError with
     the scheduler's pending reason;
   * RUNNING: `worker_timeout` counts from the first poll that saw it running, not from
     submission, so time spent in the queue never fails a launch;
   * ended before every task joined: LaunchError with the tail of the job's output.
   A launch in which no worker joined cancels its job.
3. Afterwards a job lives as long as its workers: when the last one is deregistered (rmprocs,
   or it died) the job is cancelled at once; at master exit every live job is cancelled
   (atexit), and the workers exit on their own when their master link drops.

Walltime: with `walltime_margin` set, the watcher keeps reading the job's end time and, once
`walltime_margin` seconds are left, retires the job's workers (a warning is logged): the
default pool lends them no more work, the calls they run may finish during the first half of
the margin, then they are removed together (one rmprocs) — so they leave cleanly before the
scheduler kills them.

Threads: `pydist-jobs-poll`, the watcher, is started by the first job and owned by this
module; it sleeps on `_lock` until the next job is due, then makes one `poll` call per backend
class for all of that backend's watched jobs.  It is the only code that polls a scheduler.
`pydist-retire-<job_id>`, started by the watcher when a job reaches its walltime margin,
retires that job's workers and ends once its rmprocs call is made.
"""

from __future__ import annotations

import abc
import atexit
import collections
import copy
import dataclasses
import logging
import math
import os
import secrets
import shlex
import threading
import time
from typing import Any

from pydist import LaunchError, WorkerConfig, cluster_cookie
from pydist.manager import retire_workers

from ._base import CommandError, worker_argv, worker_env
from ._join import OUTPUT_TAIL_LINES, DialInManager, Joins, State, Status
from ._launches import LocalLaunch, start_launch

log = logging.getLogger("pydist")

# After a launch, a job that needs watching (walltime_margin set) is polled at least this
# often: rarely enough to put no load on the scheduler, often enough to notice a changed
# time limit well before a margin of minutes runs out.
WALLTIME_POLL_INTERVAL = 60.0

# The names backends use (JobStatus(JobState.RUNNING, ...)): the states of any resource.
JobState, JobStatus = State, Status
__all__ = ["JobManager", "JobState", "JobStatus", "OUTPUT_TAIL_LINES", "write_secret", "check_worker_count",
           "export_lines"]


@dataclasses.dataclass(eq=False)
class _Job:
    """One submitted job.  Fields below `ntasks` are guarded by `_lock`."""
    manager: "JobManager"
    job_id: str
    prefix: str                             # its workers' idents are `<prefix>.<task>`
    ntasks: int
    cookie_file: str | None
    joins: Joins | None                     # its launch's wait, None once the launch is over
    status: JobStatus = JobStatus(JobState.PENDING)
    launching: bool = True                  # its launch is still awaiting joins
    pids: set[int] = dataclasses.field(default_factory=set)   # its registered workers
    next_poll: float = 0.0                  # monotonic; math.inf: not watched
    retiring: bool = False                  # walltime margin reached, workers being removed


_lock = threading.Condition()     # guards every _Job's mutable fields, _live, _watcher_started
_live: dict[tuple[int, str], _Job] = {}          # (id(manager), prefix) -> job, until it ends
_watcher_started = False


class JobManager(DialInManager):
    """Workers are the tasks of one batch job per addprocs call; they dial the master's join
    listener (worker connects).  Subclasses implement the scheduler commands.

    Settings every backend has: `queue_timeout` (seconds a job may pend), `worker_timeout`
    (seconds from RUNNING until every task joined; None: addprocs's worker_timeout),
    `poll_interval` (seconds between scheduler polls while a launch waits), `walltime_margin`
    (seconds before the walltime at which workers are removed; None: never), `join_host`
    and `join_port` (where workers dial; see `head`)."""

    job_kind = "batch job"        # how errors name a job: "Slurm job 123"
    submit_hint = "check the option the scheduler names"    # next step after a refused job
    pending_hint = "ask for fewer resources or less time, pick another partition=..., or raise queue_timeout"
    no_output_hint = "check that the nodes can run the worker command"
    output_dir: str | None = None    # job output and cookie files: a directory the nodes share

    def __init__(self, *, queue_timeout: float, worker_timeout: float | None, poll_interval: float,
                 walltime_margin: float | None, join_host: str | None, join_port: int):
        for name, value in (("queue_timeout", queue_timeout), ("poll_interval", poll_interval)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, not {value!r}")
        self.queue_timeout = float(queue_timeout)
        self.worker_timeout = worker_timeout
        self.poll_interval = float(poll_interval)
        self.walltime_margin = walltime_margin
        self.join_host = join_host
        self.join_port = int(join_port)

    n: int | None = 1                # workers per launch; None: the tasks of the enclosing job

    @property
    def in_allocation(self) -> bool:
        """True when launches start workers in the job this master runs in instead of submitting."""
        return self.n is None

    @property
    def pending_timeout(self) -> float:      # what Joins reads
        return self.queue_timeout

    def replacement(self, config: WorkerConfig) -> "JobManager":
        """A job of one worker with this manager's settings, submitted anew, to replace a
        worker that died (`addprocs(..., restart=True)`). A manager that runs inside an
        allocation (no `n`) cannot: the allocation's tasks are fixed."""
        if self.in_allocation:
            raise TypeError(f"{type(self).__name__}() inside an allocation cannot start a replacement "
                            "for a worker that died (restart=True): its tasks are the allocation's. "
                            f"Give it n=... to submit jobs of its own from here instead")
        twin = copy.copy(self)
        twin.n = 1
        return twin

    # -- what a backend writes ------------------------------------------------------------
    @abc.abstractmethod
    def worker_count(self) -> int:
        """How many workers the next launch starts."""

    @abc.abstractmethod
    def build_spec(self, n: int, params: dict, head: str, launch_id: str) -> Any:
        """The job that starts `n` workers dialing `head` ("host:port"); no I/O.  Each worker's
        ident must be `<job_id>.<launch_id>.<task>` for the job id `submit` returns, task in
        0..n-1 (a LocalLaunch's: `<its key>.<task>`, its key being `<job id>.<launch_id>`)."""

    @abc.abstractmethod
    def submit(self, spec: Any) -> str:
        """Submit the job; returns its id.  Raises CommandError with the scheduler's message."""

    @abc.abstractmethod
    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """The state of each job, in one scheduler call; a job left out counts as unknown
        (its previous state stands).  Must not depend on this instance's settings: the
        watcher polls all jobs of a backend class through one of its instances."""

    @abc.abstractmethod
    def cancel(self, job_ids: list[str]) -> None:
        """Cancel the jobs; no error for jobs that already ended."""

    def output_tail(self, job_id: str) -> str:
        """The last lines of the job's output, for error messages ("" if unknown); by default
        of `output_dir/pydist-<job_id>.out`."""
        return _file_tail(os.path.join(self.output_dir, f"pydist-{job_id}.out")) if self.output_dir else ""

    def name(self, rid: str) -> str:
        return f"{self.job_kind} {rid}"

    def logs(self, rid: str) -> str:
        return self.output_tail(rid)

    def cookie_file(self, launch_id: str) -> str | None:
        """Where this launch's job reads the cookie from; None if the backend passes it
        another way.  The base writes it (0600) before submitting and removes it with the job.
        By default `output_dir/pydist-<launch_id>.cookie`."""
        return os.path.join(self.output_dir, f"pydist-{launch_id}.cookie") if self.output_dir else None

    # -- ClusterManager -------------------------------------------------------------------
    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """register/deregister keep the job's worker set; the last deregister cancels the job.
        interrupt and finalize need nothing: the core sends both over the worker's link."""
        job = self._job_of(config.ident)
        if job is None:
            return
        with _lock:
            if op == "register":
                job.pids.add(pid)
                return
            if op != "deregister":
                return
            job.pids.discard(pid)
            last = not job.pids and not job.launching
        if last:
            _end(job, f"its last worker ({pid}) is gone")

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Submit one job of worker_count() workers and hand each one that joins to the core;
        raises LaunchError (listing the tasks that did not join) when the job pends too long,
        ends, or does not bring all its workers within worker_timeout of starting."""
        n = self.worker_count()
        listener = self.listener()
        head = self.head(listener)
        launch_id = secrets.token_hex(4)
        spec = self.build_spec(n, params, head, launch_id)
        cookie = self.cookie_file(launch_id)
        if cookie is not None:
            write_secret(cookie, cluster_cookie())
        try:
            job_id = start_launch(spec) if isinstance(spec, LocalLaunch) else self.submit(spec)
        except CommandError as err:
            _remove(cookie)
            raise LaunchError([(f"{self.job_kind} for {n} workers",
                                f"submission failed: {err}\n{self.submit_hint}")]) from err
        joins = Joins(self, listener, head, params, launched, notify)
        prefix = spec.key if isinstance(spec, LocalLaunch) else f"{job_id}.{launch_id}"
        joins.expect(job_id, [f"{prefix}.{task}" for task in range(n)])
        job = _Job(self, job_id, prefix, n, cookie, joins)
        with _lock:
            _live[_key(job)] = job
        log.info("pydist: submitted %s %s for %d workers joining %s", self.job_kind, job_id, n, head)
        _watch(job, time.monotonic())
        try:
            failures = joins.run()
        finally:
            joins.close()
            with _lock:
                job.launching, job.joins = False, None
            _watch(job, time.monotonic())     # keeps watching only for the walltime margin
            if joins.joined(job_id) == 0:     # also after a failure: nothing is left behind
                _end(job, "no worker joined")
        if failures:
            raise LaunchError(failures)

    def join_argv(self, params: dict, head: str, launch_id: str) -> list[str]:
        """The command of one worker of this launch: dial `head`, read the cookie file, give up
        after worker_timeout (the ident is added by the job's task shell)."""
        timeout = self.worker_timeout or params.get("worker_timeout")
        return worker_argv(params, "--join", head, "--cookie-file", self.cookie_file(launch_id),
                           *(["--join-timeout", f"{float(timeout):g}"] if timeout else []))

    def _job_of(self, ident: Any) -> _Job | None:
        with _lock:
            return _live.get((id(self), _owner_of(str(ident))))


# -- the watcher ------------------------------------------------------------------------------
def _watch(job: _Job, now: float) -> None:
    """(Re)schedule `job`'s next poll, or stop watching it; wakes the watcher."""
    global _watcher_started
    with _lock:
        job.next_poll = _next_poll(job, now)
        if not _watcher_started and job.next_poll < math.inf:
            threading.Thread(target=_watcher, name="pydist-jobs-poll", daemon=True).start()
            _watcher_started = True
        _lock.notify_all()


def _next_poll(job: _Job, now: float) -> float:
    """Called with _lock held.  While launching: every poll_interval.  Afterwards, only with a
    walltime margin: at the margin, and at least every WALLTIME_POLL_INTERVAL."""
    if _key(job) not in _live:
        return math.inf
    if job.launching:
        return now + job.manager.poll_interval
    margin = job.manager.walltime_margin
    if margin is None or job.retiring or job.status.state is JobState.ENDED:
        return math.inf
    if job.status.state is JobState.PENDING:   # its workers joined before a poll saw it run
        return now + job.manager.poll_interval
    due = now + max(WALLTIME_POLL_INTERVAL, job.manager.poll_interval)
    if job.status.end_time is not None:
        due = min(due, now + max(job.status.end_time - margin - time.time(), 0.0))
    return due


def _watcher() -> None:
    while True:
        with _lock:
            while True:
                now = time.monotonic()
                due = min((j.next_poll for j in _live.values()), default=math.inf)
                if due <= now:
                    break
                _lock.wait(None if due == math.inf else due - now)
            # Every watched job of a backend rides along with the due one: one call per backend.
            batches: dict[type, list[_Job]] = collections.defaultdict(list)
            for job in _live.values():
                if job.next_poll < math.inf:
                    batches[type(job.manager)].append(job)
            for jobs in batches.values():
                for job in jobs:
                    job.next_poll = math.inf        # until rescheduled below
        for jobs in batches.values():
            try:
                _poll_batch(jobs)
            except Exception:       # the one poll loop must survive anything a backend does
                log.exception("pydist: polling %s jobs failed", jobs[0].manager.job_kind)


def _poll_batch(jobs: list[_Job]) -> None:
    try:
        statuses = jobs[0].manager.poll([job.job_id for job in jobs])
    except Exception as err:                    # the scheduler may be briefly unreachable
        log.warning("pydist: polling %s jobs %s failed (will retry): %s", jobs[0].manager.job_kind,
                    ", ".join(job.job_id for job in jobs), err)
        statuses = {}
    now, retire, reports = time.monotonic(), [], []
    with _lock:
        for job in jobs:
            status = statuses.get(job.job_id)
            if status is not None:
                job.status = status
                if job.joins is not None:
                    reports.append((job.joins, job.job_id, status))
            margin = job.manager.walltime_margin
            end = job.status.end_time
            if (margin is not None and end is not None and not job.launching and not job.retiring
                    and job.pids and time.time() >= end - margin):
                job.retiring = True
                retire.append((job, sorted(job.pids), end))
            job.next_poll = _next_poll(job, now)
        _lock.notify_all()
    for joins, job_id, status in reports:
        if status.state is JobState.ENDED:
            status = JobStatus(JobState.ENDED, f"the job ended ({status.reason or 'no reason given'}) "
                               "before they joined")
        joins.report(job_id, status)
    for job, pids, end in retire:
        log.warning("pydist: %s %s reaches its time limit in %.0f s (walltime_margin=%.0f): removing "
                    "its workers %s", job.manager.job_kind, job.job_id, max(end - time.time(), 0),
                    job.manager.walltime_margin, pids)
        threading.Thread(target=retire_workers, args=(pids, job.manager.walltime_margin / 2),
                         name=f"pydist-retire-{job.job_id}", daemon=True).start()


# -- ending jobs ----------------------------------------------------------------------------
def _end(job: _Job, why: str) -> None:
    """Cancel `job` (harmless if it already ended), remove its cookie file, forget it."""
    with _lock:
        if _live.pop(_key(job), None) is None:
            return
        job.next_poll = math.inf
    # The cookie file goes first: it only serves starting workers, and this may run on a
    # daemon thread (a reader's exit hook) that the interpreter's exit cuts short.
    _remove(job.cookie_file)
    log.info("pydist: cancelling %s %s: %s", job.manager.job_kind, job.job_id, why)
    try:
        job.manager.cancel([job.job_id])
    except Exception as err:
        log.warning("pydist: could not cancel %s %s: %s; cancel it by hand", job.manager.job_kind,
                    job.job_id, err)


@atexit.register
def _end_all() -> None:
    """At master exit: cancel every job still alive (its workers exit anyway once the master's
    links close; this also ends jobs still pending or starting)."""
    with _lock:
        jobs = list(_live.values())
    for job in jobs:
        _end(job, "the master is exiting")


# -- helpers --------------------------------------------------------------------------------
def _owner_of(ident: str) -> str:
    """The prefix of a worker ident `<prefix>.<task>`."""
    return ident.rpartition(".")[0]


def _key(job: _Job) -> tuple[int, str]:
    return id(job.manager), job.prefix


def write_secret(path: str, text: str) -> None:
    """Write `text` to a new file readable by its owner only (0600), in a 0700 directory if
    the directory has to be made.  The file is written under a temporary name and renamed,
    so a reader never sees it half written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    partial = f"{path}.{secrets.token_hex(4)}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def check_worker_count(n: int | None, in_job: bool, without_n: str) -> int | None:
    """A manager's `n`: a number of workers >= 1, or None (one per task or slot of the job
    this process runs in) only when `in_job`; else ValueError, `without_n` when n is missing."""
    if n is None and not in_job:
        raise ValueError(without_n)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a number of workers >= 1, not {n!r}")
    return n


def export_lines(params: dict, inherited: dict[str, str] | None = None) -> list[str]:
    """`export NAME=value` lines for a job script: the workers' environment (never the cookie),
    after `inherited` (variables of the master's that a scheduler does not pass on by itself)."""
    lines = []
    for name, value in {**(inherited or {}), **worker_env(params)}.items():
        if not name.isidentifier():
            raise ValueError(f"env: {name!r} is not a valid environment variable name")
        lines.append(f"export {name}={shlex.quote(value)}")
    return lines


def _file_tail(path: str) -> str:
    """The last OUTPUT_TAIL_LINES lines of a job's output file, under its path ("" if none)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join([f"({path})", *lines[-OUTPUT_TAIL_LINES:]]) if lines else ""


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

