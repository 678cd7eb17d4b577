"""What every batch-system manager (SlurmManager, SGEManager) must do, written once: test_slurm.py,
test_sge.py and test_slurm_multinode.py call these bodies against their real scheduler, through
a `Batch` that says how to list, cancel and configure jobs there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import remove_all_workers, wait_until

from pydist import LaunchError, addprocs, cluster_cookie, myid, remotecall, remotecall_fetch, rmprocs, workers
from pydist.managers.base import write_secret

POLL_PERIOD = 0.5       # how often the tests' own waits ask the scheduler


@dataclasses.dataclass
class Batch:
    """One scheduler, as these tests see it, with one test's job name and output directory."""
    manager_class: type
    list_jobs: Callable[[str], list[str]]   # ids of the jobs of that name the scheduler still lists
    cancel: str                             # the command that cancels jobs by id: scancel, qdel
    job_id_variable: str                    # a worker's job id in its environment
    settings: dict                          # the manager settings every test of the file uses
    name: str = dataclasses.field(default_factory=lambda: f"pydist-test-{secrets.token_hex(3)}")

    def manager(self, **options):
        return self.manager_class(**{**self.settings, "job_name": self.name, **options})

    def jobs(self) -> list[str]:
        return self.list_jobs(self.name)

    def wait_until_gone(self, what: str, timeout: float = 30) -> None:
        wait_until(lambda: not self.jobs(), timeout, what, POLL_PERIOD)


@contextlib.contextmanager
def leaves_nothing_behind(batch: Batch, output_dir: Path) -> Iterator[Batch]:
    """Around a test: afterwards no job under its name is left, no worker in the cluster and
    no cookie file in `output_dir`."""
    remove_all_workers()
    yield batch
    remove_all_workers()
    try:        # a job being cancelled is still listed for a moment
        batch.wait_until_gone(f"the jobs named {batch.name} to leave the queue")
    except AssertionError:
        left = batch.jobs()
        subprocess.run([batch.cancel, *left], capture_output=True, timeout=30)
        raise AssertionError(f"the test left jobs {left} behind (now cancelled)") from None
    assert not list(output_dir.glob("*.cookie")), "a cookie file was left behind"


def job_outlives_a_removed_worker_until_the_last_one_goes(batch: Batch) -> None:
    first, second = addprocs(batch.manager(n=2))
    rmprocs(first).wait(30)
    assert remotecall_fetch(myid, second) == second       # its task still runs
    assert batch.jobs()
    rmprocs(second).wait(30)
    batch.wait_until_gone("the job to leave the queue after its last worker")


def cancelled_job_is_replaced_by_a_new_job_with_restart(batch: Batch) -> None:
    [first] = addprocs(batch.manager(n=1), restart=True)
    [job] = batch.jobs()
    subprocess.run([batch.cancel, job], check=True, capture_output=True, timeout=30)
    [second] = wait_until(lambda: [p for p in workers() if p not in (1, first)] or None, 60,
                          "a replacement job's worker")
    [new_job] = wait_until(lambda: [j for j in batch.jobs() if j != job] or None, 30, "the new job",
                           POLL_PERIOD)
    assert remotecall_fetch(lambda var: os.environ[var], second, batch.job_id_variable) == new_job


MASTER = """
import json, os, signal, sys
from pydist import addprocs
from pydist import managers
addprocs(getattr(managers, sys.argv[2])(n=1, **json.loads(sys.argv[3])))
print("ready", flush=True)
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)      # no atexit: the workers notice the lost link
"""


def job_ends_within_30_s_when_the_master_exits(batch: Batch, how: str, output_dir: Path) -> None:
    settings = {**batch.settings, "job_name": batch.name}
    master = subprocess.run([sys.executable, "-c", MASTER, how, batch.manager_class.__name__,
                             json.dumps(settings)], capture_output=True, text=True, timeout=90)
    assert "ready" in master.stdout, master.stderr
    batch.wait_until_gone(f"the job to end after the master's {how}")
    wait_until(lambda: not list(output_dir.glob("*.cookie")), 5, "the job's cookie file to be removed")


def job_pending_past_queue_timeout_is_cancelled(batch: Batch, reason: str, **never_starts) -> None:
    with pytest.raises(LaunchError, match=rf"stayed pending \({reason}\) for 3 s and was cancelled"):
        addprocs(batch.manager(n=1, queue_timeout=3, **never_starts))
    assert not batch.jobs()


