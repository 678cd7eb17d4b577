"""Per-call timings recorded on the worker that runs the call (pydist.timings)."""

from __future__ import annotations

import pytest

from pydist import CachingPool, RemoteException, addprocs, pmap, remote_do, remotecall, remotecall_fetch, rmprocs
from conftest import wait_until
from pydist.timings import since


def records_on(pid: int, after: int = 0) -> list[tuple]:
    return remotecall_fetch(since, pid, after)[0]


def last_seq(pid: int) -> int:
    records = records_on(pid)
    return records[-1][0] if records else 0


def double(x):
    return 2 * x


def test_a_call_leaves_its_name_times_and_sizes(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    payload = b"x" * 100_000
    assert remotecall_fetch(len, pid, payload) == 100_000
    [(seq, name, queued, start, end, bytes_in, bytes_out, ok)] = records_on(pid, before)
    assert seq > before and name == "len" and ok
    assert queued <= start <= end
    assert bytes_in >= 100_000 and 0 < bytes_out < 100


def test_a_result_kept_on_the_worker_counts_no_bytes_out(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    remotecall(bytes, pid, 1 << 20).wait()        # 1 MiB: stays there until fetched
    [record] = records_on(pid, before)
    assert record[1] == "bytes" and record[6] == 0


def test_internal_calls_are_not_recorded(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    for _ in range(3):
        records_on(pid)                           # `since` itself is internal
    assert records_on(pid, before) == []


def test_a_failed_call_leaves_its_traceback(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    with pytest.raises(RemoteException):
        remotecall_fetch(double, pid, None)
    records, errors = remotecall_fetch(since, pid, before)
    [record] = records
    assert record[1] == "double" and record[7] is False
    [(seq, _time, name, text)] = errors
    assert seq == record[0] and name == "double" and "TypeError" in text


def test_remote_do_calls_are_recorded_too(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    remote_do(double, pid, 1)
    records = wait_until(lambda: records_on(pid, before), what="the remote_do's record")
    assert [r[1] for r in records] == ["double"]


def test_pmap_batches_are_named_after_the_function(cluster):
    before = {pid: last_seq(pid) for pid in cluster}
    assert pmap(double, range(20), batch_size=5) == [2 * x for x in range(20)]
    names = [r[1] for pid in cluster for r in records_on(pid, before[pid])]
    assert len(names) == 4 and set(names) == {"double"}


def test_calls_through_a_caching_pool_are_named_after_the_function(cluster):
    pool = CachingPool(cluster)
    before = {pid: last_seq(pid) for pid in cluster}
    assert remotecall_fetch(double, pool, 3) == 6
    assert pmap(double, range(8), pool=pool) == [2 * x for x in range(8)]
    names = [r[1] for pid in cluster for r in records_on(pid, before[pid])]
    assert names and set(names) == {"double"}


def test_the_ring_keeps_only_the_last_calls(no_workers):
    [pid] = addprocs(1, env={"PYDIST_TIMINGS_KEPT": "8"})
    try:
        for x in range(20):
            remotecall_fetch(double, pid, x)
        assert [r[0] for r in records_on(pid)] == list(range(13, 21))
    finally:
        rmprocs(pid, waitfor=30)


def test_timings_kept_0_records_nothing(no_workers):
    [pid] = addprocs(1, env={"PYDIST_TIMINGS_KEPT": "0"})
    try:
        remotecall_fetch(double, pid, 1)
        assert records_on(pid) == []
    finally:
        rmprocs(pid, waitfor=30)


class _Proxy:
    """Makes up any attribute it is asked for, as RPC proxies do."""

    def __getattr__(self, name):
        return lambda *args: (self, args)

    def __call__(self, x):
        return x


def test_a_callable_that_makes_up_attributes_is_named_by_its_type(cluster):
    pid = cluster[0]
    before = last_seq(pid)
    assert remotecall_fetch(_Proxy(), pid, 5) == 5
    assert [r[1] for r in records_on(pid, before)] == ["_Proxy"]
