"""The remotecall family, with real worker processes."""

import os
import threading
import time

import pytest
from conftest import wait_relayed

from pydist import (Future, RemoteChannel, RemoteException, fetch, fetchany, fetchfrom, myid,
                    remote_do, remotecall, remotecall_fetch, remotecall_wait, spawn, spawnat,
                    take, workers)


def add(x, y=0):
    return x + y


def test_remotecall_fetch_passes_positional_and_keyword_arguments(cluster):
    assert remotecall_fetch(add, cluster[0], 1, y=2) == 3


def test_lambdas_and_closures_travel_by_value(cluster):
    base = 10
    assert remotecall_fetch(lambda x: x + base, cluster[1], 5) == 15


def test_importable_functions_travel_by_reference(cluster):
    assert remotecall_fetch(os.getpid, cluster[0]) != os.getpid()


def test_remotecall_returns_a_future_owned_by_the_callee(cluster):
    fut = remotecall(myid, cluster[0])
    assert isinstance(fut, Future)
    assert fut.where == cluster[0] and fut.whence == 1
    assert fetch(fut) == cluster[0]


def test_remotecall_wait_returns_a_ready_future(cluster):
    fut = remotecall_wait(add, cluster[0], 2, 3)
    assert fut.isready()
    assert fut.fetch() == 5


def test_remotecall_to_self_runs_here(cluster):
    assert remotecall_fetch(myid, 1) == 1
    assert fetch(remotecall(myid, 1)) == 1


def test_errors_raise_remote_exception_with_the_original_and_its_traceback(cluster):
    def fail():
        raise KeyError("missing")
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(fail, cluster[0])
    assert info.value.pid == cluster[0]
    assert isinstance(info.value.captured, KeyError)
    assert "fail" in str(info.value) and f"On worker {cluster[0]}" in str(info.value)


def test_a_failed_future_raises_every_time_also_locally(cluster):
    for pid in (cluster[0], 1):
        fut = remotecall(lambda: 1 / 0, pid)
        for _ in range(2):
            with pytest.raises(RemoteException):
                fut.fetch()
        with pytest.raises(RemoteException):
            fut.wait()


def test_remotecall_wait_raises_when_the_call_failed(cluster):
    with pytest.raises(RemoteException):
        remotecall_wait(lambda: 1 / 0, cluster[0])


def test_exception_unknown_to_the_caller_arrives_as_captured_exception(cluster):
    def fail():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("cannot pickle me")
        raise Local("boom")
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(fail, cluster[0])
    from pydist import CapturedException
    assert isinstance(info.value.captured, CapturedException)
    assert "boom" in str(info.value.captured) and "Local" in info.value.captured.type_name


def test_unpicklable_argument_fails_that_call_and_the_link_survives(cluster):
    with pytest.raises(Exception):
        remotecall_fetch(add, cluster[0], threading.Lock())
    assert remotecall_fetch(add, cluster[0], 1, 1) == 2


def test_unpicklable_result_raises_remote_exception_and_the_link_survives(cluster):
    with pytest.raises(RemoteException):
        remotecall_fetch(threading.Lock, cluster[0])
    assert remotecall_fetch(add, cluster[0], 2, 2) == 4


class Unloadable:
    """Pickles fine, fails to unpickle anywhere."""
    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise ValueError("refusing to unpickle")


def test_argument_that_cannot_be_unpickled_on_the_callee_raises_remote_exception(cluster):
    with pytest.raises(RemoteException, match="refusing"):
        remotecall_fetch(lambda x: x, cluster[0], Unloadable())
    assert remotecall_fetch(add, cluster[0], 3, 3) == 6


def test_result_that_cannot_be_unpickled_on_the_caller_raises_remote_exception(cluster):
    with pytest.raises(RemoteException, match="refusing"):
        remotecall_fetch(Unloadable, cluster[0])
    assert remotecall_fetch(add, cluster[0], 4, 4) == 8


def test_a_call_blocked_in_take_does_not_block_other_calls(cluster):
    ch = RemoteChannel(cluster[0])
    blocked = remotecall(take, cluster[0], ch)
    assert remotecall_fetch(add, cluster[0], 1, 1) == 2
    assert not blocked.isready()
    ch.put("go")
    assert blocked.fetch() == "go"


def test_a_worker_can_call_back_into_the_master_while_the_master_waits(cluster):
    assert remotecall_fetch(lambda: remotecall_fetch(myid, 1), cluster[0]) == 1


def test_workers_call_each_other_lazily_both_ways(cluster):
    a, b = cluster
    assert remotecall_fetch(lambda: remotecall_fetch(myid, b), a) == b
    assert remotecall_fetch(lambda: remotecall_fetch(myid, a), b) == a


def test_remote_do_returns_nothing_and_runs(cluster):
    ch = RemoteChannel(1)
    assert remote_do(lambda c: c.put(myid()), cluster[0], ch) is None
    assert ch.take() == cluster[0]


def test_remote_do_prints_its_error_on_the_worker(cluster, capfd):
    since = time.time()
    remote_do(lambda: 1 / 0, cluster[0])
    out, err = wait_relayed(capfd, since, "ZeroDivisionError")
    assert f"From worker {cluster[0]}:\tZeroDivisionError" in err and "ZeroDivisionError" not in out


def test_spawn_rotates_through_the_workers(cluster):
    assert sorted({spawn(myid).fetch() for _ in range(4)}) == workers()