def workers_failing_at_start_show_the_tail_of_the_jobs_output(batch: Batch, options: dict, addprocs_kw: dict,
                                                               shown: str) -> None:
    with pytest.raises(LaunchError, match="the job ended .* before they joined") as caught:
        addprocs(batch.manager(n=1, **options), **addprocs_kw)
    assert shown in str(caught.value)
    assert not batch.jobs()


def workers_are_removed_walltime_margin_seconds_before_the_limit(batch: Batch, caplog, **one_minute) -> None:
    caplog.set_level(logging.WARNING, logger="pydist")
    # A 1-minute job whose margin is 55 s: its worker is removed about 5 s after it starts.
    [pid] = addprocs(batch.manager(n=1, walltime_margin=55, **one_minute))
    running = remotecall(lambda: (__import__("time").sleep(8), "finished")[1], pid)
    wait_until(lambda: pid not in workers(), 40, f"worker {pid} to be removed at the walltime margin",
               POLL_PERIOD)
    assert running.fetch() == "finished"          # the call it was running was let finish
    batch.wait_until_gone("the job to be cancelled after its worker left")
    assert "reaches its time limit" in caplog.text


DRIVER = """
import json, os, sys
from pydist import addprocs, managers, myid, pmap, remotecall_fetch, rmprocs
manager_class, job_variable, result, output_dir = sys.argv[1:5]
ids = addprocs(getattr(managers, manager_class)(join_host="127.0.0.1", output_dir=output_dir, poll_interval=0.5))
got = {"ids": ids, "squares": pmap(lambda x: x * x, range(6)),
       "jobs": [remotecall_fetch(lambda: os.environ[job_variable], p) for p in ids],
       "peer": remotecall_fetch(lambda p: remotecall_fetch(myid, p), ids[0], ids[-1]),
       "master_job": os.environ[job_variable]}
rmprocs(*ids).wait(30)
with open(result, "w") as f:
    json.dump(got, f)
"""


def manager_inside_a_job_starts_one_worker_per_task(batch: Batch, output_dir: Path, submit: list[str]) -> None:
    """`submit` (sbatch/qsub options and the deploy driver script, asking for 2 tasks) runs
    DRIVER as the master of a job, which starts a worker per task of it with no `n`."""
    (output_dir / "driver.py").write_text(DRIVER)
    result = output_dir / "result.json"
    job = subprocess.run(
        [*submit, str(output_dir / "driver.py"), batch.manager_class.__name__, batch.job_id_variable,
         str(result), str(output_dir)],
        env={**os.environ, "PYDIST_PYTHON": sys.executable}, capture_output=True, text=True,
        timeout=30, check=True).stdout.strip()
    batch.wait_until_gone(f"driver job {job} to finish", 60)
    output = "".join(p.read_text() for p in output_dir.glob("*.out"))
    assert result.exists(), f"the driver wrote no result; its output:\n{output}"
    got = json.loads(result.read_text())
    assert got["ids"] == [2, 3] and got["peer"] == 3
    assert got["squares"] == [0, 1, 4, 9, 16, 25]
    assert got["jobs"] == [job, job] == [got["master_job"]] * 2


def worker_array_joins_an_elastic_master(batch: Batch, output_dir: Path, submit: list[str], host: str,
                                         task_variable: str, tasks: list[str], array_job_variable: str,
                                         python: str = sys.executable, **submit_env: str) -> list[int]:
    """`submit` (the deploy workers script as a 2-task array) joins an ElasticManager listening
    on `host`; returns the workers' ids."""
    from pydist.managers.elastic import ElasticManager
    elastic = ElasticManager(n=2, host=host, port=0, timeout=60)
    cookie = output_dir / "elastic-cookie.txt"
    write_secret(str(cookie), cluster_cookie())      # mode 0600, as the script asks
    env = {**os.environ, "PYDIST_HEAD": f"{host}:{elastic.address[1]}", "PYDIST_COOKIE_FILE": str(cookie),
           "PYDIST_PYTHON": python, **submit_env}
    job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=30,
                         check=True).stdout.strip().split(".")[0]     # qsub -terse: 12.1-2:1
    ids = addprocs(elastic)
    assert sorted(remotecall_fetch(lambda var: os.environ[var], p, task_variable) for p in ids) == tasks
    assert remotecall_fetch(lambda var: os.environ[var], ids[0], array_job_variable) == job
    found = [remotecall_fetch(socket.gethostname, p) for p in ids]
    rmprocs(*ids).wait(30)
    batch.wait_until_gone(f"array job {job} to end after rmprocs")
    return found
