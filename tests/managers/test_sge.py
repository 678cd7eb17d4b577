"""SGEManager and the deploy/sge scripts, on a real Grid Engine (.ci/sge.sh: qmaster and execd on
this host, queue all.q, parallel environment "pydist").

The job_script() tests need no Grid Engine.  The others carry @pytest.mark.sge; each submits
jobs under a job name of its own and its teardown deletes whatever is left under that name,
waits until qstat no longer lists it, and checks that no cookie file is left behind.
Workers dial 127.0.0.1 only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import batch_contract as contract
from batch_contract import Batch, leaves_nothing_behind
from infra import require, sge_running      # tests/ is on sys.path (no tests/__init__.py)

from pydist import (LaunchError, addprocs, cluster_cookie, default_addprocs_params, myid, pmap, remotecall_fetch,
                    rmprocs, workers)
from pydist.managers import SGEManager

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "sge"
PE = "pydist"           # the parallel environment .ci/sge.sh makes


def qstat_ids(job_name: str) -> list[str]:
    """Ids of this user's jobs named `job_name` that qmaster still lists (any state)."""
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, timeout=30, check=True).stdout
    return sorted({e.findtext("JB_job_number") for e in ET.fromstring(out).iter("job_list")
                   if e.findtext("JB_name") == job_name})


# -- job_script(): no Grid Engine needed -----------------------------------------------------
@pytest.mark.parametrize("options, line", [
    ({"queue": "short.q"}, "#$ -q short.q"),
    ({"project": "proj42"}, "#$ -P proj42"),
    ({"walltime": "00:10:00"}, "#$ -l h_rt=00:10:00"),
    ({"resource_spec": "h_vmem=4G"}, "#$ -l h_vmem=4G"),
    ({"job_name": "sweep"}, "#$ -N sweep"),
    ({"qsub_args": ["-pe smp 4", "-R y"]}, "#$ -pe smp 4"),
    ({"prologue": ["module load python/3.11"]}, "module load python/3.11"),
])
def test_job_script_carries_each_option(options, line):
    assert line in SGEManager(n=2, **options).job_script().splitlines()


def test_job_script_is_one_array_job_of_n_workers_that_join_the_master(tmp_path):
    lines = SGEManager(n=3, output_dir=str(tmp_path)).job_script(head="login1:4242").splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "#$ -t 1-3" in lines
    assert f"#$ -o {tmp_path}/pydist-$JOB_ID.out" in lines
    [worker] = [ln for ln in lines if "pydist.worker" in ln]
    assert f"{sys.executable} -m pydist.worker --join login1:4242 --cookie-file {tmp_path}/" in worker
    assert worker.endswith('--ident "$JOB_ID.LAUNCH.$((SGE_TASK_ID - 1))"')


def test_job_script_runs_the_prologue_and_exports_before_the_worker():
    params = {**default_addprocs_params(), "env": {"MY_SETTING": "a b"}}
    lines = SGEManager(n=1, prologue=["echo hi"]).job_script(params=params).splitlines()
    worker = next(i for i, ln in enumerate(lines) if "pydist.worker" in ln)
    assert lines.index("echo hi") < worker and lines.index("export MY_SETTING='a b'") < worker


def test_job_script_exports_the_masters_pydist_settings_but_no_secret(monkeypatch):
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "42")
    monkeypatch.setenv("PYDIST_COOKIE", "secret")
    lines = SGEManager(n=1).job_script().splitlines()
    assert "export PYDIST_WORKER_TIMEOUT=42" in lines
    assert not [ln for ln in lines if "PYDIST_COOKIE" in ln]


def test_job_script_never_contains_the_cookie():
    script = SGEManager(n=2).job_script()
    assert cluster_cookie() not in script and "--cookie-file" in script


def test_inside_a_parallel_job_one_qrsh_inherit_per_slot(monkeypatch, tmp_path):
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text("node1 2 all.q@node1 UNDEFINED\nnode2 1 all.q@node2 UNDEFINED\n")
    monkeypatch.setenv("PE_HOSTFILE", str(hostfile))
    monkeypatch.setenv("NSLOTS", "3")
    monkeypatch.setenv("JOB_ID", "77")
    commands = SGEManager().job_script().splitlines()
    assert [c.split()[:4] for c in commands] == [["qrsh", "-inherit", "-nostdin", h]
                                                 for h in ("node1", "node1", "node2")]
    assert [c.count(f"--ident 77.LAUNCH.{t}") for t, c in enumerate(commands)] == [1, 1, 1]


def test_sge_manager_without_n_outside_a_parallel_job_says_what_to_pass(monkeypatch):
    monkeypatch.delenv("PE_HOSTFILE", raising=False)
    with pytest.raises(ValueError, match=r"SGEManager\(n=8"):
        SGEManager()


