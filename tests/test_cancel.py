"""Stopping work: timeouts on every blocking call, Future.cancel, and Ctrl-C during pmap.

Ctrl-C is tested as a user meets it: a real SIGINT to a real master process, and the
interrupt character typed into the terminal (a pty) of an interactive Python session."""

import concurrent.futures
import math
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from conftest import wait_until
from pydist import (Channel, Future, RemoteChannel, RemoteException, fetch, interrupt, pmap, put, remotecall,
                    remotecall_fetch, take, wait)
from pydist.calls import wait_idle
from pydist.owners import _refs


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def _held_refs() -> int:
    return len(_refs)


@pytest.mark.parametrize("owner", ["master", "worker"])
def test_fetch_times_out_and_a_later_fetch_still_works(cluster, owner):
    pid = 1 if owner == "master" else cluster[0]
    fut = Future(pid)
    with pytest.raises(TimeoutError, match="not ready within"):
        fetch(fut, timeout=0.2)
    with pytest.raises(TimeoutError):
        fut.fetch(timeout=0)
    put(fut, "late")
    assert fetch(fut, timeout=5) == "late"


def test_wait_times_out_on_a_running_call_then_succeeds(cluster):
    fut = remotecall(_sleep, cluster[0], 0.5)
    with pytest.raises(TimeoutError):
        wait(fut, timeout=0.05)
    assert wait(fut, timeout=30) is fut and fetch(fut) == 0.5


@pytest.mark.parametrize("owner", ["master", "worker"])
def test_take_times_out_and_takes_nothing(cluster, owner):
    rc = RemoteChannel(1 if owner == "master" else cluster[0], 10)
    with pytest.raises(TimeoutError):
        take(rc, timeout=0.1)
    with pytest.raises(TimeoutError):
        wait(rc, timeout=0.1)
    with pytest.raises(TimeoutError):
        rc.fetch(timeout=0.1)
    rc.put(1)
    rc.put(2)
    assert take(rc, timeout=5) == 1 and take(rc) == 2


def test_a_long_timed_take_from_another_process_can_be_interrupted(cluster):
    rc = RemoteChannel(cluster[1])               # stays empty
    started = RemoteChannel()

    def long_take(rc, started):
        started.put(True)
        return take(rc, timeout=3600)
    fut = remotecall(long_take, cluster[0], rc, started)
    assert started.take(timeout=30)
    time.sleep(0.3)                              # well inside the take's wait
    interrupt(cluster[0])
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=30)
    assert isinstance(info.value.captured, KeyboardInterrupt)


def test_a_local_channel_take_times_out():
    ch = Channel(1)
    with pytest.raises(TimeoutError):
        take(ch, timeout=0.05)
    with pytest.raises(TimeoutError):
        ch.fetch(timeout=0.05)
    with pytest.raises(ValueError):
        ch.take(timeout=-1)
    ch.put("x")
    assert ch.take(timeout=1) == "x"


def test_remotecall_fetch_times_out_and_the_worker_stays_usable(cluster):
    with pytest.raises(TimeoutError, match=f"process {cluster[0]} did not answer"):
        remotecall_fetch(_sleep, cluster[0], 1.0, timeout=0.1)
    assert remotecall_fetch(_sleep, cluster[0], 0, timeout=30) == 0


def test_an_unset_future_is_cancelled_at_once_everywhere(cluster):
    fut = Future(cluster[0])
    assert fut.cancel() and fut.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        fetch(fut)
    with pytest.raises(RemoteException) as raised:
        remotecall_fetch(fetch, cluster[1], fut)        # another process sees it cancelled
    assert isinstance(raised.value.captured, concurrent.futures.CancelledError)
    with pytest.raises(Exception):
        put(fut, 1)                                     # a cancelled Future stays cancelled
    assert "cancelled" in repr(fut)


