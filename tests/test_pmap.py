"""pmap and distributed(): order, batching, errors, retries, dying workers."""

import os
import random
import signal

import pytest

from pydist import (CachingPool, ProcessExitedException, RemoteException, distributed, myid, pmap,
                    remotecall_fetch, workers)


def square(x):
    return x * x


@pytest.mark.parametrize("batch_size", [1, 3, "auto"])
def test_results_come_back_in_order(cluster, batch_size):
    assert pmap(square, range(50), batch_size=batch_size) == [x * x for x in range(50)]


def test_several_iterables_are_zipped(cluster):
    assert pmap(lambda a, b: a - b, [5, 6, 7], [1, 2, 3]) == [4, 4, 4]


def test_iterables_of_any_kind_are_zipped_to_the_shortest(cluster):
    generator = (x for x in range(5))
    out = pmap(lambda a, b, c: a + b + c, generator, [10] * 7, range(100, 103), batch_size=2)
    assert out == [110, 112, 114]


def test_an_endless_iterator_beside_a_list_is_cut_to_the_list(cluster):
    import itertools
    assert pmap(lambda a, b: a * b, [1, 2, 3], itertools.repeat(10)) == [10, 20, 30]
    assert pmap(square) == []


def _first_even(xs):
    return next(x for x in xs if x % 2 == 0)    # StopIteration when there is none


@pytest.mark.parametrize("batch_size", [1, 2])
def test_stop_iteration_from_func_is_a_failure_not_the_end_of_the_batch(cluster, batch_size):
    data = [[1, 2], [3, 5], [4], [7]]
    assert pmap(_first_even, data, batch_size=batch_size, on_error=lambda e: type(e).__name__) \
        == [2, "StopIteration", 4, "StopIteration"]
    with pytest.raises(RemoteException) as info:
        pmap(_first_even, data, batch_size=batch_size)
    assert isinstance(info.value.captured, StopIteration)


