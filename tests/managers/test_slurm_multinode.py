"""SlurmManager on a Slurm of three containers (.ci/slurm-multinode.sh): slurmctld in one, two
slurmd nodes (mn-node1, mn-node2) in the others, on a private Docker network.  This host is the
login node: the tests' own process is the master, its Slurm client reaches the controller
through SLURM_CONF (the host's single-node Slurm stays as it is), and the workers dial it at the
network's gateway.  Job output and cookie files go to a directory mounted on both nodes.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import batch_contract as contract
from batch_contract import Batch, leaves_nothing_behind
from conftest import wait_until
from infra import (SLURM_MN_CONF, SLURM_MN_GATEWAY, SLURM_MN_NODES, SLURM_MN_PYTHON, SLURM_MN_SHARED,
                   require, slurm_multinode_running)

from pydist import (ProcessExitedException, addprocs, myid, remotecall_fetch, rmprocs,
                    workers)
from pydist.managers import SlurmManager

pytestmark = pytest.mark.slurm_multinode
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "slurm"


def squeue_ids(job_name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return out.split()


def on_node(node: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", f"pydist-{node}", *argv], capture_output=True, text=True,
                          timeout=30)


def worker_processes(node: str) -> str:
    """The node's pydist worker processes, as `ps` lines ("" if none)."""
    ps = on_node(node, "ps", "-eo", "pid,args").stdout.splitlines()
    return "\n".join(line for line in ps if "pydist.worker" in line)


@pytest.fixture
def mn(monkeypatch):
    """The host's Slurm client pointed at the containers' controller, a job name and an output
    directory both nodes share (batch_contract.leaves_nothing_behind; the directory goes after)."""
    require(slurm_multinode_running(), "the multi-node Slurm in containers (bash .ci/slurm-multinode.sh start)")
    monkeypatch.setenv("SLURM_CONF", str(SLURM_MN_CONF))
    batch = Batch(SlurmManager, squeue_ids, "scancel", "SLURM_JOB_ID", {})
    shared = SLURM_MN_SHARED / batch.name
    shared.mkdir(mode=0o700)
    batch.settings = dict(join_host=SLURM_MN_GATEWAY, output_dir=str(shared), time="5", poll_interval=0.5,
                          queue_timeout=60, worker_timeout=60)
    with leaves_nothing_behind(batch, shared):
        yield batch, shared
    shutil.rmtree(shared)


def launch_on_both_nodes(mn) -> dict[int, str]:
    """Four workers, two per node, from the login node: {pid: node}."""
    batch, shared = mn
    ids = addprocs(batch.manager(n=4, sbatch_args=["--nodes=2", "--ntasks-per-node=2"]),
                   exename=SLURM_MN_PYTHON, dir=str(shared))
    return {p: remotecall_fetch(socket.gethostname, p) for p in ids}


def test_login_node_manager_places_workers_on_both_nodes(mn):
    batch, _shared = mn
    hosts = launch_on_both_nodes(mn)
    assert collections.Counter(hosts.values()) == {node: 2 for node in SLURM_MN_NODES}
    first = next(p for p, h in hosts.items() if h == SLURM_MN_NODES[0])
    second = next(p for p, h in hosts.items() if h == SLURM_MN_NODES[1])
    # worker to worker, across the nodes' network
    assert remotecall_fetch(lambda peer: remotecall_fetch(myid, peer), first, second) == second
    [job] = batch.jobs()
    rmprocs(*hosts).wait(30)
    batch.wait_until_gone(f"job {job} to leave squeue after rmprocs")


DRIVER = """
import collections, json, os, socket, subprocess, sys
from pydist import addprocs, myid, pmap, remotecall_fetch, rmprocs
from pydist.managers import SlurmManager
ids = addprocs(SlurmManager(output_dir=sys.argv[2], poll_interval=0.5))
job = os.environ["SLURM_JOB_ID"]
steps = subprocess.run(["squeue", "-h", "-s", "-j", job, "-o", "%i"], capture_output=True,
                       text=True, check=True).stdout.split()
result = {"ids": ids, "master": socket.gethostname(),
          "hosts": collections.Counter(remotecall_fetch(socket.gethostname, p) for p in ids),
          "steps": [s for s in steps if s.split(".")[-1].isdigit()],
          "jobs": sorted({remotecall_fetch(lambda: os.environ["SLURM_JOB_ID"], p) for p in ids}),
          "peer": remotecall_fetch(lambda p: remotecall_fetch(myid, p), ids[0], ids[-1]),
          "squares": pmap(lambda x: x * x, range(6))}
rmprocs(*ids).wait(30)
with open(sys.argv[1], "w") as f:
    json.dump(result, f)
"""