def test_cancel_leaves_a_running_call_alone_unless_asked_to_interrupt(cluster):
    fut = remotecall(_sleep, cluster[0], 30)
    wait_until(lambda: not remotecall_fetch(wait_idle, cluster[0], 0), what="the call to start")
    assert fut.cancel() is False and not fut.cancelled()
    assert fut.cancel(interrupt=True) is True
    assert fut.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.fetch()
    assert remotecall_fetch(wait_idle, cluster[0], 5), "the interrupted call still runs"


def test_a_finished_future_cannot_be_cancelled(cluster):
    fut = remotecall(_sleep, cluster[0], 0)
    assert fetch(fut) == 0
    assert fut.cancel(interrupt=True) is False and not fut.cancelled()


def test_a_cancel_storm_leaves_workers_idle_and_no_references_behind(cluster):
    before = {pid: remotecall_fetch(_held_refs, pid) for pid in cluster}
    futures = [remotecall(_sleep, cluster[i % 2], 60) for i in range(1000)]
    assert all(fut.cancel(interrupt=True) for fut in futures)
    assert all(fut.cancelled() for fut in futures)
    for pid in cluster:
        assert remotecall_fetch(wait_idle, pid, 10), f"worker {pid} still runs cancelled calls"
    del futures
    for pid in cluster:
        wait_until(lambda: remotecall_fetch(_held_refs, pid) <= before[pid],
                   what=f"worker {pid} to free the cancelled Futures")


# -- pmap: one batch at a time per worker, and cancelled by an interrupt ----------------------
_running = 0
_most = 0


def _count_concurrency(x):
    global _running, _most
    _running += 1
    _most = max(_most, _running)
    time.sleep(0.02)
    _running -= 1
    return x


def _most_at_once():
    global _most
    most, _most = _most, 0
    return most


def test_pmap_runs_one_element_at_a_time_on_each_worker(cluster):
    assert pmap(_count_concurrency, range(40)) == list(range(40))
    assert [remotecall_fetch(_most_at_once, pid) for pid in cluster] == [1, 1]


def test_pmap_per_worker_runs_that_many_at_once(cluster):
    assert pmap(_count_concurrency, range(60), per_worker=3) == list(range(60))
    assert max(remotecall_fetch(_most_at_once, pid) for pid in cluster) == 3


def test_pmap_per_worker_must_be_positive(cluster):
    with pytest.raises(ValueError, match="per_worker"):
        pmap(abs, range(3), per_worker=0)


_SIGINT_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pydist import Executor, addprocs, pmap, remotecall_fetch
    from pydist.calls import wait_idle
    marks = sys.argv[1]

    def job(i):
        open(os.path.join(marks, str(i)), "w").close()
        time.sleep(2)
        return i

    ids = addprocs(2)
    print("ready", flush=True)
    try:
        {call}
    except KeyboardInterrupt:
        started = len(os.listdir(marks))
        idle = [remotecall_fetch(wait_idle, pid, 1.0) for pid in ids]
        time.sleep(0.5)                                 # nothing queued may start meanwhile
        print("interrupted", started, len(os.listdir(marks)), idle, flush=True)
        print("next", pmap(abs, range(-4, 0)), flush=True)
