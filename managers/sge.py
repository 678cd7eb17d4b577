"""SGEManager: workers are the tasks of a Grid Engine job and dial back to the master (worker connects).

From a login node, `addprocs(SGEManager(n=8, queue="all.q", walltime="01:00:00"))` submits ONE
array job of n tasks (`job_script()` shows it); task t runs

    python -m pydist.worker --join HEAD --cookie-file FILE --ident $JOB_ID.<launch>.<t - 1>

(<launch> is a random id of the addprocs call: job ids repeat across clusters, idents must not.)

Inside a parallel job (`qsub -pe NAME N script`), `addprocs(SGEManager())` with no `n` starts one
worker per slot of $PE_HOSTFILE (NSLOTS in all), each by `qrsh -inherit HOST`: Grid Engine starts,
accounts and kills them as part of the job (the PE needs `control_slaves TRUE`).  Their ident
is `$JOB_ID.<launch>.<task>`.

qsub passes no environment by itself: the script exports the master's PYDIST_* settings (as
DockerManager does) and addprocs's `env`.  As with SlurmManager (pydist.managers._jobs has the
shared launch): the cookie is read from a 0600 file in `output_dir`, the tasks' output goes to
`output_dir/pydist-<job>.out`, the job is deleted (`qdel`; SIGTERM to the qrsh calls inside a
job) when its last worker goes or the master exits, and `walltime_margin` retires the workers
before `h_rt` runs out.  One `qstat -xml` call per poll, for all of this process's Grid Engine
jobs.
"""

from __future__ import annotations

import datetime
import os
import shlex
import xml.etree.ElementTree as ET
from typing import Sequence

from .base import (CommandError, JobManager, JobState, JobStatus, LocalLaunch, check_worker_count,
                   default_addprocs_params, export_lines, forwarded_env, launch_status, run, stop_launches)

COMMAND_TIMEOUT = 30.0      # qmaster answers in milliseconds; a hung one must not hang addprocs
# qstat's state letters: E error (never starts by itself), d being deleted, r/t running.
ENDED_LETTERS, RUNNING_LETTERS = set("Ed"), set("rt")


class SGEManager(JobManager):
    """Workers as the tasks of a Grid Engine array job, or the slots of the parallel job the
    master runs in (n=None); see the module docstring.  queue, project, walltime (h_rt),
    resource_spec (qsub -l, e.g. "h_vmem=4G"), job_name: the qsub options.  qsub_args: more
    `#$` lines, one option with its values each, e.g. ["-pe smp 4"].  prologue: shell lines
    run before each worker.  output_dir: a directory the nodes share (default ~/.pydist/sge).
    The rest: see JobManager."""

    job_kind = "Grid Engine job"
    submit_hint = ("fix the option qsub names (queue=..., qsub_args=[...], ...); "
                   "print(manager.job_script()) shows the script that was submitted")
    pending_hint = "ask for less, pick another queue=..., or raise queue_timeout"

    def __init__(self, n: int | None = None, *, queue: str | None = None, project: str | None = None,
                 walltime: str | None = "01:00:00", resource_spec: str | None = None,
                 job_name: str = "pydist", qsub_args: Sequence[str] = (), prologue: Sequence[str] = (),
                 output_dir: str | None = None, queue_timeout: float = 3600.0,
                 worker_timeout: float | None = None, poll_interval: float = 5.0,
                 walltime_margin: float | None = None, join_host: str | None = None, join_port: int = 0):
        super().__init__(queue_timeout=queue_timeout, worker_timeout=worker_timeout,
                         poll_interval=poll_interval, walltime_margin=walltime_margin,
                         join_host=join_host, join_port=join_port)
        self.n = check_worker_count(n, "PE_HOSTFILE" in os.environ,
                                    "SGEManager() without n starts one worker per slot of the parallel job "
                                    "it runs in, and this process is not in one (no PE_HOSTFILE). From a login "
                                    'node, say how many workers to submit: SGEManager(n=8, walltime="01:00:00")')
        self.queue, self.project, self.walltime, self.resource_spec = queue, project, walltime, resource_spec
        self.job_name, self.qsub_args, self.prologue = job_name, list(qsub_args), list(prologue)
        self.output_dir = os.path.abspath(os.path.expanduser(output_dir or "~/.pydist/sge"))

    def worker_count(self) -> int:
        return self.n if self.n is not None else int(os.environ.get("NSLOTS", "1"))

    def job_script(self, n: int | None = None, head: str = "HOST:PORT", params: dict | None = None) -> str:
        """The script addprocs would submit (inside a job: the qrsh commands); no side effects."""
        spec = self.build_spec(n or self.worker_count(), params or default_addprocs_params(), head, "LAUNCH")
        return spec if isinstance(spec, str) else "".join(shlex.join(a) + "\n" for a in spec.argvs)

    def build_spec(self, n: int, params: dict, head: str, launch_id: str) -> str | LocalLaunch:
        """An array job's script for `n` workers dialing `head`; inside a parallel job, one
        `qrsh -inherit` per slot."""
        argv = self.join_argv(params, head, launch_id)
        if self.in_allocation:
            return self._qrsh_launch(n, params, argv, launch_id)
        options = [("-N", self.job_name), ("-t", f"1-{n}"), ("-q", self.queue), ("-P", self.project),
                   ("-l", self.walltime and f"h_rt={self.walltime}"), ("-l", self.resource_spec),
                   ("-o", os.path.join(self.output_dir, "pydist-$JOB_ID.out")), ("-wd", params["dir"])]
        lines = ["#!/bin/sh", "#$ -S /bin/sh", "#$ -j y", *(f"#$ {o} {v}" for o, v in options if v),
                 *(f"#$ {arg}" for arg in self.qsub_args), *export_lines(params, forwarded_env()), *self.prologue,
                 f'{shlex.join(argv)} --ident "$JOB_ID.{launch_id}.$((SGE_TASK_ID - 1))"',
                 # for a master that was killed: its workers exit when its links drop
                 shlex.join(["rm", "-f", "--", self.cookie_file(launch_id)]), ""]
        return "\n".join(lines)

    def _qrsh_launch(self, n: int, params: dict, argv: list[str], launch_id: str) -> LocalLaunch:
        # qrsh -inherit hands its command to a shell on the host, as ssh does: one quoted string.
        key = f"{os.environ.get('JOB_ID', 'JOB_ID')}.{launch_id}"
        slots = [host for host, count in _pe_hosts() for _ in range(count)][:n]
        setup = [*export_lines(params, forwarded_env()), f"cd {shlex.quote(params['dir'])}", *self.prologue]
        shells = [shlex.join(["/bin/sh", "-c", "; ".join([*setup, f"exec {shlex.join(argv)} --ident {key}.{task}"])])
                  for task in range(len(slots))]
        return LocalLaunch([["qrsh", "-inherit", "-nostdin", host, shell] for host, shell in zip(slots, shells)],
                           key, os.path.join(self.output_dir, f"pydist-{key}.out"))

    def submit(self, spec: str) -> str:
        return run(["qsub", "-terse"], input=spec, timeout=COMMAND_TIMEOUT).strip().split(".")[0]

    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        found, statuses = _qstat(), {}
        for j in job_ids:
            if "." in j:      # a launch inside job <id>: its qrsh calls run until that job's h_rt
                job = found.get(j.partition(".")[0])
                statuses[j] = launch_status(j, job.end_time if job else None)
            else:
                statuses[j] = found.get(j, JobStatus(JobState.ENDED, "no longer in qstat"))
        return statuses

    def cancel(self, job_ids: list[str]) -> None:
        stop_launches(job_ids, COMMAND_TIMEOUT)        # SIGTERM to qrsh ends its remote task
        jobs = [j for j in job_ids if "." not in j]
        try:
            if jobs:
                run(["qdel", *jobs], timeout=COMMAND_TIMEOUT)
        except CommandError as err:      # a job that already ended "does not exist"
            if "does not exist" not in str(err):
                raise