def test_inside_a_two_node_allocation_one_srun_step_starts_a_worker_per_task(mn):
    batch, shared = mn
    name = batch.name
    (shared / "driver.py").write_text(DRIVER)
    result = shared / "result.json"
    job = subprocess.run(          # deploy/slurm/driver.sbatch as shipped
        ["sbatch", "--parsable", "--nodes=2", "--ntasks=4", "--time=5", f"--job-name={name}",
         f"--chdir={shared}", f"--output={shared}/driver-%j.out", str(DEPLOY / "driver.sbatch"),
         str(shared / "driver.py"), str(result), str(shared)],
        env={**os.environ, "PYDIST_PYTHON": SLURM_MN_PYTHON}, capture_output=True, text=True,
        timeout=30, check=True).stdout.strip()
    batch.wait_until_gone(f"driver job {job} to finish", 120)
    output = "".join(p.read_text() for p in shared.glob("*.out"))
    assert result.exists(), f"the driver wrote no result; its output:\n{output}"
    got = json.loads(result.read_text())
    assert got["ids"] == [2, 3, 4, 5] and got["peer"] == 5
    assert got["hosts"] == {node: 2 for node in SLURM_MN_NODES}
    assert got["steps"] == [f"{job}.0"]           # one srun step for all four workers
    assert got["jobs"] == [job] and got["master"] == SLURM_MN_NODES[0]
    assert got["squares"] == [0, 1, 4, 9, 16, 25]


def test_worker_array_joins_an_elastic_master_on_the_login_node(mn):
    batch, shared = mn
    hosts = contract.worker_array_joins_an_elastic_master(      # deploy/slurm/workers.sbatch as shipped
        batch, shared, ["sbatch", "--parsable", "--array=0-1", "--time=5", f"--job-name={batch.name}",
                        f"--chdir={shared}", f"--output={shared}/workers-%A_%a.out", str(DEPLOY / "workers.sbatch")],
        SLURM_MN_GATEWAY, "SLURM_ARRAY_TASK_ID", ["0", "1"], "SLURM_ARRAY_JOB_ID", python=SLURM_MN_PYTHON)
    assert set(hosts) <= set(SLURM_MN_NODES)


def test_killing_a_node_ends_exactly_its_workers_and_scancel_leaves_nothing_running(mn):
    batch, _shared = mn
    hosts = launch_on_both_nodes(mn)
    lost = SLURM_MN_NODES[1]
    try:
        subprocess.run(["docker", "kill", f"pydist-{lost}"], capture_output=True, timeout=60, check=True)
        wait_until(lambda: set(workers()) == {p for p, h in hosts.items() if h != lost}, 60,
                   f"the workers on {lost} to be gone", 0.2)
        for pid, host in hosts.items():
            if host == lost:
                with pytest.raises(ProcessExitedException):
                    remotecall_fetch(myid, pid)
            else:
                assert remotecall_fetch(myid, pid) == pid
        [job] = batch.jobs()
        subprocess.run(["scancel", job], timeout=30, check=True)
        wait_until(lambda: not workers() or workers() == [1], 60, "the surviving workers to exit", 0.2)
        wait_until(lambda: not worker_processes(SLURM_MN_NODES[0]), 60,
                   f"no worker process left on {SLURM_MN_NODES[0]}", 0.5)
        batch.wait_until_gone(f"job {job} to leave squeue after scancel", 60)
    finally:        # the node comes back (ReturnToService=2) for the tests after this one
        subprocess.run(["docker", "start", f"pydist-{lost}"], capture_output=True, timeout=60)
        wait_until(slurm_multinode_running, 90, f"{lost} to be up again", 1.0)
