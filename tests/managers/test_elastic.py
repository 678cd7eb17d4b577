"""ElasticManager: workers that dial the master and join (worker connects)."""

import socket
import subprocess
import sys

import pytest

from conftest import remove_all_workers, wait_until
from pydist import LaunchError, addprocs, cluster_cookie, myid, remotecall_fetch, workers
from pydist.managers import ElasticManager
from pydist.managers.base import join_listener


@pytest.fixture
def cookie_file(tmp_path):
    path = tmp_path / "cookie"
    path.write_text(cluster_cookie())
    path.chmod(0o600)
    remove_all_workers()
    yield str(path)
    remove_all_workers()


def start_joining_worker(address, cookie_file, *extra):
    host, port = address
    return subprocess.Popen([sys.executable, "-m", "pydist.worker", "--join", f"{host}:{port}",
                             "--cookie-file", cookie_file, "--bind-to", "127.0.0.1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_workers_that_dial_in_join_and_see_each_other(cookie_file):
    manager = ElasticManager(n=2, host="127.0.0.1", port=0, timeout=30)
    procs = [start_joining_worker(manager.address, cookie_file) for _ in range(2)]
    ids = addprocs(manager)
    assert workers() == ids
    a, b = ids
    assert remotecall_fetch(lambda p: remotecall_fetch(myid, p), a, b) == b
    assert remotecall_fetch(workers, b) == ids
    remove_all_workers()
    assert [p.wait(10) for p in procs] == [0, 0]


def test_keep_accepting_adds_workers_that_join_later(cookie_file):
    manager = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=30, keep_accepting=True)
    start_joining_worker(manager.address, cookie_file)
    [first] = addprocs(manager)
    start_joining_worker(manager.address, cookie_file)
    wait_until(lambda: len(workers()) == 2 and workers()[0] != 1, timeout=30, what="the late worker to join")
    late = workers()[1]
    assert late > first and remotecall_fetch(myid, late) == late
    manager.stop()


def test_too_few_joins_is_a_launch_error(cookie_file):
    manager = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=1)
    with pytest.raises(LaunchError, match="did not join"):
        addprocs(manager)


def test_worker_with_a_wrong_cookie_exits_with_a_clear_message(cookie_file, tmp_path):
    manager = ElasticManager(n=0, host="127.0.0.1", port=0)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-cookie")
    proc = start_joining_worker(manager.address, str(wrong))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "refused" in err


def test_worker_that_cannot_reach_its_master_gives_up_with_a_clear_message(cookie_file):
    proc = start_joining_worker(("127.0.0.1", 1), cookie_file, "--join-timeout", "1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "could not reach the master" in err


def test_stop_closes_the_managers_own_listener():
    manager = ElasticManager(n=0, host="127.0.0.1", port=0)
    socket.create_connection(manager.address, timeout=10).close()
    manager.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(manager.address, timeout=10)


def test_stop_leaves_a_shared_listener_open():
    shared = join_listener("127.0.0.1", 0)
    manager = ElasticManager(n=0, host="127.0.0.1", port=shared.port)
    assert manager.listener is shared
    manager.stop()
    socket.create_connection(manager.address, timeout=10).close()
