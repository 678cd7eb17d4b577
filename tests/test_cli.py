"""The `pydist` command: run a script with workers, machine files, joining workers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points, version

import pytest

from pydist import remotecall_fetch, rmprocs
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


def test_pydist_is_the_only_console_script():
    scripts = [ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("pydist")]
    assert scripts == ["pydist"]           # `pydist docker prune`, not a pydist-docker script


def test_python_m_pydist_is_the_pydist_command():
    done = subprocess.run([sys.executable, "-m", "pydist", "-p", "1", "-c", "from pydist import workers; "
                           "print(workers())"], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2]"


def test_version_prints_pydists_version():
    done = pydist("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"pydist {version('pydist')}"


def test_interactive_banner_shows_pydists_version_then_pythons():
    done = subprocess.run([sys.executable, "-m", "pydist", "-p", "1"], input="", capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f"pydist {version('pydist')} (Python {platform.python_version()}): workers [2]" in done.stderr


def test_worker_help_names_the_pydist_worker_command():
    done = pydist("worker", "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: pydist worker ")


def test_demo_subcommand_estimates_pi():
    done = pydist("demo", "-p", "2", "-n", "20000")
    assert done.returncode == 0, done.stderr
    assert "started workers [2, 3]" in done.stdout and "on 2 workers" in done.stdout


def test_docker_prune_subcommand_takes_the_prune_options():
    done = pydist("docker", "prune", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pydist docker prune ") and "--dry-run" in done.stdout


@pytest.mark.parametrize("args, says", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-p", "many", "-c", "pass"], "-p expects a number of workers or 'auto', not 'many'"),
    (["-p", "-3", "-c", "pass"], "-p expects a number of workers >= 0"),
    (["-p", "1", "no/such/script.py"], "no such file"),
    (["--machine-file", "no/such/hosts", "-c", "pass"], "--machine-file no/such/hosts: No such file"),
    (["--machine-file", "{bad_hosts}", "-c", "pass"], "line 2: worker count must be at least 1"),
    (["--machine-file", "{empty_hosts}", "-c", "pass"], "lists no machines"),
    (["--machine-file", "{tmp}", "-c", "pass"], "--machine-file {tmp}: Is a directory"),
    (["--machine-file", "{binary}", "-c", "pass"], "--machine-file {binary}: not a text file"),
    (["worker", "--cookie-file", "no/such/cookie"], "cannot read the cookie file no/such/cookie"),
    (["worker", "--join", "nohost", "--cookie-file", "{bad_hosts}"], "--join expects HOST:PORT"),
    (["worker", "--cookie-env", "PYDIST_NO_SUCH_VARIABLE"], "PYDIST_NO_SUCH_VARIABLE: that environment"),
    (["worker"], "expected the cluster cookie as the first line of stdin"),
    (["worker", "--tls-cert", "x"], "TLS needs all three"),
    (["worker", "--bogus"], "unrecognized arguments"),
    (["status", "--bogus"], "unrecognized arguments"),
    (["demo", "-p", "0"], "-p and -n must be at least 1"),
    (["docker", "prune", "--bogus"], "unrecognized arguments: --bogus"),
    (["docker"], "required: command"),
])
def test_a_bad_argument_or_file_is_a_one_line_error_with_exit_status_2(tmp_path, args, says):
    files = {"tmp": tmp_path, "bad_hosts": write(tmp_path / "bad", "node1\n0*node2\n"),
             "empty_hosts": write(tmp_path / "empty", "# nobody\n"), "binary": tmp_path / "binary"}
    files["binary"].write_bytes(b"\xff\xfe\x00node")
    done = pydist(*[arg.format(**files) for arg in args], cwd=tmp_path)
    assert done.returncode == 2
    assert says.format(**files) in done.stderr
    assert "Traceback" not in done.stderr
    if args[0] != "status":                # status keeps argparse's usage line (cli's status code)
        assert len(done.stderr.splitlines()) == 1, done.stderr


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


# -- pydist worker --join ------------------------------------------------------------------------
def test_worker_subcommand_joins_a_master(joined_worker):
    pid, worker = joined_worker
    assert remotecall_fetch(os.getpid, pid) == worker.pid
    rmprocs(pid, waitfor=30)
    assert worker.wait(30) is not None


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
