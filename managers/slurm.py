"""SlurmManager: workers are the tasks of a Slurm job and dial back to the master (worker connects).

How a worker starts.  From a login node or notebook, `addprocs(SlurmManager(n=8, ...))`
submits ONE batch job of n tasks (`job_script()` shows it).  The script exports the workers'
environment, runs the `prologue` lines, then one `srun` step whose every task runs

    python -m pydist.worker --join HEAD --cookie-file FILE --ident $SLURM_JOB_ID.<launch>.$SLURM_PROCID

(<launch> is a random id of the addprocs call: job ids repeat across clusters, idents must not.)
Inside an allocation (a script run by sbatch or salloc), `addprocs(SlurmManager())` with no
`n` runs that command as one step of SLURM_NTASKS tasks of the allocation, started by `srun`
from the master (the batch script itself), with the same ident.

Which side connects.  The worker: it dials the master's join listener (pydist.managers._join) at
`join_host` (default: the master's hostname) and authenticates with the cookie, which it
reads from a 0600 file in `output_dir` that the master writes before submitting and removes
when the job ends.  The cookie is never on a command line, in the script or in the
environment.  The job's output (every worker's stdout and stderr) goes to
`output_dir/pydist-<job id>.out`; it is not relayed to the master.

What kill and interrupt do.  `rmprocs` asks the worker to exit over its link (the core then
closes the link, which a worker never survives); its srun task ends and the others go on
(`srun --wait=0 --kill-on-bad-exit=0`).  When the last worker of a job is gone the job is
cancelled (`scancel`, or SIGTERM to the step's srun inside an allocation); so is every live
job when the master exits, and a master killed with SIGKILL loses its links, so its workers
exit and the job ends.  `interrupt` raises KeyboardInterrupt in the worker's running calls,
sent over the link; Slurm is not involved.

Scheduler traffic: one `squeue` call per poll for all of this process's Slurm jobs
(pydist.managers._jobs owns the only poll loop); `sbatch` once per addprocs; `scancel` once per job.
"""

from __future__ import annotations

import datetime
import os
import shlex
from typing import Sequence

from .base import (CommandError, JobManager, JobState, JobStatus, LocalLaunch, check_worker_count,
                   default_addprocs_params, export_lines as _exports, launch_status, run, stop_launches)

# squeue states in which the job has its resources and its tasks run (CONFIGURING: nodes
# still booting, so the launch timer has not started yet).
RUNNING_STATES = {"RUNNING"}
# States in which the job waits and may still start.
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                  "RESV_DEL_HOLD", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"}

# How long a scheduler command may take before it counts as failed: slurmctld answers in
# milliseconds, but a busy one can take seconds; a hung one must not hang addprocs.
COMMAND_TIMEOUT = 30.0

# The shell each task runs: name the worker after its job and task, then become the worker.
TASK_SHELL = 'exec "$@" --ident "{job}.$SLURM_PROCID"'


