"""Processes that die: pending calls fail fast, nothing is left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import wait_until
from pydist import (ProcessExitedException, RemoteChannel, RemoteException, addprocs, fetch,
                    myid, remotecall, remotecall_fetch, take, workers)


def test_sigkilled_worker_fails_pending_calls_fetches_and_takes(cluster):
    victim, other = cluster
    ospid = remotecall_fetch(os.getpid, victim)
    pending = remotecall(__import__("time").sleep, victim, 60)
    rc = RemoteChannel(victim)
    taker_result = remotecall(lambda c: take(c), other, rc)
    started = time.monotonic()
    os.kill(ospid, signal.SIGKILL)
    with pytest.raises(ProcessExitedException):
        fetch(pending)
    with pytest.raises(ProcessExitedException):
        take(rc)
    with pytest.raises(RemoteException) as info:
        fetch(taker_result)
    assert isinstance(info.value.captured, ProcessExitedException)
    assert time.monotonic() - started < 2 + 1      # 2 s promised, 1 s slack for a loaded machine
    with pytest.raises(ProcessExitedException):
        remotecall_fetch(myid, victim)
    assert victim not in workers()
    wait_until(lambda: victim not in remotecall_fetch(workers, other), what="the other worker to forget it")


def test_worker_exiting_by_itself_is_removed(cluster):
    from pydist import remote_do
    remote_do(sys.exit, cluster[0])
    wait_until(lambda: cluster[0] not in workers(), what="the worker to be removed")
    with pytest.raises(ProcessExitedException):
        remotecall_fetch(myid, cluster[0])


def test_workers_exit_when_the_master_is_sigkilled(tmp_path):
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from pydist import addprocs, remotecall_fetch
        ids = addprocs(2)
        print(" ".join(str(remotecall_fetch(os.getpid, p)) for p in ids), flush=True)
        sys.stdin.read()
    """))
    master = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = master.stdout.readline()
        ospids = [int(x) for x in line.split()]
        assert len(ospids) == 2
        master.kill()
        master.wait(10)

        def gone(ospid):
            try:
                os.kill(ospid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until(lambda: all(gone(p) for p in ospids), timeout=10, what="the orphaned workers to exit")
    finally:
        master.kill()


def test_worker_that_never_gets_a_master_exits(tmp_path):
    env = {**os.environ, "PYDIST_WORKER_TIMEOUT": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "pydist.worker", "--bind-to", "127.0.0.1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True)
    out, err = worker.communicate("cookie\n", timeout=20)
    assert worker.returncode == 1
    assert "pydist_worker:" in out and "no master" in err


def test_launch_failure_reports_what_and_why_and_keeps_the_others(no_workers):
    from pydist import LaunchError
    with pytest.raises(LaunchError) as info:
        addprocs(1, exename="/nonexistent/python")
    assert info.value.added == [] and info.value.failures
    assert workers() == [1]
