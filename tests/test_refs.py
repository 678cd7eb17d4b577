"""Futures and RemoteChannels across processes, and distributed reference counting.

Counting is checked the way Julia's tests do: by asking the owner whether it still holds a
value under the reference's id (channel_from_id raises KeyError once it is freed)."""

import gc

import pytest

from conftest import wait_until
from pydist import (RRID, Channel, Future, InvalidStateError, RemoteChannel, RemoteException,
                    channel_from_id, fetch, isready, myid, put, remotecall, remotecall_fetch,
                    remoteref_id, take, wait)


def owner_holds(rrid) -> bool:
    try:
        channel_from_id(rrid)
        return True
    except KeyError:
        return False


def holds(pid, rrid) -> bool:
    return remotecall_fetch(owner_holds, pid, rrid)


def test_future_put_once_then_fetch(cluster):
    for pid in (1, cluster[0]):
        f = Future(pid)
        assert f.where == pid and f.whence == 1
        assert not isready(f)
        put(f, "OK")
        assert isready(f)
        with pytest.raises(InvalidStateError):
            put(f, "again")
        with pytest.raises(TypeError):
            take(f)
        assert fetch(f) == "OK"


def test_refs_with_the_same_rrid_compare_equal_and_hash_alike(cluster):
    f = Future(cluster[0])
    back = remotecall_fetch(lambda x: x, cluster[1], f)
    assert back == f and hash(back) == hash(f)
    assert remoteref_id(back) == remoteref_id(f) == RRID(1, f.id)


def test_fetched_future_is_freed_on_its_owner(cluster):
    for pid in (1, cluster[0]):
        f = remotecall(myid, pid)
        rrid = remoteref_id(f)
        assert holds(pid, rrid)
        assert fetch(f) == pid
        wait_until(lambda: not holds(pid, rrid), what="the owner to free a fetched Future")


def test_dropped_future_is_freed_on_its_owner(cluster):
    for pid in (1, cluster[0]):
        f = remotecall(myid, pid)
        rrid = remoteref_id(f)
        f.wait()
        assert holds(pid, rrid)
        del f
        gc.collect()
        wait_until(lambda: not holds(pid, rrid), what="the owner to free a dropped Future")


def test_future_sent_elsewhere_lives_until_every_holder_fetched(cluster):
    a, b = cluster
    f = remotecall(myid, a)
    rrid = remoteref_id(f)
    store = RemoteChannel(b)
    put(store, f)
    assert fetch(f) == a
    assert holds(a, rrid)                                # b still holds an unfetched copy
    remotecall_fetch(lambda r: fetch(fetch(r)), b, store)
    wait_until(lambda: not holds(a, rrid), what="the Future to be freed after b fetched it")


def test_unset_future_is_created_on_its_owner_only_when_used(cluster):
    a = cluster[0]
    f = Future(a)
    rrid = remoteref_id(f)
    assert not holds(a, rrid)
    isready(f)
    assert holds(a, rrid)
    put(f, "OK")                                         # put caches locally: the owner frees it
    assert not holds(a, rrid)
    assert fetch(f) == "OK"


def test_second_put_from_another_process_raises_remote_exception(cluster):
    a, b = cluster
    f = Future(a)
    store = RemoteChannel(b)
    put(store, f)
    put(f, "OK")
    assert holds(a, remoteref_id(f))

    def put_again(x):
        try:
            put(fetch(x), "OK")
            return 0
        except RemoteException:
            return 1
    assert remotecall_fetch(put_again, b, store) == 1


def test_cached_value_travels_with_the_future(cluster):
    f = remotecall(lambda: [1, 2, 3], cluster[0])
    f.fetch()
    assert remotecall_fetch(lambda x: x.isready() and x.fetch(), cluster[1], f) == [1, 2, 3]


def test_remote_channel_is_freed_when_the_last_holder_drops_it(cluster):
    for pid in (1, cluster[0]):
        rc = RemoteChannel(pid)
        put(rc, "OK")
        rrid = remoteref_id(rc)
        assert holds(pid, rrid)
        assert fetch(rc) == "OK"
        assert holds(pid, rrid)
        del rc
        gc.collect()
        wait_until(lambda: not holds(pid, rrid), what="the channel to be freed")


def test_remote_channel_sent_elsewhere_lives_until_that_copy_is_dropped(cluster):
    a, b = cluster
    rc = RemoteChannel(a)
    rrid = remoteref_id(rc)
    store = RemoteChannel(b)
    put(store, rc)
    del rc
    gc.collect()
    assert holds(a, rrid)
    remotecall_fetch(lambda s: (take(s), __import__("gc").collect(), None)[2], b, store)
    wait_until(lambda: not holds(a, rrid), what="the channel to be freed after b dropped it")


def test_channel_from_id_raises_key_error_for_unknown_ids():
    with pytest.raises(KeyError):
        channel_from_id(RRID(1, 10**9))


def test_channel_from_id_gives_a_future_value_in_a_one_slot_channel(cluster):
    f = Future(1)
    f_rrid = remoteref_id(f)
    isready(f)
    ch = channel_from_id(f_rrid)
    assert isinstance(ch, Channel) and ch.size == 1


def test_remote_channel_put_take_fetch_wait_from_any_process(cluster):
    a, b = cluster
    rc = RemoteChannel(a, size=10)
    remotecall_fetch(lambda c: [c.put(i) for i in range(3)], b, rc)
    assert isready(rc) and wait(rc) is rc
    assert fetch(rc) == 0
    assert [take(rc) for _ in range(3)] == [0, 1, 2]
    assert not isready(rc)


def test_take_on_a_closed_empty_remote_channel_raises_invalid_state(cluster):
    rc = RemoteChannel(cluster[0])
    rc.close()
    with pytest.raises(InvalidStateError):
        take(rc)
    with pytest.raises(InvalidStateError):
        rc.put(1)


def test_remote_channel_from_a_factory_runs_it_on_the_owner(cluster):
    rc = RemoteChannel(lambda: Channel(5), cluster[0])
    assert rc.where == cluster[0]
    for i in range(5):
        rc.put(i)
    assert remotecall_fetch(lambda r: channel_from_id(r).size, cluster[0], remoteref_id(rc)) == 5


def test_fetch_of_a_plain_value_returns_it():
    from unittest import mock
    assert fetch(42) == 42
    value = mock.Mock()            # makes up every attribute, _pydist_future_like and fetch too
    assert fetch(value) is value and not value.fetch.called


def test_wait_on_a_remote_channel_does_not_remove_the_item(cluster):
    rc = RemoteChannel(cluster[0])
    f = remotecall(lambda c: c.wait() and "waited", cluster[1], rc)
    rc.put("item")
    f.wait()
    assert take(rc) == "item"


def test_reference_tables_return_to_empty_after_many_calls(cluster):
    futures = [remotecall(myid, cluster[i % 2]) for i in range(100)]
    assert sum(f.fetch() for f in futures) == 50 * sum(cluster)
    del futures
    gc.collect()
    for pid in cluster:
        wait_until(lambda: remotecall_fetch(lambda: len(__import__("pydist.owners").owners._refs), pid) == 0,
                   what=f"worker {pid}'s reference table to empty")