class SlurmManager(JobManager):
    """Workers as the tasks of a Slurm job (worker connects); see the module docstring.

    n: workers, i.e. tasks of one sbatch job; None inside an allocation: one per task of it
    (SLURM_NTASKS).  partition, time, cpus_per_task, mem, account, qos, job_name: the sbatch
    options of that name (None: the cluster's default).  sbatch_args: more `#SBATCH` options,
    e.g. ["--constraint=skylake"].  prologue: shell lines run before the workers start, e.g.
    ["module load python/3.11", "source ~/venv/bin/activate"].  output_dir: where the job's
    output file and the cookie file go (a directory the nodes share; default ~/.pydist/slurm).
    queue_timeout, worker_timeout, poll_interval, walltime_margin, join_host, join_port: see
    pydist.managers._jobs.JobManager."""

    job_kind = "Slurm job"
    submit_hint = ("fix the option sbatch names (partition=..., sbatch_args=[...], ...); "
                   "print(manager.job_script()) shows the script that was submitted")

    def __init__(self, n: int | None = None, *, partition: str | None = None,
                 time: str | None = "01:00:00", cpus_per_task: int | None = None,
                 mem: str | None = None, account: str | None = None, qos: str | None = None,
                 job_name: str = "pydist", sbatch_args: Sequence[str] = (),
                 prologue: Sequence[str] = (), output_dir: str | None = None,
                 queue_timeout: float = 3600.0, worker_timeout: float | None = None,
                 poll_interval: float = 5.0, walltime_margin: float | None = None,
                 join_host: str | None = None, join_port: int = 0):
        super().__init__(queue_timeout=queue_timeout, worker_timeout=worker_timeout,
                         poll_interval=poll_interval, walltime_margin=walltime_margin,
                         join_host=join_host, join_port=join_port)
        check_worker_count(n, "SLURM_JOB_ID" in os.environ,
                           "SlurmManager() without n starts one worker per task of the allocation "
                           "it runs in, and this process is not in one (no SLURM_JOB_ID). From a "
                           "login node, say how many workers to submit: "
                           "SlurmManager(n=8, time=\"01:00:00\", partition=\"debug\")")
        if isinstance(sbatch_args, str) or isinstance(prologue, str):
            raise TypeError("sbatch_args and prologue are lists of strings, one option or line each")
        self.n = n
        self.partition, self.time, self.cpus_per_task, self.mem = partition, time, cpus_per_task, mem
        self.account, self.qos, self.job_name = account, qos, job_name
        self.sbatch_args, self.prologue = list(sbatch_args), list(prologue)
        self.output_dir = os.path.abspath(os.path.expanduser(output_dir or "~/.pydist/slurm"))

    def __repr__(self) -> str:
        return f"SlurmManager(n={self.n}, partition={self.partition!r}, time={self.time!r})"

    # -- the spec: no I/O ------------------------------------------------------------------
    def worker_count(self) -> int:
        return self.n if self.n is not None else int(os.environ.get("SLURM_NTASKS", "1"))

    def job_script(self, n: int | None = None, head: str = "HOST:PORT", params: dict | None = None) -> str:
        """The batch script addprocs would submit (or, inside an allocation, the srun command),
        for printing and tests; no side effects.  `head` is known once the master listens."""
        spec = self.build_spec(n or self.worker_count(), params or default_addprocs_params(), head,
                               "LAUNCH")
        return spec if isinstance(spec, str) else shlex.join(spec.argvs[0]) + "\n"

    def build_spec(self, n: int, params: dict, head: str, launch_id: str) -> str | LocalLaunch:
        """A batch script for `n` workers dialing `head`, or inside an allocation an srun step."""
        argv = self.join_argv(params, head, launch_id)
        if self.in_allocation:
            return self._srun_step(n, params, argv, launch_id)
        options = {"job-name": self.job_name, "ntasks": n, "time": self.time,
                   "partition": self.partition, "cpus-per-task": self.cpus_per_task,
                   "mem": self.mem, "account": self.account, "qos": self.qos,
                   "output": os.path.join(self.output_dir, "pydist-%j.out"), "chdir": params["dir"]}
        lines = ["#!/bin/sh"]
        lines += [f"#SBATCH --{name}={value}" for name, value in options.items() if value is not None]
        lines += [f"#SBATCH {arg}" for arg in self.sbatch_args]
        lines += ["# pydist workers: every task dials the master and joins it (worker connects).",
                  "# The cookie is read from a 0600 file the master writes; it is never in this script."]
        lines += _exports(params)
        lines += self.prologue
        lines.append(shlex.join([*self._srun_options(), "/bin/sh", "-c",
                                 TASK_SHELL.format(job=f"$SLURM_JOB_ID.{launch_id}"), "pydist-worker", *argv]))
        # The master removes the cookie file when the job ends; this covers a master that was
        # killed (its workers exit when its links drop, so srun returns here).
        lines.append(shlex.join(["rm", "-f", "--", self.cookie_file(launch_id)]))
        lines.append("")
        return "\n".join(lines)

    def _srun_options(self) -> list[str]:
        # --wait=0 and --kill-on-bad-exit=0: a worker that leaves (rmprocs) or fails must not
        # end its siblings (a site's WaitTime would otherwise kill them after that many seconds).
        # Slurm 22.05's srun ignores sbatch's --cpus-per-task, so it is repeated here.
        cpus = self.cpus_per_task or (os.environ.get("SLURM_CPUS_PER_TASK") if self.in_allocation
                                      else None)
        return ["srun", "--wait=0", "--kill-on-bad-exit=0",
                *([f"--cpus-per-task={cpus}"] if cpus else [])]

    def _srun_step(self, n: int, params: dict, argv: list[str], launch_id: str) -> LocalLaunch:
        # --overlap: the step starts even if an earlier step (another addprocs) holds the CPUs.
        key = f"{os.environ.get('SLURM_JOB_ID', 'JOBID')}.{launch_id}"
        shell = "\n".join([*_exports(params), *self.prologue, TASK_SHELL.format(job=key)])
        command = [*self._srun_options(), f"--ntasks={n}", "--overlap", f"--chdir={params['dir']}",
                   f"--job-name={self.job_name}", "/bin/sh", "-c", shell, key, *argv]
        return LocalLaunch([command], key, os.path.join(self.output_dir, f"pydist-{key}.out"))

    # -- scheduler commands -----------------------------------------------------------------
    def submit(self, spec: str) -> str:
        out = run(["sbatch", "--parsable"], input=spec, timeout=COMMAND_TIMEOUT)
        return out.strip().splitlines()[-1].split(";")[0].strip()

    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        batch = [j for j in job_ids if not _is_step(j)]
        steps = [j for j in job_ids if _is_step(j)]       # key: <allocation>.<launch>
        found = _squeue(sorted({*batch, *(key.partition(".")[0] for key in steps)})) if job_ids else {}
        statuses = {j: found.get(j, JobStatus(JobState.ENDED, "no longer in the queue")) for j in batch}
        for key in steps:
            allocation = found.get(key.partition(".")[0])
            statuses[key] = launch_status(key, allocation.end_time if allocation else None)
        return statuses

    def cancel(self, job_ids: list[str]) -> None:
        stop_launches(job_ids, COMMAND_TIMEOUT)      # SIGTERM to srun cancels its step
        batch = [j for j in job_ids if not _is_step(j)]
        if batch:
            run(["scancel", *batch], timeout=COMMAND_TIMEOUT)



