"""The `pydist` command: run a script with workers, machine files, joining workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

from pydist import addprocs, cluster_cookie, remotecall_fetch, rmprocs
from pydist.cli import main, parse_machine_file, parse_machine_line

TIMEOUT = 120


def pydist(*args, cwd=None, env=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run `pydist ARGS` (as `python -m pydist.cli`, the console script's code) and wait."""
    return subprocess.run([sys.executable, "-m", "pydist.cli", *map(str, args)], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_console_script_pydist_is_cli_main():
    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "pydist"]
    assert script.value == "pydist.cli:main"
    assert script.load() is main


# -- running a script ----------------------------------------------------------------------------
def test_p_runs_the_script_as_main_with_local_workers(tmp_path):
    write(tmp_path / "helper.py", """
        def triple(x):
            return 3 * x
    """)
    script = write(tmp_path / "job.py", """
        import os, sys
        from helper import triple
        from pydist import pmap, remotecall_fetch, workers

        def on_worker(x):                  # defined in the script: travels by value
            return triple(x), os.getpid()

        if __name__ == "__main__":
            print("argv", sys.argv[1:])
            print("workers", workers())
            results = pmap(on_worker, range(6))
            print("values", [v for v, _ in results])
            print("remote", all(pid != os.getpid() for _, pid in results))
    """)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = pydist("-p", 2, script, "--flag", "x", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "argv ['--flag', 'x']" in out
    assert "workers [2, 3]" in out
    assert "values [0, 3, 6, 9, 12, 15]" in out     # helper.py imported on the workers
    assert "remote True" in out


def test_the_exit_status_is_the_scripts(tmp_path):
    script = write(tmp_path / "fail.py", "raise SystemExit(3)\n")
    assert pydist("-p", 1, script).returncode == 3


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path):
    script = write(tmp_path / "boom.py", "raise RuntimeError('boom')\n")
    done = pydist("-p", 1, script)
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr


def test_c_runs_code_with_workers():
    done = pydist("-p", 2, "-c", "import sys; from pydist import workers; print(workers(), sys.argv)", "a")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 3] ['-c', 'a']"


def test_m_runs_a_module_as_main(tmp_path):
    write(tmp_path / "mymod.py", """
        import sys
        from pydist import remotecall_fetch, workers
        if __name__ == "__main__":
            print(sys.argv[1:], remotecall_fetch(lambda: __import__("mymod").__name__, workers()[0]))
    """)
    done = pydist("-p", 1, "-m", "mymod", "arg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['arg'] mymod"     # importable on the worker as well


def test_without_a_script_it_reads_commands_like_an_interactive_prompt():
    done = subprocess.run([sys.executable, "-m", "pydist.cli", "-p", "1"], input="print(workers())\n",
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "[2]" in done.stdout


def test_a_missing_script_is_reported():
    done = pydist("-p", 1, "no/such/script.py")
    assert done.returncode != 0 and "no such file" in done.stderr


def test_bad_p_value_is_reported(tmp_path):
    done = pydist("-p", "many", write(tmp_path / "s.py", "pass\n"))
    assert done.returncode != 0 and "'auto'" in done.stderr


# -- machine files -------------------------------------------------------------------------------
@pytest.mark.parametrize("line, want", [
    ("node1", ("node1", 1)),
    ("alice@node1", ("alice@node1", 1)),
    ("node1:2222", ("node1:2222", 1)),
    ("4*alice@node1:2222", ("alice@node1:2222", 4)),
    ("auto*node2", ("node2", "auto")),
    ("2*node3 10.0.0.5", ("node3 10.0.0.5", 2)),
    ("[::1]:22", ("[::1]:22", 1)),
    ("bob@[fe80::1]", ("bob@[fe80::1]", 1)),
    ("  node4   # the big one", ("node4", 1)),
    ("# a comment", None),
    ("   ", None),
])
def test_parse_machine_line_gives_an_addprocs_entry(line, want):
    assert parse_machine_line(line) == want


@pytest.mark.parametrize("line", ["0*node", "x*node", "node:ssh", "node:70000", "[::1", "a b c",
                                  "@node", "u@v@node"])
def test_parse_machine_line_rejects_a_bad_line(line):
    with pytest.raises(ValueError):
        parse_machine_line(line)


def test_parse_machine_file_reads_every_machine_and_names_a_bad_line(tmp_path):
    hosts = write(tmp_path / "hosts", """
        # workers for the nightly run
        2*alice@node1
        node2:2200 192.168.1.2
    """)
    assert parse_machine_file(hosts) == [("alice@node1", 2), ("node2:2200 192.168.1.2", 1)]
    write(hosts, "node1\n0*node2\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_machine_file(hosts)


def test_machine_file_without_machines_is_an_error(tmp_path):
    done = pydist("--machine-file", write(tmp_path / "hosts", "# nothing\n"), "-c", "pass")
    assert done.returncode != 0 and "lists no machines" in done.stderr


# -- pydist worker --join ------------------------------------------------------------------------
def test_worker_subcommand_joins_a_master(no_workers, tmp_path):
    from pydist.managers.elastic import ElasticManager
    manager = ElasticManager(n=1, host="127.0.0.1", port=0, timeout=60)
    host, port = manager.address
    cookie = tmp_path / "cookie"
    cookie.write_text(cluster_cookie())
    cookie.chmod(0o600)
    worker = subprocess.Popen([sys.executable, "-m", "pydist.cli", "worker", "--join", f"{host}:{port}",
                               "--cookie-file", str(cookie)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        [pid] = addprocs(manager)
        assert remotecall_fetch(os.getpid, pid) == worker.pid
        rmprocs(pid, waitfor=30)
        assert worker.wait(30) is not None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


@pytest.mark.ssh
def test_machine_file_starts_ssh_workers_for_the_script(tmp_path):
    import infra
    infra.require(infra.sshd_running(), f"the loopback sshd on {infra.SSHD_HOST}:{infra.SSHD_PORT}")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        f"Host pydist-loop\n  HostName {infra.SSHD_HOST}\n  Port {infra.SSHD_PORT}\n  User {infra.SSHD_USER}\n"
        f"  IdentityFile {infra.SSH_KEY}\n  IdentitiesOnly yes\n  UserKnownHostsFile {infra.SSH_KNOWN_HOSTS}\n")
    hosts = write(tmp_path / "hosts", "# the loopback sshd, as an ~/.ssh/config alias\n2*pydist-loop\n")
    script = write(tmp_path / "job.py", """
        import os
        from pydist import pmap, workers
        print("workers", workers())
        print("remote", all(pid != os.getpid() for pid in pmap(lambda _: os.getpid(), range(4))))
    """)
    done = pydist("--machine-file", hosts, script, env={"HOME": str(home)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workers [2, 3]" in done.stdout and "remote True" in done.stdout
