"""Worker pools: lending, caching, sharing across processes, dead members."""

import os
import signal
import threading

import pytest

from conftest import wait_until
from pydist import (AbstractWorkerPool, CachingPool, RemoteException,
                    WorkerPool, addprocs, clear, default_worker_pool, myid, remote, remotecall,
                    remotecall_fetch, remotecall_wait, remote_do, workers)


def test_worker_pool_lends_free_workers_first_in_first_out(cluster):
    pool = WorkerPool(cluster)
    assert isinstance(pool, AbstractWorkerPool)
    assert pool.workers() == set(cluster) and pool.length() == len(cluster) == len(pool)
    a = pool.take()
    b = pool.take()
    assert [a, b] == cluster and not pool.isready()
    pool.put(b)
    pool.put(a)
    assert pool.take() == b


def test_take_blocks_until_a_worker_is_put_back(cluster):
    pool = WorkerPool([cluster[0]])
    pid = pool.take()
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take()), daemon=True)
    t.start()
    t.join(0.1)
    assert not got
    pool.put(pid)
    t.join(5)
    assert got == [pid]


def test_take_on_an_empty_pool_raises():
    with pytest.raises(Exception):
        WorkerPool([]).take()


def test_remotecall_on_a_pool_holds_the_worker_for_the_call_only(cluster):
    pool = WorkerPool([cluster[0]])
    assert remotecall_fetch(myid, pool) == cluster[0]
    assert pool.isready()
    with pytest.raises(RemoteException):
        remotecall_fetch(lambda: 1 / 0, pool)
    assert pool.isready()
    fut = remotecall(myid, pool)
    assert fut.fetch() == cluster[0]
    wait_until(pool.isready, what="the worker to return to the pool")
    assert remotecall_wait(myid, pool).fetch() == cluster[0]
    remote_do(myid, pool)
    assert pool.isready()


def test_pool_skips_a_worker_that_died(cluster):
    pool = WorkerPool(cluster)
    os.kill(remotecall_fetch(os.getpid, cluster[0]), signal.SIGKILL)
    wait_until(lambda: cluster[0] not in workers(), what="the death to be noticed")
    assert pool.workers() == {cluster[1]}
    assert [pool.take(), pool.isready()] == [cluster[1], False]


def test_default_pool_gains_workers_added_later(cluster):
    pool = default_worker_pool()
    assert pool.workers() == set(cluster)
    [new] = addprocs(1)
    assert new in default_worker_pool().workers()


def test_default_pool_without_workers_uses_the_master(no_workers):
    assert remotecall_fetch(myid, default_worker_pool()) == 1


def test_default_pool_without_workers_holds_the_master_until_workers_come(no_workers):
    pool = default_worker_pool()
    assert pool.workers() == {1} and pool.length() == 1 and pool.isready()
    assert pool.take() == 1
    [new] = addprocs(1)
    assert pool.workers() == {new}           # the master serves only while there is no worker


def test_a_plain_pool_without_workers_is_empty(no_workers):
    assert WorkerPool([]).workers() == set() and WorkerPool([]).length() == 0


def test_pool_sent_to_a_worker_shares_state_with_the_original(cluster):
    pool = WorkerPool([cluster[1]])
    taken = remotecall_fetch(lambda p: p.take(), cluster[0], pool)
    assert taken == cluster[1] and not pool.isready()
    pool.put(taken)
    assert remotecall_fetch(lambda p: p.isready(), cluster[0], pool)


def test_default_pool_on_a_worker_is_the_masters(cluster):
    assert remotecall_fetch(lambda: sorted(default_worker_pool().workers()), cluster[0]) == cluster


class Counted:
    """A callable that counts, per process, how many times it was unpickled."""
    loads = 0

    def __call__(self, x):
        return (Counted.loads, x)

    def __reduce__(self):
        return (_make_counted, ())


def _make_counted():
    Counted.loads += 1
    return Counted()


def test_caching_pool_ships_each_function_to_each_worker_once(cluster):
    pool = CachingPool([cluster[0]])
    f = Counted()
    loads = [remotecall_fetch(f, pool, i)[0] for i in range(5)]
    assert loads == [1] * 5
    clear(pool)
    assert remotecall_fetch(f, pool, 0)[0] == 2       # forgotten: shipped again


def test_plain_pool_ships_the_function_with_every_call(cluster):
    pool = WorkerPool([cluster[1]])
    f = Counted()
    assert [remotecall_fetch(f, pool, i)[0] for i in range(3)] == [1, 2, 3]


def test_remote_runs_on_the_pool(cluster):
    double = remote(lambda x: (myid(), 2 * x))
    pid, value = double(21)
    assert value == 42 and pid in cluster
    on_first = remote(myid, WorkerPool([cluster[0]]))
    assert on_first() == cluster[0]
