"""SlurmManager and the deploy/slurm scripts, on a real Slurm (the local single-node set-up).

The job_script() tests need no Slurm.  The others carry @pytest.mark.slurm; each submits
jobs under a job name of its own and its teardown cancels whatever is left under that name,
waits until squeue no longer lists it, and checks that no cookie file is left behind.
Workers dial 127.0.0.1 only.  The node has 2 CPUs, so no test asks for more than 2 tasks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import batch_contract as contract
from batch_contract import Batch, leaves_nothing_behind
from conftest import wait_until
from infra import require, slurm_running      # tests/ is on sys.path (no tests/__init__.py)

from pydist.managers.elastic import ElasticManager
from pydist.managers.slurm import SlurmManager
import pydist.removal
from pydist import (LaunchError, addprocs, cluster_cookie, default_addprocs_params, myid, pmap, remotecall_fetch,
                    rmprocs, workers)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "slurm"


def squeue_ids(job_name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return out.split()


# -- job_script(): no Slurm needed -------------------------------------------------------------
@pytest.mark.parametrize("options, line", [
    ({"partition": "gpu"}, "#SBATCH --partition=gpu"),
    ({"time": "00:10:00"}, "#SBATCH --time=00:10:00"),
    ({"cpus_per_task": 4}, "#SBATCH --cpus-per-task=4"),
    ({"mem": "2G"}, "#SBATCH --mem=2G"),
    ({"account": "proj42"}, "#SBATCH --account=proj42"),
    ({"qos": "short"}, "#SBATCH --qos=short"),
    ({"job_name": "sweep"}, "#SBATCH --job-name=sweep"),
    ({"sbatch_args": ["--constraint=skylake", "--exclusive"]}, "#SBATCH --constraint=skylake"),
    ({"sbatch_args": ["--constraint=skylake", "--exclusive"]}, "#SBATCH --exclusive"),
    ({"prologue": ["module load python/3.11"]}, "module load python/3.11"),
])
def test_job_script_carries_each_option(options, line):
    assert line in SlurmManager(n=2, **options).job_script().splitlines()


def test_job_script_runs_one_srun_step_of_n_workers_that_join_the_master(tmp_path):
    script = SlurmManager(n=3, output_dir=str(tmp_path)).job_script(head="login1:4242")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "#SBATCH --ntasks=3" in lines
    assert f"#SBATCH --output={tmp_path}/pydist-%j.out" in lines
    srun = [ln for ln in lines if ln.startswith("srun ")]
    assert len(srun) == 1
    assert "--wait=0" in srun[0] and "--kill-on-bad-exit=0" in srun[0]
    assert f"{sys.executable} -m pydist.worker --join login1:4242 --cookie-file {tmp_path}/" in srun[0]
    assert '--ident "$SLURM_JOB_ID.LAUNCH.$SLURM_PROCID"' in srun[0]


def test_job_script_runs_the_prologue_before_the_workers():
    lines = SlurmManager(n=1, prologue=["source ~/venv/bin/activate"]).job_script().splitlines()
    srun = next(i for i, ln in enumerate(lines) if ln.startswith("srun "))
    assert lines.index("source ~/venv/bin/activate") < srun


def test_job_script_repeats_cpus_per_task_for_srun():
    srun = next(ln for ln in SlurmManager(n=1, cpus_per_task=2).job_script().splitlines()
                if ln.startswith("srun "))
    assert "--cpus-per-task=2" in srun


def test_job_script_never_contains_the_cookie():
    script = SlurmManager(n=2, prologue=["echo hi"]).job_script()
    assert cluster_cookie() not in script
    assert "--cookie-file" in script


def test_job_script_exports_the_workers_environment():
    params = {**default_addprocs_params(), "env": {"MY_SETTING": "a b"}}
    lines = SlurmManager(n=1).job_script(params=params).splitlines()
    assert "export MY_SETTING='a b'" in lines
    assert "export OMP_NUM_THREADS=1" in lines


def test_job_script_inside_an_allocation_is_one_srun_step_of_all_tasks(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_NTASKS", "6")
    command = SlurmManager().job_script()
    assert command.startswith("srun ")
    assert "--ntasks=6" in command and "--overlap" in command
    assert "777." in command and "sbatch" not in command


def test_slurm_manager_without_n_outside_an_allocation_says_what_to_pass(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ValueError, match=r"SlurmManager\(n=8"):
        SlurmManager()


# -- real Slurm --------------------------------------------------------------------------------
@pytest.fixture
def slurm(tmp_path):
    """A job name and output directory of this test's own (batch_contract.leaves_nothing_behind)."""
    require(slurm_running(), "Slurm is not running (bash .ci/slurm.sh start)")
    batch = Batch(SlurmManager, squeue_ids, "scancel", "SLURM_JOB_ID",
                  dict(join_host="127.0.0.1", output_dir=str(tmp_path), time="5", poll_interval=0.5,
                       queue_timeout=60, worker_timeout=30))
    with leaves_nothing_behind(batch, tmp_path):
        yield batch, tmp_path


def manager(slurm, **options) -> SlurmManager:
    return slurm[0].manager(**options)


