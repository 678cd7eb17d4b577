"""pydist.Executor is a concurrent.futures.Executor running calls on the cluster's workers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading

import pytest
from conftest import wait_until

from pydist import (AbstractWorkerPool, ProcessExitedException, RemoteChannel, RemoteException,
                    WorkerPool, remotecall_fetch)
from pydist.executor import Executor


def _ospids(ids: list[int]) -> set[int]:
    return {remotecall_fetch(os.getpid, pid) for pid in ids}


def _blocked(gate):
    """Runs on a worker until the test puts something into `gate`."""
    return gate.take()


class CountingPool(AbstractWorkerPool):
    """A WorkerPool that counts how many calls borrowed a worker."""

    def __init__(self, workers):
        self.inner = WorkerPool(workers)
        self.takes = 0

    def put(self, pid):
        self.inner.put(pid)

    def take(self):
        self.takes += 1
        return self.inner.take()

    def isready(self):
        return self.inner.isready()

    def workers(self):
        return self.inner.workers()

    def length(self):
        return self.inner.length()


def test_executor_is_a_concurrent_futures_executor():
    assert issubclass(Executor, cf.Executor)


def test_submit_returns_a_concurrent_future_computed_on_a_worker(cluster):
    with Executor() as ex:
        fut = ex.submit(os.getpid)
        assert isinstance(fut, cf.Future)
        assert fut.result(timeout=30) in _ospids(cluster)


def test_submit_passes_positional_and_keyword_arguments(cluster):
    with Executor() as ex:
        assert ex.submit(lambda a, b=0, *, c: (a, b, c), 1, b=2, c=3).result(timeout=30) == (1, 2, 3)


def test_calls_run_only_on_the_given_pool(cluster):
    pool = WorkerPool([cluster[1]])
    with Executor(pool) as ex:
        pids = {f.result(timeout=30) for f in [ex.submit(os.getpid) for _ in range(6)]}
    assert pids == _ospids([cluster[1]])


def test_result_raises_the_call_exception_chained_from_remote_exception(cluster):
    def boom(x):
        raise ValueError(f"bad {x}")

    with Executor() as ex:
        fut = ex.submit(boom, 7)
        with pytest.raises(ValueError, match="bad 7") as info:
            fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert cause.pid in cluster
    assert "boom" in str(cause)             # the remote traceback travels along


def test_futures_work_with_wait_and_as_completed(cluster):
    with Executor() as ex:
        futures = [ex.submit(lambda x: x * x, i) for i in range(8)]
        done, not_done = cf.wait(futures, timeout=30)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [i * i for i in range(8)]


def test_map_yields_results_in_order(cluster):
    with Executor() as ex:
        assert list(ex.map(lambda x, y: x - y, range(10), range(0, 20, 2), timeout=30)) == \
            [x - y for x, y in zip(range(10), range(0, 20, 2))]


def test_map_with_chunksize_runs_one_remote_call_per_chunk(cluster):
    pool = CountingPool(cluster)
    with Executor(pool) as ex:
        assert list(ex.map(lambda x: x + 1, range(10), chunksize=4, timeout=30)) == list(range(1, 11))
    assert pool.takes == 3                  # chunks of 4, 4 and 2 elements


def test_map_rejects_a_chunksize_below_one(cluster):
    with Executor() as ex, pytest.raises(ValueError, match="chunksize"):
        ex.map(abs, [1], chunksize=0)


def test_map_raises_timeout_error_when_results_are_late(cluster):
    gate = RemoteChannel()
    ex = Executor()
    try:
        results = ex.map(_blocked, [gate], timeout=0.5)
        with pytest.raises(cf.TimeoutError):
            next(results)
    finally:
        gate.put("go")
        ex.shutdown(wait=True)


def test_one_call_per_worker_runs_at_a_time_and_the_rest_wait(cluster):
    gate = RemoteChannel(size=10)
    with Executor() as ex:
        futures = [ex.submit(_blocked, gate) for _ in range(4)]
        wait_until(lambda: sum(f.running() for f in futures) == 2, 30, "two calls running")
        assert [f.running() for f in futures[2:]] == [False, False]   # no free worker for them
        for i in range(4):
            gate.put(i)
        assert sorted(f.result(timeout=30) for f in futures) == [0, 1, 2, 3]


def test_worker_is_back_in_the_pool_when_the_future_is_done(cluster):
    pool = WorkerPool([cluster[0]])
    with Executor(pool) as ex:
        ex.submit(abs, -1).result(timeout=30)
        assert pool.isready()


def test_shutdown_with_cancel_futures_cancels_the_calls_not_started(cluster):
    gate = RemoteChannel()
    ex = Executor(WorkerPool([cluster[0]]))
    first = ex.submit(_blocked, gate)
    rest = [ex.submit(abs, -i) for i in range(3)]
    wait_until(first.running, 30, "the first call to start")
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in rest)
    gate.put("done")
    assert first.result(timeout=30) == "done"


def test_submit_after_shutdown_raises_runtime_error(cluster):
    ex = Executor()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)


def test_leaving_the_with_block_waits_for_every_call(cluster):
    gate = RemoteChannel()
    with Executor() as ex:
        fut = ex.submit(_blocked, gate)
        threading.Thread(target=gate.put, args=("late",), daemon=True).start()
    assert fut.done() and fut.result() == "late"


def test_cancel_before_start_skips_the_call(cluster):
    gate = RemoteChannel()
    with Executor(WorkerPool([cluster[0]])) as ex:
        first = ex.submit(_blocked, gate)
        second = ex.submit(abs, -2)
        assert second.cancel()
        gate.put(1)
        assert first.result(timeout=30) == 1
    assert second.cancelled()


def test_an_argument_that_cannot_be_pickled_fails_only_its_future(cluster):
    with Executor() as ex:
        bad = ex.submit(id, threading.Lock())
        with pytest.raises(Exception, match="pickle"):
            bad.result(timeout=30)
        assert ex.submit(abs, -3).result(timeout=30) == 3


def test_a_worker_that_dies_fails_its_future_with_process_exited_exception(cluster):
    with Executor(WorkerPool([cluster[0]])) as ex:
        with pytest.raises(ProcessExitedException):
            ex.submit(os._exit, 0).result(timeout=30)
    with Executor() as ex:                   # the default pool goes on with the other worker
        assert ex.submit(os.getpid).result(timeout=30) == remotecall_fetch(os.getpid, cluster[1])


def test_without_workers_the_master_runs_the_calls(no_workers):
    with Executor() as ex:
        assert ex.submit(os.getpid).result(timeout=30) == os.getpid()