def test_retry_check_may_call_workers(cluster):
    def check(state, exc):
        return state, remotecall_fetch(myid, cluster[0]) == cluster[0] and state == 0
    with pytest.raises(RemoteException):
        pmap(lambda x: 1 // 0, range(4), retry_delays=[0.01], retry_check=check)


def test_every_failing_element_of_a_batch_is_handled_alone(cluster):
    out = pmap(lambda x: 1 // (x % 3), range(9), batch_size=9, on_error=lambda e: "zero")
    assert out == ["zero", 1, 0] * 3


def test_work_is_spread_over_the_workers(cluster):
    assert set(pmap(lambda _: myid(), range(40))) == set(cluster)


def test_not_distributed_runs_locally(cluster):
    assert set(pmap(lambda _: myid(), range(10), distributed=False)) == {1}


def test_on_error_runs_on_the_worker_and_replaces_the_result(cluster):
    def f(x):
        if x == 3:
            raise ValueError("foobar")
        return x
    for batch_size in (1, 4):
        out = pmap(f, range(6), on_error=lambda e: ("handled", str(e), myid()), batch_size=batch_size)
        assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
        assert out[3][:2] == ("handled", "foobar") and out[3][2] in cluster


def test_first_unhandled_error_is_raised_as_remote_exception(cluster):
    with pytest.raises(RemoteException) as info:
        pmap(lambda x: 1 // (x - 7), range(20))
    assert isinstance(info.value.captured, ZeroDivisionError)


def flaky(x):
    if random.random() < 0.5:
        raise ValueError("foobar")
    return x


@pytest.mark.parametrize("batch_size", [1, 5])
def test_retries_with_delays_until_success(cluster, batch_size):
    out = pmap(flaky, range(40), batch_size=batch_size, retry_delays=[0.001] * 200,
               retry_check=lambda s, e: (s, str(e).endswith("foobar")))
    assert out == list(range(40))


def test_retry_check_gets_the_original_exception_and_can_refuse(cluster):
    seen = []

    def check(state, exc):
        seen.append(type(exc))
        return state, False
    with pytest.raises(RemoteException):
        pmap(lambda x: 1 / 0, [1], retry_delays=[0.001] * 3, retry_check=check)
    assert seen == [ZeroDivisionError]


def test_on_error_that_raises_falls_through_to_retries(cluster):
    calls = []
    with pytest.raises(RemoteException):
        pmap(lambda x: 1 / 0, [1], on_error=lambda e: (_ for _ in ()).throw(e),
             retry_delays=[0.001, 0.001], retry_check=lambda s, e: (calls.append(1) or s, True))
    assert len(calls) == 2


def test_pmap_on_a_caching_pool(cluster):
    assert pmap(square, range(10), pool=CachingPool(cluster)) == [x * x for x in range(10)]


def test_pmap_from_a_worker_uses_every_worker(cluster):
    assert set(remotecall_fetch(lambda: pmap(lambda _: myid(), range(40)), cluster[0])) <= set(cluster)
    assert remotecall_fetch(lambda: pmap(square, range(10)), cluster[1]) == [x * x for x in range(10)]


def _identity_killing(victim, after):
    """x, except that the victim process dies (SIGKILL, mid-call) on any x >= after: a
    crash at a point of the map that does not depend on how fast the machine is."""
    def run(x):
        import time
        if myid() == victim and x >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.002)
        return x
    return run


def test_worker_killed_mid_pmap_is_retried_on_the_others(cluster4):
    victim = cluster4[0]
    out = pmap(_identity_killing(victim, 40), range(200), retry_delays=[0.01] * 5)
    assert out == list(range(200))
    assert victim not in workers()


def test_a_batch_whose_worker_died_runs_once_more_on_another_worker_by_default(cluster4):
    victim = cluster4[1]
    assert pmap(_identity_killing(victim, 40), range(400)) == list(range(400))
    assert victim not in workers()


def _killing_every_worker(after):
    """x, except that whichever worker runs an x >= after dies: a rerun dies too."""
    def run(x):
        if x >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        return x
    return run


def test_an_element_that_kills_two_workers_raises_process_exited(cluster4):
    with pytest.raises(ProcessExitedException):
        pmap(_killing_every_worker(390), range(400))


def test_progress_bar_reports_elements(cluster, capsys):
    assert pmap(square, range(20), progress=True) == [x * x for x in range(20)]
    assert "20/20" in capsys.readouterr().err


def test_empty_input_gives_an_empty_list(cluster):
    assert pmap(square, []) == []


# -- distributed() -------------------------------------------------------------------------
def test_distributed_with_a_reducer_reduces_chunk_results(cluster):
    assert distributed(square, range(10), reducer=lambda a, b: a + b) == sum(x * x for x in range(10))


def test_distributed_splits_like_julia_splitrange(cluster4):
    from pydist.distributed import _splitrange
    assert [len(c) for c in _splitrange(10, 4)] == [3, 3, 2, 2]
    assert [len(c) for c in _splitrange(2, 4)] == [1, 1]
    chunks = distributed(lambda x: [(myid(), x)], range(10), reducer=lambda a, b: a + b)
    owners = [pid for pid, _ in chunks]
    assert owners == sorted(owners)
    assert [owners.count(p) for p in cluster4] == [3, 3, 2, 2]
    assert [x for _, x in chunks] == list(range(10))


def test_distributed_without_reducer_returns_a_waitable_task(cluster):
    from pydist import RemoteChannel
    rc = RemoteChannel(1, size=100)
    task = distributed(lambda x: rc.put(x), range(10))
    task.wait()
    assert sorted(rc.take() for _ in range(10)) == list(range(10))


def test_distributed_wait_raises_if_a_chunk_failed(cluster):
    task = distributed(lambda x: 1 / (x - 5), range(10))
    with pytest.raises(RemoteException):
        task.wait()