@pytest.mark.slurm
def test_slurm_workers_compute_call_each_other_and_rmprocs_cancels_the_job(slurm):
    batch, tmp = slurm
    ids = addprocs(manager(slurm, n=2))
    assert len(ids) == 2 and workers() == ids
    [job] = batch.jobs()
    cookie = next(tmp.glob("*.cookie"))
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600
    assert pmap(lambda x: x * x, range(8)) == [x * x for x in range(8)]
    assert remotecall_fetch(lambda: os.environ["SLURM_JOB_ID"], ids[0]) == job
    assert remotecall_fetch(lambda peer: remotecall_fetch(myid, peer), ids[0], ids[1]) == ids[1]
    rmprocs(*ids).wait(30)
    batch.wait_until_gone(f"job {job} to leave squeue after rmprocs")
    assert not cookie.exists()


@pytest.mark.slurm
def test_a_worker_named_like_a_job_this_master_ran_can_still_join_an_elastic_master(slurm):
    """Job ids repeat across clusters (the multi-node one's start again at 1): a worker started
    elsewhere as `<job>.<task>` of a job this master once launched is not taken for its late worker."""
    batch, _tmp = slurm
    [pid] = addprocs(manager(slurm, n=1))
    job = remotecall_fetch(lambda: os.environ["SLURM_JOB_ID"], pid)
    rmprocs(pid).wait(30)
    batch.wait_until_gone(f"job {job} to leave squeue after rmprocs")
    elastic = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=30)
    worker = subprocess.Popen([sys.executable, "-m", "pydist.worker", "--join", f"127.0.0.1:{elastic.address[1]}",
                               "--ident", f"{job}.0"], stdin=subprocess.PIPE, text=True)
    worker.stdin.write(cluster_cookie() + "\n")
    worker.stdin.close()
    try:
        [joined] = addprocs(elastic)
        assert remotecall_fetch(os.getpid, joined) == worker.pid
        rmprocs(joined).wait(30)
    finally:
        elastic.stop()
        worker.wait(30)


@pytest.mark.slurm
def test_a_worker_whose_job_is_cancelled_is_replaced_by_a_new_job_with_restart(slurm):
    contract.cancelled_job_is_replaced_by_a_new_job_with_restart(slurm[0])


def test_slurm_manager_inside_an_allocation_refuses_restart(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(TypeError, match="inside an allocation cannot start a replacement"):
        addprocs(SlurmManager(), restart=True)


@pytest.mark.slurm
def test_slurm_job_outlives_a_removed_worker_until_the_last_one_goes(slurm):
    contract.job_outlives_a_removed_worker_until_the_last_one_goes(slurm[0])


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_slurm_job_ends_within_30_s_when_the_master_exits(slurm, how):
    batch, tmp = slurm
    contract.job_ends_within_30_s_when_the_master_exits(batch, how, tmp)


@pytest.mark.slurm
def test_slurm_manager_inside_an_allocation_starts_one_worker_per_task(slurm):
    batch, tmp = slurm
    contract.manager_inside_a_job_starts_one_worker_per_task(batch, tmp, [
        "sbatch", "--parsable", "--ntasks=2", "--time=5", f"--job-name={batch.name}",
        f"--output={tmp}/driver-%j.out", str(DEPLOY / "driver.sbatch")])


@pytest.mark.slurm
def test_worker_array_joins_an_elastic_master(slurm):
    batch, tmp = slurm
    contract.worker_array_joins_an_elastic_master(
        batch, tmp, ["sbatch", "--parsable", "--array=0-1", "--time=5", f"--job-name={batch.name}",
                     f"--output={tmp}/workers-%A_%a.out", str(DEPLOY / "workers.sbatch")],
        "127.0.0.1", "SLURM_ARRAY_TASK_ID", ["0", "1"], "SLURM_ARRAY_JOB_ID")


@pytest.mark.slurm
def test_invalid_partition_fails_with_sbatchs_message(slurm):
    with pytest.raises(LaunchError, match="invalid partition") as caught:
        addprocs(manager(slurm, n=1, partition="no-such-partition"))
    assert caught.value.added == []
    assert "job_script()" in str(caught.value)


@pytest.mark.slurm
def test_job_pending_past_queue_timeout_is_cancelled_with_its_reason(slurm):
    contract.job_pending_past_queue_timeout_is_cancelled(slurm[0], "BeginTime", sbatch_args=["--begin=now+1hour"])


@pytest.mark.slurm
@pytest.mark.parametrize("options, addprocs_kw, shown", [
    ({"prologue": ["echo prologue-ran", "exit 3"]}, {}, "prologue-ran"),
    ({}, {"exename": "/nonexistent/python3"}, "/nonexistent/python3: not found"),
])
def test_workers_failing_at_start_show_the_tail_of_the_jobs_output(slurm, options, addprocs_kw, shown):
    contract.workers_failing_at_start_show_the_tail_of_the_jobs_output(slurm[0], options, addprocs_kw, shown)


@pytest.mark.slurm
def test_workers_are_removed_walltime_margin_seconds_before_the_time_limit(slurm, caplog):
    contract.workers_are_removed_walltime_margin_seconds_before_the_limit(slurm[0], caplog, time="1")


@pytest.mark.slurm
def test_walltime_margin_removes_all_of_a_jobs_workers_with_one_rmprocs(slurm, monkeypatch):
    calls = []

    def recorded(*pids, **kw):
        calls.append(pids)
        return rmprocs(*pids, **kw)

    monkeypatch.setattr(pydist.removal, "rmprocs", recorded)   # retire_workers looks it up there
    ids = addprocs(manager(slurm, n=2, time="1", walltime_margin=55))
    wait_until(lambda: not set(ids) & set(workers()), 40, f"workers {ids} to be removed at the walltime margin", 0.5)
    assert calls == [(sorted(ids),)]
