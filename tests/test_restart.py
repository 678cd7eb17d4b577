"""Workers that come back: addprocs(..., restart=True) replaces workers that die (SIGKILL, a
memory_limit), everywhere(..., new_workers=True) code reaches the replacements."""

import os
import signal
import sys

import pytest

from conftest import remove_all_workers, wait_until
from pydist import (ClusterManager, ProcessExitedException, addprocs, everywhere, pmap,
                    remotecall_fetch, rmprocs, workers)
from pydist.cluster import parse_size, registry


@pytest.fixture
def fresh():
    remove_all_workers()
    yield
    remove_all_workers()


def _ospid(pid):
    return registry()[pid].config.ospid


def _kill(pid):
    os.kill(_ospid(pid), signal.SIGKILL)


def _replacements(*dead, count=1):
    """A check: the workers other than `dead`, once `count` of them are there."""
    def check():
        now = [p for p in workers() if p != 1 and p not in dead]
        return now if len(now) == count else None
    return check


def _main_value(name):
    import sys
    return getattr(sys.modules["__main__"], name)


def test_a_killed_worker_is_replaced_by_a_new_one_with_a_new_id(fresh):
    first = addprocs(2, restart=True)
    _kill(first[0])
    now = wait_until(_replacements(first[0], count=2), timeout=30, what="a replacement")
    [new] = set(now) - {first[1]}
    assert new > max(first)
    assert remotecall_fetch(os.getpid, new) != _ospid(first[1])
    assert pmap(abs, range(-5, 0)) == [5, 4, 3, 2, 1]


def test_code_registered_for_new_workers_runs_on_the_replacement(fresh):
    [pid] = addprocs(1, restart=True)
    everywhere("RESTART_MARK = 'set up'", new_workers=True)
    try:
        _kill(pid)
        [new] = wait_until(_replacements(pid), timeout=30, what="a replacement")
        assert remotecall_fetch(_main_value, new, "RESTART_MARK") == "set up"
    finally:
        sys.modules["pydist.everywhere"]._for_new_workers.clear()


def test_workers_removed_by_rmprocs_are_not_replaced(fresh):
    ids = addprocs(2, restart=True)
    rmprocs(ids[0]).wait()
    assert workers() == [ids[1]]
    rmprocs(ids[1]).wait()
    assert workers() == [1]


def test_restart_gives_up_after_its_limit(fresh):
    [pid] = addprocs(1, restart=1)
    _kill(pid)
    [second] = wait_until(_replacements(pid), timeout=30, what="the one replacement")
    _kill(second)
    wait_until(lambda: workers() == [1], timeout=30, what="the second death to be seen")
    assert all(r.state.value == "exited" for r in registry().values() if r.pid in (pid, second))


def _hog(megabytes):
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    import time
    time.sleep(30)


def test_a_worker_over_its_memory_limit_exits_and_is_replaced(fresh):
    [pid] = addprocs(1, restart=True, memory_limit="200MB")
    with pytest.raises(ProcessExitedException, match="memory_limit"):
        remotecall_fetch(_hog, pid, 400)
    [new] = wait_until(_replacements(pid), timeout=30, what="a replacement")
    assert remotecall_fetch(sum, new, [1, 2, 3]) == 6


def test_pmap_goes_on_while_a_worker_is_killed_and_replaced(fresh):
    ids = addprocs(2, restart=True)

    def run(x):
        import time
        from pydist import myid
        if myid() == ids[0] and x >= 20:      # whichever element it gets first past 20
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.005)
        return x
    assert pmap(run, range(200)) == list(range(200))
    wait_until(lambda: len(workers()) == 2 and ids[0] not in workers(), timeout=30,
               what="the replacement")


class _NoReplacements(ClusterManager):
    def launch(self, params, launched, notify):
        pass

    def manage(self, pid, config, op):
        pass


def test_a_manager_that_cannot_replace_workers_refuses_restart(fresh):
    with pytest.raises(TypeError, match="_NoReplacements cannot start a replacement"):
        addprocs(_NoReplacements(), restart=True)


@pytest.mark.parametrize("bad", [{"restart": "always"}, {"restart": -1}, {"memory_limit": "lots"},
                                 {"memory_limit": 0}])
def test_bad_restart_or_memory_limit_values_are_refused(fresh, bad):
    with pytest.raises(ValueError):
        addprocs(1, **bad)
    assert workers() == [1]


@pytest.mark.parametrize("text, size", [("2GB", 2 << 30), ("512MiB", 512 << 20), ("1.5 g", 3 << 29),
                                        (1000, 1000), ("100k", 100 << 10), (None, None)])
def test_sizes_are_read_in_powers_of_1024(text, size):
    assert parse_size(text, "memory_limit") == size