def _pe_hosts() -> list[tuple[str, int]]:
    """$PE_HOSTFILE's (host, slots) lines: the slots this parallel job was granted."""
    with open(os.environ["PE_HOSTFILE"]) as f:
        return [(w[0], int(w[1])) for w in (line.split() for line in f) if len(w) > 1]


def _qstat() -> dict[str, JobStatus]:
    """One `qstat -xml` call: every job of this user still known to qmaster.  An array job is
    PENDING while any task waits (worker_timeout starts once every task runs), ENDED in an
    error state (Eqw: it would never start)."""
    root = ET.fromstring(run(["qstat", "-xml", "-r"], timeout=COMMAND_TIMEOUT))
    entries: dict[str, list[ET.Element]] = {}
    for e in root.iter("job_list"):
        entries.setdefault(e.findtext("JB_job_number", ""), []).append(e)
    found = {}
    for job, tasks in entries.items():
        states = [t.findtext("state", "") for t in tasks]
        if any(ENDED_LETTERS & set(s) for s in states):
            found[job] = JobStatus(JobState.ENDED, f"state {'/'.join(states)}{_error_reason(job, states)}")
        elif all(RUNNING_LETTERS & set(s) for s in states):
            ends = [end for end in map(_end_time, tasks) if end is not None]
            found[job] = JobStatus(JobState.RUNNING, "", min(ends, default=None))
        else:
            found[job] = JobStatus(JobState.PENDING, f"state {'/'.join(states)}: qstat -j {job} says why")
    return found


def _error_reason(job: str, states: list[str]) -> str:
    """For a job in error state (Eqw), the reason `qstat -j` gives: one more call, made once,
    since the launch then fails (e.g. "can't chdir to /x: No such file or directory")."""
    if not any("E" in state for state in states):
        return ""
    text = run(["qstat", "-j", job], timeout=COMMAND_TIMEOUT)
    return "".join(f": {line.split(']:', 1)[-1].strip()}" for line in text.splitlines()
                   if line.startswith("error reason"))


def _end_time(task: ET.Element) -> float | None:
    """When a running task's h_rt runs out (epoch seconds); None without h_rt."""
    start = task.findtext("JAT_start_time", "").split(".")[0]
    limit = next((r.text for r in task.iter("hard_request") if r.get("name") == "h_rt"), None)
    if not start or limit is None:
        return None
    return datetime.datetime.strptime(start, "%Y-%m-%dT%H:%M:%S").timestamp() + float(limit)