def test_spawnat_any_and_fetchany_pick_workers(cluster):
    assert spawnat("any", myid).fetch() in cluster
    assert fetchany(myid) in cluster
    assert spawnat(cluster[1], add, 1, 2).fetch() == 3
    assert fetchfrom(cluster[0], add, 2, y=2) == 4


def test_many_concurrent_calls_all_complete(cluster):
    futures = [remotecall(add, cluster[i % 2], i, 1) for i in range(200)]
    assert [f.fetch() for f in futures] == [i + 1 for i in range(200)]


def test_large_numpy_arrays_round_trip_intact(cluster):
    np = pytest.importorskip("numpy")
    a = np.random.default_rng(0).random(2_000_000)
    assert remotecall_fetch(np.sum, cluster[0], a) == pytest.approx(a.sum())
    back = remotecall_fetch(lambda x: x * 2, cluster[0], a)
    assert back.flags.writeable and np.array_equal(back, a * 2)


def test_large_arrays_travel_out_of_band():
    np = pytest.importorskip("numpy")
    from pydist.serialize import dumps
    a = np.ones(1_000_000)
    body, buffers = dumps(a)
    assert len(body) < 1000
    assert len(buffers) == 1 and buffers[0].nbytes == a.nbytes
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=a.dtype), a)   # not copied on send


def test_interrupt_raises_keyboard_interrupt_in_the_running_call(cluster):
    from pydist import interrupt
    fut = remotecall(time.sleep, cluster[0], 60)
    started = time.monotonic()
    from conftest import wait_until
    wait_until(lambda: remotecall_fetch(lambda: len(__import__("pydist.calls").calls._running), cluster[0]),
               what="the sleep to start")
    interrupt(cluster[0])
    with pytest.raises(RemoteException) as info:
        fut.fetch()
    assert isinstance(info.value.captured, KeyboardInterrupt)
    assert time.monotonic() - started < 30
    assert remotecall_fetch(add, cluster[0], 1, 2) == 3     # the worker keeps serving


class _Sleeper:
    """A callable whose __getattr__ makes up every attribute, as a Mock's or an RPC proxy's does."""

    def __getattr__(self, name):
        return lambda *args: True

    def __call__(self, started, seconds):
        started.put(True)
        for _ in range(int(seconds * 100)):      # Python steps, where an interrupt lands
            time.sleep(0.01)


def test_a_callable_that_makes_up_attributes_is_a_user_call_that_interrupt_reaches(cluster):
    from pydist import RemoteChannel, interrupt
    started = RemoteChannel()
    fut = remotecall(_Sleeper(), cluster[0], started, 60)
    assert started.take(timeout=30)
    interrupt(cluster[0])
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=30)
    assert isinstance(info.value.captured, KeyboardInterrupt)


# -- calls run on the thread that read them (transport.Link.run_inline) ----------------------
def _spin_until_exists(path):
    while not os.path.exists(path):     # busy in Python: no pydist wait to hand reading off
        pass
    return "done"


def _wait_for_event_forever():
    threading.Event().wait()            # a wait pydist does not know about


def test_a_call_blocked_outside_pydist_does_not_stall_its_link(cluster):
    remote_do(_wait_for_event_forever, cluster[0])
    assert remotecall_fetch(add, cluster[0], 1, 2) == 3


def test_an_answer_is_not_held_behind_a_busy_call_that_arrived_with_it(no_workers, tmp_path):
    from pydist import addprocs
    from pydist.messages import Mode
    from pydist.process import get_link, result, send_call
    [worker] = addprocs(1)              # alone: no other traffic on its link flushes the answer
    flag = tmp_path / "go"
    assert remotecall_fetch(add, worker, 0) == 0    # this module is imported there now
    quick = send_call(worker, Mode.FETCH, add, (1, 2), flush=False)
    busy = send_call(worker, Mode.FETCH, _spin_until_exists, (str(flag),), flush=False)
    get_link(worker).flush()            # one write: the worker reads both calls at once
    # within 4 s: before a heartbeat (every 5 s on a quiet link) could flush it by chance
    assert quick.wait(timeout=4), "the quick call's answer stayed behind the busy call"
    assert result(quick) == 3
    flag.touch()
    assert result(busy) == "done"


def _append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def test_a_burst_of_unanswered_calls_is_all_delivered_without_further_traffic(cluster, tmp_path):
    from tests.conftest import wait_until
    path = tmp_path / "lines"
    for i in range(2000):               # back to back: most go out through the link's writer
        remote_do(_append_line, cluster[0], str(path), str(i))
    # no other call follows that could push queued frames out: the writer must have done it
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 2000,
               what="all 2000 remote_do calls to run")
    assert sorted(map(int, path.read_text().splitlines())) == list(range(2000))


def test_a_call_interrupted_while_sent_reaches_the_caller_or_its_callback_never_both(cluster, monkeypatch):
    from pydist.messages import Mode
    from pydist.process import STATE, send_call
    w = cluster[0]
    link = STATE.links[w]
    sent = link.send

    def send_then_interrupted(*args, **kwargs):
        sent(*args, **kwargs)            # the call goes out (and will be answered) ...
        raise KeyboardInterrupt          # ... and the sender is interrupted right after
    monkeypatch.setattr(link, "send", send_then_interrupted)
    answers = []
    with pytest.raises(KeyboardInterrupt):
        send_call(w, Mode.FETCH, add, (1, 2), on_done=answers.append)
    monkeypatch.undo()
    assert remotecall_fetch(add, w, 3, 4) == 7        # the link still works, in order
    time.sleep(0.2)
    assert answers == []                 # the caller had the outcome: the callback never runs
