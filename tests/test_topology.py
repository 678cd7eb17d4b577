"""Topologies, and a custom ClusterManager written against the public interface only."""

import subprocess
import sys

import pytest

from conftest import remove_all_workers, wait_until
from pydist import (ClusterManager, RemoteException, WorkerConfig, addprocs, cluster_cookie,
                    interrupt, myid, remotecall, remotecall_fetch, rmprocs, workers)


class TopoTestManager(ClusterManager):
    """Julia's TopoTestManager: workers with odd idents connect to odd ones, even to even."""

    def __init__(self, n):
        self.n = n
        self.idents = {}
        self.ops = []

    def launch(self, params, launched, notify):
        for i in range(1, self.n + 1):
            process = subprocess.Popen([sys.executable, "-m", "pydist.worker", "--bind-to", "127.0.0.1"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            process.stdin.write((cluster_cookie() + "\n").encode())
            process.stdin.close()
            config = WorkerConfig(io=process.stdout, process=process, ident=i,
                                  connect_idents=list(range(i + 2, self.n + 1, 2)))
            with notify:
                launched.append(config)
                notify.notify_all()

    def manage(self, pid, config, op):
        self.ops.append((pid, op))
        if op == "register":
            self.idents[pid] = config.ident


@pytest.fixture
def fresh():
    remove_all_workers()
    yield
    remove_all_workers()


def test_custom_topology_connects_only_the_listed_idents(fresh):
    manager = TopoTestManager(4)
    ids = addprocs(manager, topology="custom")
    assert sorted(manager.idents) == ids
    for p1 in ids:
        for p2 in ids:
            same_parity = manager.idents[p1] % 2 == manager.idents[p2] % 2
            if p1 == p2 or same_parity:
                assert remotecall_fetch(lambda p: remotecall_fetch(myid, p), p1, p2) == p2
            else:
                with pytest.raises(RemoteException):
                    remotecall_fetch(lambda p: remotecall_fetch(myid, p), p1, p2)


def test_custom_manager_gets_deregister_and_default_kill_stops_the_process(fresh):
    manager = TopoTestManager(2)
    ids = addprocs(manager, topology="custom")
    rmprocs(*ids)
    assert workers() == [1]
    assert {op for _, op in manager.ops} >= {"register", "deregister"}


def test_master_worker_topology_refuses_worker_to_worker_calls(fresh):
    a, b = addprocs(2, topology="master_worker")
    assert remotecall_fetch(myid, a) == a
    with pytest.raises(RemoteException, match="topology"):
        remotecall_fetch(lambda p: remotecall_fetch(myid, p), a, b)
    assert remotecall_fetch(lambda: remotecall_fetch(myid, 1), a) == 1


def test_lazy_false_connects_every_pair_during_addprocs(fresh):
    ids = addprocs(3, lazy=False)

    def linked():
        from pydist.process import STATE
        return sorted(STATE.links)
    for pid in ids:
        assert remotecall_fetch(linked, pid) == sorted(p for p in [1, *ids] if p != pid)


def test_lazy_links_are_made_on_first_use_only(fresh):
    a, b, c = addprocs(3)

    def linked():
        from pydist.process import STATE
        return sorted(STATE.links)
    assert remotecall_fetch(linked, a) == [1]
    remotecall_fetch(lambda p: remotecall_fetch(myid, p), a, c)
    assert remotecall_fetch(linked, a) == [1, c]
    assert remotecall_fetch(linked, c) == [1, a]
    assert remotecall_fetch(linked, b) == [1]


def test_interrupt_with_no_pids_interrupts_every_worker(fresh):
    import time
    ids = addprocs(2)
    futures = [remotecall(time.sleep, p, 60) for p in ids]
    wait_until(lambda: all(remotecall_fetch(lambda: len(__import__("pydist.calls").calls._running), p)
                           for p in ids), what="both sleeps to start")
    interrupt()
    for fut in futures:
        with pytest.raises(RemoteException):
            fut.fetch()


def test_process_messages_joins_a_master_over_a_socket_the_caller_made(fresh):
    from pydist.managers import ElasticManager
    manager = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=30)
    code = (f"import socket, threading\n"
            f"from pydist import process_messages, init_worker\n"
            f"init_worker({cluster_cookie()!r})\n"
            f"s = socket.create_connection(('127.0.0.1', {manager.address[1]}))\n"
            f"process_messages(s, s, incoming=False)\n"
            f"threading.Event().wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    [pid] = addprocs(manager)
    assert remotecall_fetch(myid, pid) == pid
    rmprocs(pid)
    assert proc.wait(10) == 0
