"""LocalManager: workers forked by the fork server, and spawned when it cannot be used."""

import os
import random
import signal

import pytest

from pydist.managers import LocalManager, _forkserver
from pydist import addprocs, remotecall_fetch, rmprocs, settings, workers
from tests.conftest import wait_until


def _parent_and_session():
    return os.getppid(), os.getsid(0)


def _draw():
    return random.random()


def _environment(name):
    return os.environ.get(name)


def test_workers_are_forked_by_one_server_in_sessions_of_their_own(cluster4):
    parents = {remotecall_fetch(_parent_and_session, w)[0] for w in cluster4}
    sessions = {remotecall_fetch(_parent_and_session, w)[1] for w in cluster4}
    assert len(parents) == 1 and parents != {os.getpid()}       # the fork server
    assert len(sessions) == 4 and os.getsid(0) not in sessions  # Ctrl-C reaches the master only


def test_forked_workers_do_not_share_random_state(cluster4):
    draws = [remotecall_fetch(_draw, w) for w in cluster4]
    assert len(set(draws)) == 4


def test_another_environment_gets_a_server_of_its_own(no_workers):
    [plain] = addprocs(1)
    [other] = addprocs(1, env={"PYDIST_TEST_MARK": "42"})
    assert remotecall_fetch(_environment, other, "PYDIST_TEST_MARK") == "42"
    assert remotecall_fetch(_environment, plain, "PYDIST_TEST_MARK") is None
    assert remotecall_fetch(os.getppid, plain) != remotecall_fetch(os.getppid, other)


def test_with_the_fork_server_off_workers_are_spawned(no_workers, monkeypatch):
    monkeypatch.setattr(settings, "FORK_SERVER", False)
    ids = addprocs(2)
    assert {remotecall_fetch(os.getppid, w) for w in ids} == {os.getpid()}


def test_a_dead_fork_server_leaves_its_workers_working_and_is_replaced(no_workers):
    first = addprocs(2)
    server = remotecall_fetch(os.getppid, first[0])
    [ours] = [s for s in _forkserver._servers.values() if s._process.pid == server]
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: ours._gone, what="the master to see its fork server gone")
    assert [remotecall_fetch(lambda: 7, w) for w in first] == [7, 7]
    [late] = addprocs(1)
    assert remotecall_fetch(os.getppid, late) not in (server, os.getpid())
    rmprocs(*first, late).wait()        # the orphans' exits are still noticed
    assert workers() == [1]


def test_a_fork_server_that_cannot_start_falls_back_to_spawning(no_workers):
    from pydist import LaunchError
    with pytest.raises(LaunchError) as info:     # the spawned worker fails the same way
        addprocs(1, exeflags=["-c", "import sys; sys.exit(3)"])
    assert info.value.added == [] and "exited before printing its address" in str(info.value.failures)
    added = addprocs(1)                      # a later launch works again
    assert workers() == added


def _master_link_family():
    from pydist.process import STATE
    return STATE.links[1].sock.family


@pytest.mark.parametrize("fork_server", [True, False])
def test_the_master_link_is_a_unix_socket_pair_and_peers_still_meet_over_tcp(no_workers, monkeypatch,
                                                                              fork_server):
    import socket
    from pydist.process import STATE
    monkeypatch.setattr(settings, "FORK_SERVER", fork_server)
    a, b = addprocs(2)
    assert STATE.links[a].sock.family == socket.AF_UNIX
    assert remotecall_fetch(_master_link_family, a) == socket.AF_UNIX
    # a worker-to-worker call dials the peer's TCP address from its address line
    assert remotecall_fetch(remotecall_fetch, a, os.getpid, b) == remotecall_fetch(os.getpid, b)


def _start_a_program_that_keeps_inherited_descriptors():
    import subprocess
    return subprocess.Popen(["sleep", "30"], close_fds=False).pid


@pytest.mark.parametrize("fork_server", [True, False])
def test_a_killed_worker_is_seen_at_once_even_if_a_program_it_started_lives_on(no_workers, monkeypatch,
                                                                               fork_server):
    monkeypatch.setattr(settings, "FORK_SERVER", fork_server)
    [w] = addprocs(1)
    helper = remotecall_fetch(_start_a_program_that_keeps_inherited_descriptors, w)
    try:
        os.kill(remotecall_fetch(os.getpid, w), signal.SIGKILL)
        # the helper must not hold the worker's end of the link open (heartbeats take ~35 s)
        wait_until(lambda: w not in workers(), timeout=5, what=f"worker {w} to be seen gone")
    finally:
        os.kill(helper, signal.SIGKILL)


def test_an_interpreter_wrapper_that_closes_descriptors_still_gets_its_worker(no_workers, tmp_path):
    import sys
    wrapper = tmp_path / "python-closing-fds"
    wrapper.write_text(f"#!{sys.executable}\nimport os, sys\nos.closerange(3, 4096)\n"
                       f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    [w] = addprocs(1, exename=str(wrapper))
    assert remotecall_fetch(lambda: 6 * 7, w) == 42


def test_a_users_own_managers_module_does_not_shadow_pydist_managers(tmp_path):
    """A managers.py (or managers/ package) in the working directory is the user's, not ours."""
    import subprocess
    import sys
    (tmp_path / "managers.py").write_text("raise SystemExit('the user managers.py was imported')\n")
    script = ("from pydist import addprocs, remotecall_fetch, rmprocs\n"
              "from pydist.managers import LocalManager, KubernetesManager\n"
              "[w] = addprocs(1)\n"
              "print(remotecall_fetch(lambda: 6 * 7, w))\n"
              "rmprocs(w).wait()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


@pytest.mark.parametrize("keyword", ["tunnel", "multiplex", "sshflags", "max_parallel", "shell", "bogus"])
def test_a_keyword_local_manager_does_not_take_raises_type_error_naming_the_accepted_ones(no_workers, keyword):
    with pytest.raises(TypeError, match=rf"'{keyword}': LocalManager does not take them; it accepts .*restrict"):
        addprocs(1, **{keyword: True})
    assert workers() == [1]


def _bound_to():
    from pydist.process import STATE
    return STATE.listener.getsockname()[0]


@pytest.mark.parametrize("manager, keywords, bound", [
    (lambda: 1, {}, "127.0.0.1"), (lambda: 1, {"restrict": False}, "0.0.0.0"),
    (lambda: LocalManager(1, restrict=False), {}, "0.0.0.0"),
    (lambda: LocalManager(1, restrict=False), {"restrict": True}, "127.0.0.1")])
def test_restrict_binds_local_workers_to_loopback_or_every_interface(no_workers, manager, keywords, bound):
    [w] = addprocs(manager(), **keywords)
    assert remotecall_fetch(_bound_to, w) == bound