""")


@pytest.mark.parametrize("call", ["pmap(job, range(30))",
                                  "pmap(job, range(30), progress=True)",
                                  "list(Executor().map(job, range(30)))"])
def test_sigint_during_a_map_cancels_it_on_the_workers(tmp_path, call):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "job.py"
    script.write_text(_SIGINT_SCRIPT.format(call=call))
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: len(os.listdir(marks)) >= 2, what="both workers to start an element")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "interrupted" in lines, (out, err)
    started, later, idle = lines["interrupted"].split(" ", 2)
    assert int(started) == 2 and int(later) == 2, "queued elements started after the interrupt"
    assert idle == "[True, True]", "the running elements were not interrupted"
    assert lines["next"] == "[4, 3, 2, 1]"


def test_ctrl_c_typed_in_a_terminal_stops_pmap_and_its_progress_bar(tmp_path):
    """A REPL user presses Ctrl-C: the prompt comes back, the bar stops, the workers are free."""
    pid, fd = pty.fork()
    if pid == 0:                                        # the child: an interactive Python
        os.execv(sys.executable, [sys.executable, "-q", "-i", "-c",
                                  "from pydist import addprocs, pmap; import time; addprocs(2)"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a terminal's size
    seen = b""

    def read_until(token: bytes, timeout: float = 30) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while token not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {token!r} in the terminal; it shows:\n{seen.decode(errors='replace')}")
            if select.select([fd], [], [], remaining)[0]:
                seen += os.read(fd, 65536)
        before, _, seen = seen.partition(token)
        return before

    try:
        read_until(b">>> ")
        os.write(fd, b"pmap(lambda x: time.sleep(1), range(40), progress=True)\n")
        read_until(b"/40")                                 # the bar is drawn
        os.write(fd, b"\x03")                              # Ctrl-C
        read_until(b"KeyboardInterrupt")
        read_until(b">>> ")
        os.write(fd, b"print('back', pmap(abs, range(-3, 0)))\n")
        read_until(b"back [3, 2, 1]")
        read_until(b">>> ")
        time.sleep(1.5)                                    # a live bar would redraw meanwhile
        if select.select([fd], [], [], 0)[0]:
            seen += os.read(fd, 65536)
        assert b"task" not in seen, f"the progress bar still draws: {seen!r}"
        os.write(fd, b"exit()\n")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def _pid_after(seconds):
    import os
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.parametrize("n", [2, 3, 4])
def test_slow_elements_spread_over_idle_workers_first(cluster, n):
    """Nothing waits behind a slow element while a worker is idle (Julia: each free worker
    takes the next element)."""
    ran_on = pmap(_pid_after, [0.3] * n)
    per_worker = sorted(ran_on.count(p) for p in set(ran_on))
    assert len(set(ran_on)) == 2 and per_worker[-1] == math.ceil(n / 2), ran_on


def _wait_for_the_next(rc, i):
    if i == 0:
        return take(rc, timeout=30)          # filled by element 1, on the other worker
    put(rc, "from 1")
    return "put"


def test_an_element_waiting_for_the_next_one_gets_it_from_another_worker(cluster):
    rc = RemoteChannel(1, 1)
    assert pmap(_wait_for_the_next, [rc, rc], [0, 1]) == ["from 1", "put"]


class SlowToSend:
    """Pickling it anywhere but where it was made takes 2 s: an owner that answers late."""

    def __init__(self):
        import os
        self.made_in = os.getpid()

    def __reduce__(self):
        import os
        if os.getpid() != self.made_in:
            time.sleep(2)
        return (_remade, (self.made_in,))


def _remade(made_in):
    item = SlowToSend.__new__(SlowToSend)
    item.made_in = made_in
    return item


def test_an_item_the_owner_gives_a_take_that_gave_up_is_put_back(cluster):
    rc = RemoteChannel(cluster[0], 10)
    rc.put(SlowToSend())
    with pytest.raises(TimeoutError):
        take(rc, timeout=0.1)                 # the owner takes it, but answers after 2 s
    assert isinstance(take(rc, timeout=30), SlowToSend)   # back in the channel, not lost


def test_a_distributed_task_can_be_waited_for_with_a_timeout(cluster):
    from pydist import distributed
    task = distributed(_sleep, [0.5, 0.5])
    with pytest.raises(TimeoutError):
        wait(task, timeout=0.05)
    assert wait(task, timeout=30) is task


def test_a_timed_out_call_no_longer_counts_as_in_flight(cluster):
    from pydist.process import STATE
    with pytest.raises(TimeoutError):
        remotecall_fetch(_sleep, cluster[0], 0.5, timeout=0.01)
    assert not STATE.links[cluster[0]]._pending
