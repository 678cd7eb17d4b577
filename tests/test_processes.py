"""addprocs, rmprocs, ids and membership, with real local worker processes."""

import os
import time
import warnings

import pytest

from pydist import (addprocs, default_addprocs_params, myid, nprocs, nworkers, procs,
                    remotecall_fetch, rmprocs, workers)


def test_master_alone_counts_itself_as_the_worker(no_workers):
    assert myid() == 1
    assert workers() == [1]
    assert nworkers() == 1
    assert procs() == [1]
    assert nprocs() == 1


def test_addprocs_returns_new_ids_in_ascending_order(no_workers):
    ids = addprocs(3)
    assert ids == sorted(ids)
    assert len(ids) == 3 and 1 not in ids
    assert workers() == ids
    assert procs() == [1, *ids]
    assert nprocs() == 4 and nworkers() == 3


def test_every_process_agrees_on_membership(cluster):
    view = (procs(), workers(), nprocs(), nworkers())
    for pid in cluster:
        assert remotecall_fetch(lambda: (procs(), workers(), nprocs(), nworkers()), pid) == view
        assert remotecall_fetch(myid, pid) == pid


def test_ids_are_never_reused_after_removal(no_workers):
    first = addprocs(1)
    rmprocs(*first)
    assert workers() == [1]
    second = addprocs(1)
    assert second[0] > first[0]


def test_procs_of_a_pid_lists_processes_on_its_host(cluster):
    assert procs(cluster[0]) == procs()
    with pytest.raises(ValueError):
        procs(10_000)


def test_unknown_keyword_raises_type_error(no_workers):
    with pytest.raises(TypeError, match="no_such_option"):
        addprocs(1, no_such_option=True)
    assert workers() == [1]


def test_default_addprocs_params_match_julia():
    params = default_addprocs_params()
    assert params["dir"] == os.getcwd()
    assert params["env"] == {} and list(params["exeflags"]) == []
    assert params["enable_threaded_blas"] is False
    assert params["topology"] == "all_to_all" and params["lazy"] is True


def test_env_dir_and_exeflags_reach_the_worker(no_workers, tmp_path):
    [pid] = addprocs(1, env={"PYDIST_TEST_VAR": "hello"}, dir=str(tmp_path), exeflags="-X utf8")
    env, cwd, utf8 = remotecall_fetch(
        lambda: (os.environ.get("PYDIST_TEST_VAR"), os.getcwd(), __import__("sys").flags.utf8_mode), pid)
    assert env == "hello" and cwd == str(tmp_path) and utf8 == 1


def test_blas_threads_are_limited_unless_enabled(no_workers):
    [one] = addprocs(1)
    [many] = addprocs(1, enable_threaded_blas=True)
    get = lambda: os.environ.get("OPENBLAS_NUM_THREADS")  # noqa: E731
    assert remotecall_fetch(get, one) == "1"
    assert remotecall_fetch(get, many) == os.environ.get("OPENBLAS_NUM_THREADS")


def test_local_workers_listen_on_loopback_only(cluster):
    from pydist.process import STATE
    for pid in cluster:
        assert STATE.members[pid].host == "127.0.0.1"


def test_rmprocs_of_the_master_warns_and_keeps_it(cluster):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rmprocs(1)
    assert any("process 1" in str(w.message) for w in caught)
    assert procs()[0] == 1


def test_rmprocs_with_waitfor_zero_returns_a_task_to_wait_on(cluster):
    task = rmprocs(*cluster, waitfor=0)
    task.wait(30)
    assert workers() == [1]


def test_rmprocs_leaves_no_worker_process(no_workers):
    ids = addprocs(2)
    ospids = [remotecall_fetch(os.getpid, p) for p in ids]
    rmprocs(*ids)
    for ospid in ospids:
        with pytest.raises(ProcessLookupError):
            os.kill(ospid, 0)


def test_addprocs_and_rmprocs_only_on_the_master(cluster):
    with pytest.raises(Exception):
        remotecall_fetch(lambda: addprocs(1), cluster[0])
    with pytest.raises(Exception):
        remotecall_fetch(lambda: rmprocs(2), cluster[0])


def test_addprocs_with_another_topology_than_running_workers_raises(cluster):
    with pytest.raises(ValueError, match="topology"):
        addprocs(1, topology="master_worker")
    with pytest.raises(ValueError, match="lazy"):
        addprocs(1, lazy=False)


def test_addprocs_zero_adds_nothing(no_workers):
    assert addprocs(0) == []
    assert workers() == [1]


def test_worker_output_is_relayed_with_its_id(cluster, capfd):
    from conftest import wait_relayed
    since = time.time()
    remotecall_fetch(lambda: print("hello from the worker", flush=True), cluster[0])
    out, _ = wait_relayed(capfd, since, "hello from the worker")
    assert f"From worker {cluster[0]}:" in out and "hello from the worker" in out


def test_worker_stderr_is_relayed_to_the_masters_stderr(cluster, capfd):
    import sys
    from conftest import wait_relayed
    since = time.time()
    remotecall_fetch(lambda: print("on stderr", file=sys.stderr, flush=True), cluster[1])
    out, err = wait_relayed(capfd, since, "on stderr")
    assert f"From worker {cluster[1]}:\ton stderr" in err
    assert "on stderr" not in out
