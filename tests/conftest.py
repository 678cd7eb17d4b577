"""Shared fixtures: real workers, and a check that none is left behind.

The pytest process is the master (process 1) for every test; each test that adds workers
removes them again through the `cluster` fixtures, so tests do not depend on each other.
"""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from pydist import addprocs, rmprocs, workers  # noqa: E402


def remove_all_workers() -> None:
    ids = [p for p in workers() if p != 1]
    if ids:
        rmprocs(*ids, waitfor=30)


def wait_until(condition, timeout: float = 10.0, what: str = "condition", period: float = 0.02):
    """Wait for condition() to be truthy, re-checking every `period` s; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(period)


def wait_relayed(capture, since: float, *texts: str, timeout: float = 10.0) -> tuple[str, str]:
    """`capture`'s (capfd or capsys) (out, err) once every one of `texts` was in a line the
    master relayed after `since` (time.time()).  It watches pydist.output.recent_output, which
    gets a line once it is written, then reads `capture` once.  Polling readouterr() instead
    loses lines: pytest reads its capture and then truncates it, and what another thread writes
    in between is gone (half of 20,000 lines, written by one thread while another polled)."""
    from pydist import output

    def seen(text: str) -> bool:
        return any(when >= since and text in line for when, _, line in list(output.recent_output))
    wait_until(lambda: all(map(seen, texts)), timeout, f"the relayed lines {texts}")
    return capture.readouterr()


@pytest.fixture
def cluster():
    """Two fresh local workers; removed afterwards. Yields their ids."""
    remove_all_workers()
    ids = addprocs(2)
    yield ids
    remove_all_workers()


@pytest.fixture
def cluster4():
    """Four fresh local workers; removed afterwards."""
    remove_all_workers()
    ids = addprocs(4)
    yield ids
    remove_all_workers()


@pytest.fixture
def no_workers():
    """No workers at all: the master alone."""
    remove_all_workers()
    yield
    remove_all_workers()


@pytest.fixture
def joined_worker(no_workers, tmp_path):
    """One worker started as `pydist worker --join` (it dials the master, as pods and batch
    jobs do), added with an ElasticManager; yields (its id, its Popen)."""
    import subprocess
    import sys
    from pydist import cluster_cookie
    from pydist.managers.elastic import ElasticManager
    manager = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=60)
    host, port = manager.address
    cookie = tmp_path / "cookie"
    cookie.write_text(cluster_cookie())
    cookie.chmod(0o600)
    worker = subprocess.Popen([sys.executable, "-m", "pydist", "worker", "--join", f"{host}:{port}",
                               "--cookie-file", str(cookie)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        [pid] = addprocs(manager)
        yield pid, worker
    finally:
        remove_all_workers()
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
