"""SSHManager: machine specs and options without sshd; then real workers over a real sshd.

`ssh`-marked tests use the loopback sshd (127.0.0.1:2222, `.ci/sshd.sh`) and two containers of
`pydist-sshhost:test` on a private Docker network (conftest_ssh.py).  No mocks.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time

import cloudpickle
import paramiko
import pytest

import infra
from conftest import wait_relayed, wait_until
from conftest_ssh import (LOOPBACK, SSHD_PORT, SSHHOST_IMAGE, docker, loopback, no_workers, pid_gone,  # noqa: F401
                          ssh_flags, sshhosts)
from pydist.managers import SSHManager
from pydist.managers._openssh import _host_matches, _parse_sshflags, _resolve
from pydist import (LaunchError, RemoteChannel, RemoteException, addprocs, default_addprocs_params, interrupt,
                    remote_do, remotecall, remotecall_fetch, rmprocs, settings, workers)
from pydist.cluster import registry

# The containers do not have this file: functions defined here travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def params(**kw) -> dict:
    return {**default_addprocs_params(), "worker_timeout": 60.0, **kw}


# -- machine specs, options and commands (no sshd) --------------------------------------------------
@pytest.mark.parametrize("spec, want", [
    ("h", ("h", None)), ("u@h", ("h", None)), ("u@h:22", ("h", 22)), ("h:2222", ("h", 2222)),
    ("[::1]:2", ("::1", 2)), ("u@[fe80::1]", ("fe80::1", None)), ("::1", ("::1", None)),
    ("u@h:22 10.0.0.5", ("h", 22)), ("a.b-c.example:65535", ("a.b-c.example", 65535)),
])
def test_parse_machine_splits_host_and_port(spec, want):
    assert SSHManager.parse_machine(spec) == want


@pytest.mark.parametrize("spec, bad", [
    ("h:x", "'x'"), ("h:0", "'0'"), ("h:65536", "'65536'"), ("h:", "''"), ("[::1:22", "'[::1:22'"),
    ("[::1]22", "'22'"), ("h:22:33", "'h:22:33'"), ("", "no host"), ("u@", "no host"),
])
def test_parse_machine_rejects_bad_port_or_bracket_naming_it(spec, bad):
    with pytest.raises(ValueError, match=bad.replace("[", r"\[")):
        SSHManager.parse_machine(spec)


def test_machine_entries_take_counts_auto_and_bind_address():
    m = SSHManager(["h", ("u@h:2", 3), ("h", "auto"), "u@h:22 10.0.0.5"]).machines
    assert [(x.host, x.user, x.port, x.bind, x.count) for x in m] == [
        ("h", None, None, "0.0.0.0", 1), ("h", "u", 2, "0.0.0.0", 3), ("h", None, None, "0.0.0.0", "auto"),
        ("h", "u", 22, "10.0.0.5", 1)]


@pytest.mark.parametrize("entry", [("h", -1), ("h", "many"), ("h", True), ("h a b", 1)])
def test_machine_entry_with_bad_count_or_words_raises(entry):
    with pytest.raises(ValueError):
        SSHManager([entry])


def test_sshflags_read_as_openssh_options_first_value_first():
    got = _parse_sshflags(["-i", "k1", "-ik2", "-p", "2200", "-l", "bob", "-o", "Port=1", "-oUser carol",
                           "-o", "StrictHostKeyChecking=accept-new", "-C", "-q"])
    assert got == {"identityfile": ["k1", "k2"], "port": ["2200", "1"], "user": ["bob", "carol"],
                   "stricthostkeychecking": ["accept-new"], "compression": ["yes"]}


@pytest.mark.parametrize("flags", [["-X"], ["-o", "ForwardAgent=yes"], ["-i"], "-L 80:h:80"])
def test_sshflags_unsupported_or_incomplete_raise_naming_the_flag(flags):
    with pytest.raises(ValueError, match="sshflags"):
        _parse_sshflags(flags)


def test_target_takes_spec_then_sshflags_then_keywords_then_ssh_config(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host alias\n  HostName 10.1.2.3\n  User carol\n  Port 2200\n  IdentityFile ~/k\n"
                      "  ProxyJump jump@login:2022\n  StrictHostKeyChecking no\n")
    ssh_config = paramiko.SSHConfig.from_path(str(config))
    t = _resolve("alias", None, None, params(), {}, ssh_config)
    assert (t.host, t.user, t.port, t.strict) == ("10.1.2.3", "carol", 2200, "no")
    assert t.key_files == [os.path.expanduser("~/k")]
    assert [(j.host, j.user, j.port) for j in t.jumps] == [("login", "jump", 2022)]
    t = _resolve("alias", "dave", 22, params(accept_new_host_keys=True, known_hosts="/kh"),
                 _parse_sshflags(["-l", "erin", "-p", "1", "-i", "/k2"]), ssh_config)
    assert (t.user, t.port, t.strict, t.known_hosts) == ("dave", 22, "accept-new", ["/kh"])
    assert t.key_files[0] == "/k2"


@pytest.mark.parametrize("patterns, name, want", [
    ("*", "[10.0.0.1]:22", True), ("10.0.0.*", "10.0.0.7", True), ("10.0.0.?", "10.0.0.17", False),
    ("*.example,!bad.example", "bad.example", False), ("*.example,!bad.example", "ok.example", True),
    ("[127.0.0.1]:*", "[127.0.0.1]:2222", True), ("HOST*", "host1", True),
])
def test_known_hosts_patterns_match_like_openssh(patterns, name, want):
    assert _host_matches(patterns, name) is want


def test_worker_command_quotes_every_word_and_has_no_cookie(tmp_path):
    weird = str(tmp_path / "a dir; $(touch x) 'q'")
    env = {"PYDIST_T": "a b'c $HOME", "PLAIN": "1"}
    cmd = SSHManager.worker_command(params(dir=weird, env=env, exeflags=["-X", "dev"]), "10.0.0.5")
    words = shlex.split(cmd)
    assert words[words.index("cd") + 2] == weird
    assert "PYDIST_T=a b'c $HOME" in words and "PYDIST_WORKER_TIMEOUT=60" in words
    assert words[-8:] == ["python3", "-X", "dev", "-m", "pydist.worker", "--bind-to", "10.0.0.5", "2>&1"]
    from pydist import cluster_cookie
    assert cluster_cookie() not in cmd


def test_worker_command_defaults_python3_and_soft_cd_to_the_masters_dir():
    cmd = SSHManager.worker_command(params())
    assert f"cd -- {shlex.quote(os.getcwd())} 2>/dev/null || cd;" in cmd
    assert " python3 -m pydist.worker --bind-to 0.0.0.0" in cmd
    assert "cd" not in SSHManager.worker_command(params(dir=None)).split("exec")[0].replace("echo", "")
    assert '"$HOME"/venv/bin/python3 ' in SSHManager.worker_command(params(exename="~/venv/bin/python3"))
    with pytest.raises(ValueError, match="posix"):
        SSHManager.worker_command(params(shell="csh"))


# -- loopback sshd -----------------------------------------------------------------------------------
def _getpid() -> int:
    return os.getpid()


@pytest.mark.ssh
def test_two_workers_start_over_ssh_and_compute(loopback, no_workers):
    ids = addprocs([(loopback, 2)], sshflags=ssh_flags())
    assert ids == sorted(ids) and len(ids) == 2 and workers() == ids
    assert [remotecall_fetch(lambda x: x * x, p, 7) for p in ids] == [49, 49]
    assert remotecall_fetch(lambda other: remotecall_fetch(_getpid, other), ids[0], ids[1]) == \
        remotecall_fetch(_getpid, ids[1])


@pytest.mark.ssh
def test_auto_starts_one_worker_per_core_of_the_host(loopback, no_workers):
    cores = int(subprocess.check_output(infra.ssh_argv(port=SSHD_PORT) + ["nproc"], text=True))
    ids = addprocs([(loopback, "auto")], sshflags=ssh_flags())
    assert len(ids) == cores


@pytest.mark.ssh
def test_openssh_style_flags_give_key_port_user_and_known_hosts(loopback, no_workers):
    flags = ["-i", str(infra.SSH_KEY), "-p", str(SSHD_PORT), "-l", "root", "-o", "IdentitiesOnly=yes",
             "-o", f"UserKnownHostsFile={infra.SSH_KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes"]
    [pid] = addprocs(["127.0.0.1"], sshflags=flags)
    assert remotecall_fetch(lambda: __import__("getpass").getuser(), pid) == "root"


@pytest.mark.ssh
def test_ssh_config_host_alias_is_honoured(loopback, no_workers, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host pydist-loop\n  HostName 127.0.0.1\n  Port {SSHD_PORT}\n  User root\n"
                      f"  IdentityFile {infra.SSH_KEY}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {infra.SSH_KNOWN_HOSTS}\n")
    [pid] = addprocs(["pydist-loop"], ssh_config=str(config))
    assert remotecall_fetch(lambda: 1 + 1, pid) == 2


@pytest.mark.ssh
@pytest.mark.parametrize("tunnel, multiplex", [(True, False), (False, True), (True, True)])
def test_tunnel_and_multiplex_carry_calls_and_large_data(loopback, no_workers, tunnel, multiplex):
    ids = addprocs([(loopback, 2)], sshflags=ssh_flags(), tunnel=tunnel, multiplex=multiplex)
    data = os.urandom(3 << 20)
    assert remotecall_fetch(lambda b: b[::-1], ids[0], data) == data[::-1]
    assert remotecall_fetch(lambda other: remotecall_fetch(lambda: 5, other), ids[1], ids[0]) == 5


@pytest.mark.ssh
def test_env_and_dir_reach_the_worker_quoted(loopback, no_workers, tmp_path):
    weird = tmp_path / "a dir 'q' $x"
    weird.mkdir()
    value = "a b'c $HOME \"d\""
    [pid] = addprocs([loopback], sshflags=ssh_flags(), dir=str(weird), env={"PYDIST_T": value})
    assert remotecall_fetch(lambda: (os.getcwd(), os.environ["PYDIST_T"]), pid) == (str(weird), value)


@pytest.mark.ssh
def test_worker_output_is_relayed_with_its_id_stdout_to_stdout_stderr_to_stderr(loopback, no_workers, capsys):
    [pid] = addprocs([loopback], sshflags=ssh_flags())
    since = time.time()
    remotecall_fetch(lambda: (print("hello over ssh", flush=True),
                              print("and stderr", file=sys.stderr, flush=True)), pid)
    out, err = wait_relayed(capsys, since, "and stderr", "hello over ssh", timeout=20)
    assert f"From worker {pid}:\thello over ssh" in out
    assert f"From worker {pid}:\tand stderr" in err and "and stderr" not in out


@pytest.mark.ssh
@pytest.mark.parametrize("tunnel", [False, True])
def test_rmprocs_leaves_no_remote_process(loopback, no_workers, tunnel):
    ids = addprocs([(loopback, 2)], sshflags=ssh_flags(), tunnel=tunnel, multiplex=tunnel)
    ospids = [remotecall_fetch(_getpid, p) for p in ids]
    rmprocs(*ids, waitfor=30)
    assert workers() == [1]
    wait_until(lambda: all(pid_gone(p) for p in ospids), 10, f"worker processes {ospids} to exit")


@pytest.mark.ssh
def test_kill_stops_a_worker_that_cannot_answer_with_signals(loopback, no_workers, monkeypatch):
    monkeypatch.setattr(settings, "EXIT_TIMEOUT", 1.0)
    monkeypatch.setattr(settings, "TERM_TIMEOUT", 1.0)
    [pid] = addprocs([loopback], sshflags=ssh_flags())
    ospid = remotecall_fetch(_getpid, pid)
    os.kill(ospid, signal.SIGSTOP)          # it can neither answer nor act on SIGTERM now
    rmprocs(pid, waitfor=30)
    wait_until(lambda: pid_gone(ospid), 10, f"the stopped worker {ospid} to be killed")


@pytest.mark.ssh
def test_interrupt_raises_keyboard_interrupt_in_the_remote_call(loopback, no_workers):
    [pid] = addprocs([loopback], sshflags=ssh_flags())
    started = RemoteChannel()
    future = remotecall(lambda ch: (ch.put(True), time.sleep(60)), pid, started)
    wait_until(started.isready, 10, "the call to start on the worker")
    interrupt(pid)
    with pytest.raises(RemoteException, match="KeyboardInterrupt"):
        future.fetch()
    assert remotecall_fetch(lambda: "still serving", pid) == "still serving"


@pytest.mark.ssh
def test_worker_that_exits_by_itself_has_its_ssh_session_closed(loopback, no_workers):
    [pid] = addprocs([loopback], sshflags=ssh_flags())
    remote = registry()[pid].config.userdata
    remote_do(os._exit, pid, 3)
    wait_until(lambda: not remote.conn.transport.is_active(), 15, "the SSH connection to close")
    assert remote.channel.recv_exit_status() == 3


@pytest.mark.ssh
def test_remote_workers_exit_when_the_master_dies(loopback, tmp_path):
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, pydist
        ids = pydist.addprocs([({LOOPBACK!r}, 2)], sshflags={ssh_flags()!r}, tunnel=True)
        print(*[pydist.remotecall_fetch(os.getpid, p) for p in ids], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=os.getcwd())
    ospids = [int(w) for w in done.stdout.split() if w.isdigit()]
    assert len(ospids) == 2, done.stdout + done.stderr
    wait_until(lambda: all(pid_gone(p) for p in ospids), 30, f"orphaned workers {ospids} to exit")


# -- failures ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ssh
def test_unreachable_host_is_a_launch_error_naming_it_and_good_hosts_stay(loopback, no_workers):
    port = _free_port()
    with pytest.raises(LaunchError) as info:
        addprocs([loopback, f"root@127.0.0.1:{port}"], sshflags=ssh_flags())
    err = info.value
    [(what, why)] = err.failures
    assert f"127.0.0.1:{port}" in what and "cannot reach" in why
    assert len(err.added) == 1 and workers() == err.added
    assert remotecall_fetch(lambda: 6 * 7, err.added[0]) == 42


@pytest.mark.ssh
def test_refused_key_is_a_launch_error_saying_so(loopback, no_workers, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(LaunchError) as info:
        addprocs([loopback], sshflags=ssh_flags(key))
    [(what, why)] = info.value.failures
    assert "127.0.0.1" in what and "refused authentication" in why and str(key) in why
    assert info.value.added == [] and workers() == [1]


@pytest.mark.ssh
def test_unknown_host_key_is_refused_by_default(loopback, no_workers, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(LaunchError) as info:
        addprocs([loopback], sshflags=ssh_flags(known_hosts=empty, strict=False))
    [(what, why)] = info.value.failures
    assert f"[127.0.0.1]:{SSHD_PORT}" in why and "not in known_hosts" in why and "SHA256:" in why
    assert empty.read_text() == ""


@pytest.mark.ssh
def test_accept_new_host_keys_records_the_key_then_checks_it(loopback, no_workers, tmp_path):
    known = tmp_path / "known_hosts"
    flags = ["-i", str(infra.SSH_KEY), "-o", "IdentitiesOnly=yes"]
    [pid] = addprocs([loopback], sshflags=flags, known_hosts=str(known), accept_new_host_keys=True)
    assert known.read_text().split()[:2] == [f"[127.0.0.1]:{SSHD_PORT}", "ssh-ed25519"]
    rmprocs(pid, waitfor=30)
    assert len(addprocs([loopback], sshflags=flags, known_hosts=str(known))) == 1


@pytest.mark.ssh
def test_changed_host_key_is_refused(loopback, no_workers, tmp_path):
    known = tmp_path / "known_hosts"
    kind, b64 = infra.SSH_PUBKEY.read_text().split()[:2]      # some other ed25519 key
    known.write_text(f"[127.0.0.1]:{SSHD_PORT} {kind} {b64}\n")
    with pytest.raises(LaunchError) as info:
        addprocs([loopback], sshflags=ssh_flags(known_hosts=known))
    assert "differs" in info.value.failures[0][1]


@pytest.mark.ssh
def test_worker_that_never_prints_its_address_times_out_and_is_stopped(loopback, no_workers, tmp_path):
    pids = tmp_path / "pids"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\necho starting\nsleep 600 &\necho $$ $! > {pids}\nwait\n")
    script.chmod(0o755)
    with pytest.raises(LaunchError) as info:
        addprocs([loopback], sshflags=ssh_flags(), exename=str(script), worker_timeout=3)
    [(what, why)] = info.value.failures
    assert "127.0.0.1" in what and "no address line within 3 s" in why and "starting" in why
    left = [int(p) for p in pids.read_text().split()]
    wait_until(lambda: all(pid_gone(p) for p in left), 20, f"the hung worker's processes {left} to end")


@pytest.mark.ssh
def test_missing_python_is_a_launch_error_with_the_shell_output(loopback, no_workers):
    with pytest.raises(LaunchError) as info:
        addprocs([loopback], sshflags=ssh_flags(), exename="/nonexistent/python3")
    [(what, why)] = info.value.failures
    assert "127.0.0.1" in what and "/nonexistent/python3" in why and "before printing its address" in why


# -- remote hosts: containers on a private network --------------------------------------------------
@pytest.mark.ssh
@pytest.mark.parametrize("tunnel, multiplex", [(False, False), (True, False), (False, True), (True, True)])
def test_workers_on_two_hosts_call_each_other(sshhosts, no_workers, tunnel, multiplex):
    a, b = sshhosts
    n = 2 if multiplex else 1
    ids = addprocs([(f"root@{a.ip}", n), (f"root@{b.ip}", n)], sshflags=ssh_flags(),
                   tunnel=tunnel, multiplex=multiplex)
    names = {p: remotecall_fetch(socket.gethostname, p) for p in ids}
    assert sorted(names.values()) == sorted([a.name] * n + [b.name] * n)
    on_a = [p for p in ids if names[p] == a.name]
    on_b = [p for p in ids if names[p] == b.name]
    assert remotecall_fetch(lambda o: remotecall_fetch(socket.gethostname, o), on_a[0], on_b[0]) == b.name
    assert remotecall_fetch(lambda o: remotecall_fetch(socket.gethostname, o), on_b[0], on_a[0]) == a.name
    rmprocs(*ids, waitfor=30)
    wait_until(lambda: not a.worker_pids() and not b.worker_pids(), 15, "no worker left in the containers")


@pytest.mark.ssh
def test_bind_address_after_a_space_with_tunnel_reaches_a_loopback_only_worker(sshhosts, no_workers):
    a, _ = sshhosts
    [pid] = addprocs([f"root@{a.ip} 127.0.0.1"], sshflags=ssh_flags(), tunnel=True)
    assert remotecall_fetch(socket.gethostname, pid) == a.name     # the master cannot dial it directly


@pytest.mark.ssh
def test_non_root_user_starts_in_its_home(sshhosts, no_workers):
    a, _ = sshhosts
    [pid] = addprocs([f"pydist@{a.ip}"], sshflags=ssh_flags())
    assert remotecall_fetch(lambda: (__import__("getpass").getuser(), os.getcwd()), pid) == \
        ("pydist", "/home/pydist")


@pytest.mark.ssh
def test_proxyjump_through_a_login_node(loopback, sshhosts, no_workers, tmp_path):
    a, _ = sshhosts
    config = tmp_path / "ssh_config"
    config.write_text(f"Host inner\n  HostName {a.ip}\n  User root\n  ProxyJump {LOOPBACK}\n"
                      f"Host *\n  IdentityFile {infra.SSH_KEY}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {infra.SSH_KNOWN_HOSTS}\n")   # for the jump host too
    [pid] = addprocs(["inner"], ssh_config=str(config), tunnel=True)
    assert remotecall_fetch(socket.gethostname, pid) == a.name


@pytest.mark.ssh
def test_missing_pydist_on_the_host_is_a_launch_error_with_its_output(sshhosts, no_workers):
    a, _ = sshhosts
    with pytest.raises(LaunchError) as info:
        addprocs([f"root@{a.ip}"], sshflags=ssh_flags(), exename="/usr/bin/python3")
    [(what, why)] = info.value.failures
    assert a.ip in what and "No module named" in why and "pydist" in why
    wait_until(lambda: not a.worker_pids(), 10, "no worker left in the container")


@pytest.mark.ssh
def test_one_good_host_and_one_stopped_host_keeps_the_good_one(sshhosts, no_workers):
    a, _ = sshhosts
    gone = f"{a.name}-stopped"
    docker("run", "-d", "--init", "--network", a.network, "--label", f"{infra.CI_LABEL}=1", "--name", gone,
           SSHHOST_IMAGE)
    try:
        ip = infra.container_ip(gone)
    finally:
        docker("rm", "-f", gone)
    with pytest.raises(LaunchError) as info:
        addprocs([f"root@{a.ip}", f"root@{ip}"], sshflags=ssh_flags(timeout=3), tunnel=True)
    [(what, why)] = info.value.failures
    assert ip in what and "cannot reach" in why
    [pid] = info.value.added
    assert remotecall_fetch(socket.gethostname, pid) == a.name


@pytest.mark.ssh
def test_master_death_ends_tunnelled_workers_on_a_host(sshhosts, tmp_path):
    a, _ = sshhosts
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, pydist
        ids = pydist.addprocs([("root@{a.ip}", 2)], sshflags={ssh_flags()!r}, tunnel=True, multiplex=True)
        print(len(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2", done.stdout + done.stderr
    wait_until(lambda: not a.worker_pids(), 30, "the orphaned workers in the container to exit")