def _is_step(job_id: str) -> bool:
    """Step keys are `<allocation>.<launch>`; sbatch ids have no dot."""
    return "." in job_id


def _squeue(job_ids: list[str]) -> dict[str, JobStatus]:
    """One squeue call: state, reason and end time of each job still known to slurmctld."""
    try:
        out = run(["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(job_ids),
                   "--format=%i|%T|%r|%e"], timeout=COMMAND_TIMEOUT)
    except CommandError as err:
        if "Invalid job id" in (err.stderr or ""):     # every id is gone from slurmctld's memory
            return {}
        raise
    found = {}
    for line in out.splitlines():
        job_id, state, reason, end = (line.split("|") + ["", "", ""])[:4]
        reason = "" if reason in ("None", "(null)") else reason
        if state in RUNNING_STATES:
            found[job_id] = JobStatus(JobState.RUNNING, reason, _epoch(end))
        elif state in WAITING_STATES:
            found[job_id] = JobStatus(JobState.PENDING, reason if state == "PENDING" else
                                      f"{state}{', ' + reason if reason else ''}")
        else:
            found[job_id] = JobStatus(JobState.ENDED, f"{state}{', ' + reason if reason else ''}")
    return found


def _epoch(text: str) -> float | None:
    """squeue's %e ("2026-11-26T17:00:01", local time) as epoch seconds; None for N/A etc."""
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None
