"""Limits that turn overload into clear errors, and faults under load.

The long versions (PYDIST_LOAD_TASKS, PYDIST_SOAK_CALLS) run with `-m slow` and in the
reliability report; CI runs the shortened defaults."""

import gc
import os
import signal
import threading
import time

import pytest

from conftest import wait_until
from pydist import (RemoteChannel, addprocs, myid, pmap, remotecall,
                    remotecall_fetch, workers)
from pydist import settings


@pytest.fixture
def limits():
    saved = settings.MAX_FRAME_BYTES, settings.MAX_PENDING_CALLS
    yield settings
    settings.MAX_FRAME_BYTES, settings.MAX_PENDING_CALLS = saved


def test_a_message_over_the_frame_limit_is_a_clear_error_and_the_link_survives(cluster, limits):
    limits.MAX_FRAME_BYTES = 1 << 20
    with pytest.raises(ValueError, match="PYDIST_MAX_FRAME_BYTES"):
        remotecall_fetch(len, cluster[0], b"x" * (2 << 20))
    assert remotecall_fetch(len, cluster[0], b"x" * 1000) == 1000


def test_too_many_pending_calls_is_a_clear_error(cluster, limits):
    rc = RemoteChannel(cluster[0])
    limits.MAX_PENDING_CALLS = 5
    from pydist.calls import remotecall_wait
    blockers = [threading.Thread(target=lambda: remotecall_wait(rc.take, cluster[0]), daemon=True)
                for _ in range(5)]
    # remotecall_wait keeps a reply pending on the link until the take returns
    for t in blockers:
        t.start()
    from pydist.process import STATE
    wait_until(lambda: len(STATE.links[cluster[0]]._pending) >= 5, what="five pending calls")
    with pytest.raises(RuntimeError, match="PYDIST_MAX_PENDING_CALLS"):
        remotecall_fetch(myid, cluster[0])
    limits.MAX_PENDING_CALLS = 1_000_000
    for _ in range(5):
        rc.put(None)
    for t in blockers:
        t.join(10)


def _tiny(x):
    time.sleep(0.0005)
    return x * 3


def test_pmap_with_retries_survives_workers_killed_and_added(no_workers):
    tasks = int(os.environ.get("PYDIST_LOAD_TASKS", "3000"))
    addprocs(3)
    victims = list(workers()[:2])
    added = []

    def chaos():
        for victim in victims:
            time.sleep(0.3)
            os.kill(remotecall_fetch(os.getpid, victim), signal.SIGKILL)
            added.extend(addprocs(1))
    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    out = pmap(_tiny, range(tasks), retry_delays=[0.01] * 10)
    thread.join(60)
    assert out == [x * 3 for x in range(tasks)]          # all there, in order, none twice
    assert not set(victims) & set(workers())
    assert len(added) == 2


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _report(name: str, data: dict) -> None:
    """Save figures for the reliability report (bench/reliability.py) when it asks for them."""
    directory = os.environ.get("PYDIST_REPORT_DIR")
    if directory:
        import json
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(data, f)


def test_many_calls_and_channel_traffic_leave_the_reference_tables_empty(cluster):
    calls = int(os.environ.get("PYDIST_SOAK_CALLS", "3000"))
    megabytes = int(os.environ.get("PYDIST_SOAK_MB", "160"))
    a, b = cluster
    rss_before = {pid: remotecall_fetch(_rss_mb, pid) for pid in (1, a, b)}
    table_size = lambda: len(__import__("pydist.owners").owners._refs)   # noqa: E731
    before = {pid: remotecall_fetch(table_size, pid) for pid in (1, a, b)}
    total = 0
    for start in range(0, calls, 10_000):                   # bounded batches keep memory flat
        futures = [remotecall(myid, a if i % 2 else b) for i in range(start, min(calls, start + 10_000))]
        total += sum(f.fetch() for f in futures)
        del futures
    assert total == (calls // 2) * a + (calls - calls // 2) * b
    rc = RemoteChannel(a, size=4)
    np = pytest.importorskip("numpy")
    chunk = np.ones(1 << 20)                                # 8 MB a message
    n = max(1, megabytes // 8)
    producer = remotecall(lambda c, n: [c.put(chunk) for _ in range(n)] and None, b, rc, n)
    assert sum(rc.take().sum() for _ in range(n)) == n * chunk.size
    producer.fetch()
    del rc, producer
    gc.collect()
    for pid in (1, a, b):    # at most: references left by earlier tests may go meanwhile
        wait_until(lambda: remotecall_fetch(table_size, pid) <= before[pid],
                   what=f"process {pid}'s reference table to return to {before[pid]} entries")
    rss_after = {pid: remotecall_fetch(_rss_mb, pid) for pid in (1, a, b)}
    _report("soak", {"calls": calls, "megabytes": n * 8, "rss_before_mb": list(rss_before.values()),
                     "rss_after_mb": list(rss_after.values())})
