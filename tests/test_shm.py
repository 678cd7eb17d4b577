"""Large buffers through shared memory between processes on one host (pydist/shm.py):
values arrive intact, nothing is left in the shared-memory directory whoever dies, and a
full file system falls back to the socket."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import remove_all_workers, wait_until
from pydist import addprocs, remotecall_fetch, settings
from pydist.cluster import registry
from pydist.process import STATE
from pydist.shm import Segments, forget

# Every out-of-band buffer goes through shared memory in these tests, however small.
EVERYTHING = {"PYDIST_SHM_BYTES": "1"}


@pytest.fixture
def shared(monkeypatch):
    """Two workers, master and workers sending every buffer through shared memory."""
    monkeypatch.setattr(settings, "SHM_BYTES", 1)
    remove_all_workers()
    ids = addprocs(2, env=EVERYTHING)
    assert all(STATE.links[pid].segments is not None for pid in ids)
    yield ids
    remove_all_workers()


def cluster_files() -> list[str]:
    return [f for f in os.listdir(settings.SHM_DIR) if f.startswith(f"pydist-{STATE.cluster_id}-")]


def _echo(x):
    return x


def _size_and_echo(x):
    return x.nbytes, x


ARRAYS = [
    np.arange(1_000_000, dtype=np.float64),
    np.arange(12, dtype=np.int8).reshape(3, 4),
    np.ones((3, 5, 7), dtype=np.complex128, order="F"),
    np.array([True, False] * 5000),
    np.arange(100_000, dtype=np.uint16)[::3],               # not contiguous: pickled in band
    np.zeros(0, dtype=np.float32),
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
    np.datetime64("2026-12-06") + np.arange(1000),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_arrays_cross_intact_both_ways_and_between_workers(shared, array):
    a, b = shared
    back = remotecall_fetch(_echo, a, array)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    size, again = remotecall_fetch(lambda x, peer: remotecall_fetch(_size_and_echo, peer, x), a, array, b)
    assert size == array.nbytes and np.array_equal(again, array)
    assert cluster_files() == []


def test_a_received_array_is_writable_and_private(shared):
    original = np.arange(1000.0)
    back = remotecall_fetch(_echo, shared[0], original)
    back[:] = -1
    assert original[5] == 5.0 and back.flags.writeable


def test_memory_is_reused_once_the_receiver_drops_it(shared):
    link = STATE.links[shared[0]]
    for _ in range(20):
        remotecall_fetch(len, shared[0], np.ones(4 << 20, dtype=np.uint8))
    assert len(link.segments.arenas) <= 3          # not one arena per message


def _stopped_receiver_script(directory):
    return textwrap.dedent("""
        import os, signal, sys, time
        import numpy as np
        from pydist import addprocs, remote_do, remotecall_fetch
        from pydist.process import STATE
        [w] = addprocs(1)
        ospid = remotecall_fetch(os.getpid, w)
        print(STATE.cluster_id, ospid, flush=True)
        os.kill(ospid, signal.SIGSTOP)                       # it reads nothing from now on
        remote_do(len, w, np.ones(8 << 20, dtype=np.uint8))  # an arena it will not open
        print("sent", flush=True)
        time.sleep(60)
    """)


def test_no_arena_is_left_when_the_master_is_killed(tmp_path):
    script = tmp_path / "master.py"
    script.write_text(_stopped_receiver_script(settings.SHM_DIR))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **EVERYTHING})
    try:
        cluster, ospid = proc.stdout.readline().split()
        assert proc.stdout.readline().strip() == "sent"
        def names():
            return [f for f in os.listdir(settings.SHM_DIR) if f.startswith(f"pydist-{cluster}-")]
        assert names(), "the arena should wait for its receiver"
        proc.kill()
        proc.wait()
        os.kill(int(ospid), signal.SIGCONT)           # the worker finds its master gone
        wait_until(lambda: not os.path.exists(f"/proc/{ospid}"), 30, "the worker to exit")
        assert names() == []
    finally:
        proc.kill()


def test_no_arena_is_left_when_its_receiving_worker_is_killed(shared):
    victim = shared[0]
    ospid = registry()[victim].config.ospid
    os.kill(ospid, signal.SIGSTOP)
    from pydist import remote_do
    remote_do(len, victim, np.ones(8 << 20, dtype=np.uint8))
    assert cluster_files(), "the arena should wait for its receiver"
    os.kill(ospid, signal.SIGKILL)
    wait_until(lambda: victim in STATE.dead, 30, "the killed worker to be seen")
    wait_until(lambda: cluster_files() == [], 10, "its arena to be removed")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_shared_memory_falls_back_to_the_socket(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        script = tmp_path / "master.py"
        script.write_text(textwrap.dedent("""
            import numpy as np
            from pydist import addprocs, remotecall_fetch
            [w] = addprocs(1)
            a = np.arange(4 << 20, dtype=np.float64)            # 32 MB: more than the 4 MB there
            print("same", bool(np.array_equal(remotecall_fetch(lambda x: x, w, a), a)), flush=True)
        """))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYDIST_SHM_DIR": str(small), "PYDIST_SHM_BYTES": "1"})
        assert "same True" in done.stdout, done.stderr
        assert "large buffers go through the socket instead" in done.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_place_the_peer_may_not_send_is_refused(tmp_path):
    theirs = Segments("c0ffee", 3, 1, str(tmp_path))       # process 3 sending to 1
    mine = Segments("c0ffee", 1, 2, str(tmp_path))         # process 1's link to process 2
    place = theirs.export(memoryview(b"x" * 5000))
    with pytest.raises(OSError):                            # 2's names only: 3's is not opened
        mine.attach(place)
    ours = Segments("c0ffee", 2, 1, str(tmp_path)).export(memoryview(b"y" * 5000))
    number = int.from_bytes(ours[:4], "big")
    with pytest.raises(ValueError, match="outside"):
        mine.attach(number.to_bytes(4, "big") + (1 << 40).to_bytes(8, "big") + (10).to_bytes(8, "big"))
    theirs.close()
    forget("c0ffee", 1, 2, str(tmp_path))
    assert os.listdir(tmp_path) == []


def _shares_memory_with(peer):
    from pydist.process import get_link
    return get_link(peer).segments is not None


def test_workers_on_one_host_share_memory_with_each_other(shared):
    a, b = shared
    assert remotecall_fetch(_shares_memory_with, a, b) and remotecall_fetch(_shares_memory_with, b, a)


def test_links_made_while_workers_join_agree_on_shared_memory(monkeypatch):
    """lazy=False: a joining worker dials peers that do not know it yet; both ends of each
    link still agree, and a large array crosses it."""
    monkeypatch.setattr(settings, "SHM_BYTES", 1)
    remove_all_workers()
    try:
        a, b, c = addprocs(3, lazy=False, env=EVERYTHING)
        array = np.arange(2 << 20, dtype=np.float64)
        for x, y in ((c, a), (a, c), (b, a), (c, b)):
            assert remotecall_fetch(_shares_memory_with, x, y)
            size, again = remotecall_fetch(lambda arr, peer: remotecall_fetch(_size_and_echo, peer, arr),
                                           x, array, y)
            assert size == array.nbytes and np.array_equal(again, array)
    finally:
        remove_all_workers()


def _arenas_received():
    from pydist.process import STATE
    return len(STATE.links[1].segments.received)


def test_idle_arenas_past_the_keep_limit_are_given_back(shared, monkeypatch):
    from pydist import shm
    monkeypatch.setattr(shm, "KEEP_BYTES", 0)
    segments = STATE.links[shared[0]].segments
    for _ in range(5):
        remotecall_fetch(len, shared[0], np.ones(3 << 20, dtype=np.uint8))
    wait_until(lambda: not segments.arenas, 10, "the idle arenas to be dropped")
    wait_until(lambda: remotecall_fetch(_arenas_received, shared[0]) == 0, 10,
               "the worker to close its descriptors")


def _hold_result(n):
    return np.ones(n, dtype=np.uint8)


def test_arrays_the_master_keeps_do_not_count_against_a_workers_memory_limit(monkeypatch):
    """Results sent back through shared memory stay in the worker's arena while the master
    holds them: the limit counts the worker's own heap only."""
    monkeypatch.setattr(settings, "SHM_BYTES", 1)
    remove_all_workers()
    try:
        [w] = addprocs(1, memory_limit="200MB")
        kept = [remotecall_fetch(_hold_result, w, 60 << 20) for _ in range(5)]   # 300 MB in all
        assert sum(a.nbytes for a in kept) > 200 << 20
        assert remotecall_fetch(_hold_result, w, 10).sum() == 10     # still alive
    finally:
        remove_all_workers()
