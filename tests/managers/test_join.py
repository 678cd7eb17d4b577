"""The base of managers whose workers dial in (pydist.managers._join), on its smallest backend:
the writing guide's ProcessManager, one local process per worker (no Docker, Slurm or
Kubernetes needed).  The backend is taken from docs/managers/writing.md, so the guide's example
is the one these tests prove."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import remove_all_workers, wait_until
from pydist import LaunchError, addprocs, cluster_cookie, remotecall_fetch, rmprocs, workers
from test_docs import python_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "managers" / "writing.md"
_namespace: dict = {}
exec(compile(python_blocks(GUIDE)[0][1], str(GUIDE), "exec"), _namespace)
ProcessManager = _namespace["ProcessManager"]

SLEEPER = ["-c", "import time; time.sleep(120)"]     # a process that runs but never joins


@pytest.fixture(autouse=True)
def no_workers():
    remove_all_workers()
    yield
    remove_all_workers()


def gone(process: subprocess.Popen) -> bool:
    return process.poll() is not None


def test_workers_join_compute_and_lose_their_process_when_removed():
    manager = ProcessManager(n=2)
    ids = addprocs(manager)
    processes = list(manager.processes.values())
    assert workers() == ids
    assert sorted(remotecall_fetch(os.getpid, pid) for pid in ids) == sorted(p.pid for p in processes)
    rmprocs(*ids).wait()
    assert all(gone(p) for p in processes) and not manager.processes


def test_worker_that_exits_before_joining_fails_with_its_exit_code_and_output_tail():
    manager = ProcessManager(n=1)
    with pytest.raises(LaunchError) as caught:
        addprocs(manager, exeflags=["-c", "print('cannot import numpy'); raise SystemExit(3)"])
    [(what, why)] = caught.value.failures
    assert what.startswith("process pydist-worker-")
    assert "exited with code 3 before it joined" in why and why.endswith("its output ends with:\ncannot import numpy")
    assert caught.value.added == [] and not manager.processes


def test_worker_that_runs_but_never_joins_fails_at_its_deadline_and_is_stopped():
    manager = ProcessManager(n=1, worker_timeout=1)
    with pytest.raises(LaunchError, match=r"started but did not join \S+ within 1 s: check that the workers"):
        addprocs(manager, exeflags=SLEEPER)
    assert not manager.processes and workers() == [1]


def test_resource_that_stays_pending_fails_with_the_backends_reason():
    class Queued(ProcessManager):
        def poll(self, names):
            return {name: _namespace["Status"](_namespace["State"].PENDING, "Priority") for name in names}

    with pytest.raises(LaunchError, match=r"stayed pending \(Priority\) for 1 s and was cancelled"):
        addprocs(Queued(n=1, pending_timeout=1), exeflags=SLEEPER)


def test_offer_of_a_worker_whose_launch_is_over_is_refused():
    manager = ProcessManager(n=1, worker_timeout=1)
    with pytest.raises(LaunchError) as caught:
        addprocs(manager, exeflags=SLEEPER)
    name = caught.value.failures[0][0].split()[-1]
    head = manager.head(manager.listener())
    late = subprocess.Popen([sys.executable, "-m", "pydist.worker", "--join", head, "--ident", name],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    late.stdin.write(cluster_cookie() + "\n")
    late.stdin.close()
    assert late.wait(60) != 0              # refused: its link was closed before it got an id
    assert workers() == [1]
    assert addprocs(ProcessManager(n=1)) == [workers()[0]]      # the listener serves the next launch


def test_worker_killed_during_launch_fails_and_the_others_join():
    class OneSleeper(ProcessManager):
        def create(self, name, head, params):
            sleeper = len(self.processes) == 1
            super().create(name, head, {**params, "exeflags": SLEEPER} if sleeper else params)

    manager = OneSleeper(n=2)
    outcome: list = []
    launch = threading.Thread(target=lambda: outcome.append(_launch(manager)))
    launch.start()
    sleeper = wait_until(lambda: len(manager.processes) == 2 and list(manager.processes.values())[1],
                         timeout=30, what="both workers to be started")
    sleeper.send_signal(signal.SIGKILL)
    launch.join(60)
    [caught] = outcome
    assert isinstance(caught, LaunchError) and len(caught.added) == 1
    [(what, why)] = caught.failures
    assert why.startswith("the worker killed by SIGKILL before it joined")
    assert workers() == caught.added


def test_refused_create_fails_the_rest_and_keeps_the_workers_started():
    class Quota(ProcessManager):
        def create(self, name, head, params):
            if len(self.processes) == 1:
                raise RuntimeError("quota exceeded: 1 process")
            super().create(name, head, params)

    with pytest.raises(LaunchError) as caught:
        addprocs(Quota(n=3))
    assert [why for _, why in caught.value.failures] == ["not created: quota exceeded: 1 process"] * 2
    assert workers() == caught.value.added and len(caught.value.added) == 1


def test_bad_setting_in_the_first_create_raises_it():
    class Picky(ProcessManager):
        def create(self, name, head, params):
            raise ValueError("image=...: no such image")

    with pytest.raises(ValueError, match="no such image"):
        addprocs(Picky(n=2))


def _launch(manager):
    try:
        return addprocs(manager)
    except LaunchError as err:
        return err


def test_worker_whose_process_dies_is_replaced_with_restart():
    manager = ProcessManager(n=1)
    [first] = addprocs(manager, restart=True)
    [process] = manager.processes.values()
    process.send_signal(signal.SIGKILL)
    [second] = wait_until(lambda: [p for p in workers() if p not in (1, first)], timeout=60,
                          what="the replacement worker to join")
    assert remotecall_fetch(os.getpid, second) in {p.pid for p in manager.processes.values()}
    assert process.pid not in {p.pid for p in manager.processes.values()}