# -- real Grid Engine ------------------------------------------------------------------------
@pytest.fixture
def sge(tmp_path):
    """A job name and output directory of this test's own (batch_contract.leaves_nothing_behind)."""
    require(sge_running(), "Grid Engine is not running (bash .ci/sge.sh start)")
    batch = Batch(SGEManager, qstat_ids, "qdel", "JOB_ID",
                  dict(join_host="127.0.0.1", output_dir=str(tmp_path), walltime="00:05:00",
                       poll_interval=0.5, queue_timeout=60, worker_timeout=30))
    with leaves_nothing_behind(batch, tmp_path):
        yield batch, tmp_path


@pytest.mark.sge
def test_sge_workers_compute_call_each_other_and_rmprocs_deletes_the_job(sge):
    batch, tmp = sge
    ids = addprocs(batch.manager(n=2))
    assert len(ids) == 2 and workers() == ids
    [job] = batch.jobs()
    cookie = next(tmp.glob("*.cookie"))
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600
    assert pmap(lambda x: x * x, range(8)) == [x * x for x in range(8)]
    tasks = sorted(remotecall_fetch(lambda: (os.environ["JOB_ID"], os.environ["SGE_TASK_ID"]), p) for p in ids)
    assert tasks == [(job, "1"), (job, "2")]
    assert remotecall_fetch(lambda peer: remotecall_fetch(myid, peer), ids[0], ids[1]) == ids[1]
    rmprocs(*ids).wait(30)
    batch.wait_until_gone(f"job {job} to leave qstat after rmprocs")
    assert not cookie.exists()


@pytest.mark.sge
def test_a_worker_whose_job_is_deleted_is_replaced_by_a_new_job_with_restart(sge):
    contract.cancelled_job_is_replaced_by_a_new_job_with_restart(sge[0])


@pytest.mark.sge
def test_sge_job_outlives_a_removed_worker_until_the_last_one_goes(sge):
    contract.job_outlives_a_removed_worker_until_the_last_one_goes(sge[0])


@pytest.mark.sge
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_sge_job_ends_within_30_s_when_the_master_exits(sge, how):
    batch, tmp = sge
    contract.job_ends_within_30_s_when_the_master_exits(batch, how, tmp)


@pytest.mark.sge
def test_sge_manager_inside_a_parallel_job_starts_one_worker_per_slot(sge):
    batch, tmp = sge
    contract.manager_inside_a_job_starts_one_worker_per_task(batch, tmp, [
        "qsub", "-terse", "-pe", PE, "2", "-N", batch.name, "-o", f"{tmp}/driver-$JOB_ID.out",
        str(DEPLOY / "driver.sh")])


@pytest.mark.sge
def test_worker_array_joins_an_elastic_master(sge):
    batch, tmp = sge
    contract.worker_array_joins_an_elastic_master(
        batch, tmp, ["qsub", "-terse", "-t", "1-2", "-N", batch.name, "-o", f"{tmp}/workers.out",
                     str(DEPLOY / "workers.sh")], "127.0.0.1", "SGE_TASK_ID", ["1", "2"], "JOB_ID")


@pytest.mark.sge
def test_unknown_queue_fails_with_qsubs_message(sge):
    with pytest.raises(LaunchError, match="no-such-queue") as caught:
        addprocs(sge[0].manager(n=1, queue="no-such-queue"))
    assert caught.value.added == []
    assert "job_script()" in str(caught.value)


@pytest.mark.sge
def test_job_that_never_starts_is_deleted_after_queue_timeout_with_its_state(sge):
    contract.job_pending_past_queue_timeout_is_cancelled(sge[0], r"state hqw: qstat -j \d+ says why",
                                                          qsub_args=["-h"])     # -h: held, never runs


@pytest.mark.sge
@pytest.mark.parametrize("options, addprocs_kw, shown", [
    ({"prologue": ["echo prologue-ran", "exit 3"]}, {}, "prologue-ran"),
    ({}, {"exename": "/nonexistent/python3"}, "/nonexistent/python3: not found"),
])
def test_workers_failing_at_start_show_the_tail_of_the_jobs_output(sge, options, addprocs_kw, shown):
    contract.workers_failing_at_start_show_the_tail_of_the_jobs_output(sge[0], options, addprocs_kw, shown)


@pytest.mark.sge
def test_job_in_error_state_fails_at_once_with_grid_engines_reason(sge):
    batch, _tmp = sge
    with pytest.raises(LaunchError, match=r"ended \(state Eqw: error: can't chdir to /nonexistent/dir"):
        addprocs(batch.manager(n=1), dir="/nonexistent/dir")      # -wd: the job cannot start
    assert not batch.jobs()


@pytest.mark.sge
def test_workers_are_removed_walltime_margin_seconds_before_h_rt(sge, caplog):
    contract.workers_are_removed_walltime_margin_seconds_before_the_limit(sge[0], caplog, walltime="00:01:00")
