"""everywhere(): code and functions on every process."""

import sys

import pytest

from pydist import RemoteException, addprocs, everywhere, myid, procs, remotecall_fetch


def main_attr(name):
    return getattr(sys.modules["__main__"], name, None)


def test_code_string_runs_in_main_of_every_process(cluster):
    everywhere("pydist_test_value = 17")
    for pid in procs():
        assert remotecall_fetch(main_attr, pid, "pydist_test_value") == 17


def test_callable_is_called_on_every_process(cluster):
    everywhere(lambda: setattr(sys.modules["__main__"], "pydist_seen", myid()))
    for pid in procs():
        assert remotecall_fetch(main_attr, pid, "pydist_seen") == pid


def test_decorator_defines_the_function_in_main_everywhere(cluster):
    @everywhere
    def pydist_helper(x):
        return x + myid()
    assert pydist_helper(1) == 2
    for pid in cluster:
        assert remotecall_fetch(lambda: main_attr("pydist_helper")(1), pid) == pid + 1


def test_procs_restricts_where_it_runs(cluster):
    everywhere("pydist_only_here = True", procs=[cluster[0]])
    assert remotecall_fetch(main_attr, cluster[0], "pydist_only_here") is True
    assert remotecall_fetch(main_attr, cluster[1], "pydist_only_here") is None


def test_failure_anywhere_raises_remote_exception(cluster):
    with pytest.raises(RemoteException):
        everywhere("raise ValueError('no')", procs=cluster)


def test_workers_added_later_do_not_replay_it(cluster):
    everywhere("pydist_replayed = True", procs=cluster)
    [new] = addprocs(1)
    assert remotecall_fetch(main_attr, new, "pydist_replayed") is None
