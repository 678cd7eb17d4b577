"""Workers' output on the master: whole lines, `From worker N:`, stderr to stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import wait_relayed
from pydist import addprocs, remotecall_fetch, rmprocs
from pydist.output import STDERR_MARK, LineWriter, relay_output

TIMEOUT = 120
RELAYED = re.compile(r"^\s*From worker (\d+):\t(.*)$")


def run_script(tmp_path, code: str) -> subprocess.CompletedProcess:
    """Run `code` as a script with its stdout and stderr on two real pipes."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)


def relayed(text: str) -> list[tuple[int, str]]:
    return [(int(m.group(1)), m.group(2)) for m in map(RELAYED.match, text.splitlines()) if m]


def test_worker_stdout_goes_to_the_masters_stdout_and_stderr_to_its_stderr(tmp_path):
    done = run_script(tmp_path, """
        import sys, warnings
        from pydist import addprocs, remotecall_fetch, rmprocs
        [pid] = addprocs(1)
        def talk():
            print("to stdout")
            print("to stderr", file=sys.stderr)
            warnings.warn("a warning")
        remotecall_fetch(talk, pid)
        rmprocs(pid).wait()
    """)
    assert done.returncode == 0, done.stderr
    out, err = relayed(done.stdout), relayed(done.stderr)
    assert (2, "to stdout") in out and (2, "to stderr") in err
    assert any("UserWarning: a warning" in line for _, line in err)
    assert [line for _, line in out] == ["to stdout"]
    assert (2, "to stdout") not in err


def test_lines_printed_by_threads_of_one_worker_never_mix(tmp_path):
    done = run_script(tmp_path, """
        import threading
        from pydist import addprocs, remotecall_fetch, rmprocs
        [pid] = addprocs(1)
        def chatter():
            def say(who):
                for i in range(300):
                    print("ran", who, i)       # four writes each: "ran", " ", who, ...
            threads = [threading.Thread(target=say, args=(w,)) for w in "abcd"]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        remotecall_fetch(chatter, pid)
        rmprocs(pid).wait()
    """)
    assert done.returncode == 0, done.stderr
    lines = [line for _, line in relayed(done.stdout)]
    assert len(lines) == 4 * 300
    assert all(re.fullmatch(r"ran [abcd] \d+", line) for line in lines), \
        [line for line in lines if not re.fullmatch(r"ran [abcd] \d+", line)][:5]
    for who in "abcd":
        assert [line for line in lines if line.split()[1] == who] == [f"ran {who} {i}" for i in range(300)]


def test_a_joined_workers_stderr_reaches_the_masters_stderr(joined_worker, capfd):
    pid, _ = joined_worker
    since = time.time()
    remotecall_fetch(lambda: (print("joined out"), print("joined err", file=sys.stderr)), pid)
    out, err = wait_relayed(capfd, since, "joined err", "joined out")
    assert f"From worker {pid}:\tjoined err" in err and "joined err" not in out
    assert f"From worker {pid}:\tjoined out" in out and "joined out" not in err


def test_line_writer_passes_on_whole_lines_per_thread():
    got: list[str] = []
    writer = LineWriter(sys.__stdout__, got.extend)
    writer.write("one ")
    other = threading.Thread(target=lambda: writer.write("other thread\nand its rest"))
    other.start()
    other.join()
    writer.write("line\ntwo")
    assert got == ["other thread", "one line"]
    writer.drain()
    assert sorted(got[2:]) == ["and its rest", "two"]


def test_a_marked_line_is_relayed_on_stderr(capfd):
    relay_output(7, STDERR_MARK + "bad news")
    relay_output(7, "good news")
    out, err = capfd.readouterr()
    assert err == "      From worker 7:\tbad news\n" and out == "      From worker 7:\tgood news\n"


def test_a_worker_started_by_hand_in_a_terminal_prints_plain_lines():
    """No STDERR_MARK where a person reads the output: only a master reads marked lines."""
    import pty
    leader, follower = pty.openpty()
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from pydist.output import capture_output; "
                               "capture_output(); print('plain', file=sys.stderr)"],
                              stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    worker.wait(TIMEOUT)
    text = os.read(leader, 1000).decode()
    os.close(leader)
    assert "plain" in text and STDERR_MARK not in text


@pytest.mark.docker
def test_a_docker_workers_stderr_reaches_the_masters_stderr(no_workers, capfd):
    import infra
    infra.require(infra.docker_running(), "the Docker engine")
    image = os.environ.get("PYDIST_TEST_WORKER_IMAGE", infra.WORKER_IMAGE)
    infra.require(infra.image_exists(image), f"the worker image {image}")
    from pydist.managers.docker import DockerManager
    [pid] = addprocs(DockerManager(n=1, image=image))
    try:
        since = time.time()
        remotecall_fetch(lambda: (print("container out"), print("container err", file=sys.stderr),
                                  sys.stdout.flush(), sys.stderr.flush()), pid)
        out, err = wait_relayed(capfd, since, "container err", "container out", timeout=20)
        assert f"From worker {pid}:\tcontainer err" in err and "container err" not in out
        assert f"From worker {pid}:\tcontainer out" in out and "container out" not in err
    finally:
        rmprocs(pid, waitfor=60)
