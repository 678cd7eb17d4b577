"""Cluster status: every master answers `pydist status`; status rows; `--address`."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from conftest import wait_until
from pydist import RemoteChannel, remotecall, remotecall_fetch
from pydist.calls import new_lane
from pydist.messages import Mode
from pydist.process import result, send_call
from pydist.status import cluster_status, serve_status, stop_status
from pydist.web import dashboard, stop_dashboard
from test_cli import pydist, write

PLAIN_SCRIPT = """
    import subprocess, sys
    from pydist import addprocs
    addprocs(2)
    done = subprocess.run([sys.executable, "-m", "pydist.cli", "status", *sys.argv[1:]],
                          capture_output=True, text=True, timeout=60)
    print(done.stdout, done.stderr)
"""


def run_plain(script, *args, env=None) -> subprocess.CompletedProcess:
    """`python script.py ARGS`: a master that is no `pydist` command."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_cluster_status_has_a_row_per_process_with_running_calls(cluster):
    gate = RemoteChannel()
    blocked = remotecall(lambda g: g.take(), cluster[0], gate)
    try:
        rows = {row["id"]: row for row in cluster_status()}
        assert sorted(rows) == [1, *cluster]
        for pid in cluster:
            row = rows[pid]
            assert row["ospid"] == remotecall_fetch(os.getpid, pid)
            assert row["host"] == socket.gethostname()
            assert row["manager"] == "LocalManager"
            assert row["rss"] > 1 << 20 and row["uptime"] >= 0 and row["cpu"] >= 0
            assert row["error"] is None and row["queued"] == 0
        assert rows[cluster[0]]["calls"] == 1 and rows[cluster[1]]["calls"] == 0
        assert rows[1]["ospid"] == os.getpid()
    finally:
        gate.put("go")
        blocked.wait()


def test_cluster_status_counts_calls_waiting_behind_their_lane(cluster):
    gate = RemoteChannel()
    lane = new_lane()                    # one call at a time, as pmap sends its batches
    replies = [send_call(cluster[0], Mode.FETCH, lambda g: g.fetch(), (gate,), rrid=(0, lane))
               for _ in range(2)]
    try:
        wait_until(lambda: [r for r in cluster_status() if r["id"] == cluster[0]
                            and r["calls"] == 1 and r["queued"] == 1], what="1 call running, 1 queued")
    finally:
        gate.put("go")
        for reply in replies:
            result(reply)


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "status"
    path = serve_status(folder)
    yield folder, path
    stop_status()


def test_status_socket_is_private_to_the_user(cluster, served):
    folder, path = served
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_status_command_shows_the_workers_of_a_running_master(cluster, served):
    folder, _ = served
    done = pydist("status", "--dir", folder)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 worker(s)" in lines[0]
    assert lines[1].split() == ["id", "host", "ospid", "uptime", "calls", "rss"]
    for pid in cluster:
        [row] = [line.split() for line in lines[2:] if line.split()[0] == str(pid)]
        assert row[2] == str(remotecall_fetch(os.getpid, pid))


def test_status_json_lists_processes(cluster, served):
    folder, _ = served
    done = pydist("status", "--json", "--dir", folder)
    [snapshot] = json.loads(done.stdout)
    assert [row["id"] for row in snapshot["processes"]] == [1, *cluster]


def test_status_without_a_running_cluster_says_so(tmp_path):
    done = pydist("status", "--dir", tmp_path)
    assert done.returncode == 1 and "no running pydist cluster" in done.stderr


def test_status_removes_the_socket_of_a_master_that_is_gone(tmp_path):
    stale = tmp_path / "0123456789ab.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()                           # bound but nobody listens: like a killed master
    assert pydist("status", "--dir", tmp_path).returncode == 1
    assert not stale.exists()


def test_status_of_a_script_run_by_pydist_from_another_process(tmp_path):
    script = write(tmp_path / "job.py", """
        import subprocess, sys
        done = subprocess.run([sys.executable, "-m", "pydist.cli", "status"], capture_output=True,
                              text=True, timeout=60)
        print(done.stdout, done.stderr)
    """)
    done = pydist("-p", 2, script, env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "2 worker(s)" in done.stdout
    assert not list((tmp_path / ".pydist").glob("*.sock"))     # removed when the master ended


def test_a_plain_script_that_calls_addprocs_is_seen_by_pydist_status(tmp_path):
    done = run_plain(write(tmp_path / "plain.py", PLAIN_SCRIPT), env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "2 worker(s)" in done.stdout and "plain.py" in done.stdout
    assert not list((tmp_path / ".pydist").glob("*.sock"))


def test_pydist_status_0_keeps_a_master_out_of_pydist_status(tmp_path):
    done = run_plain(write(tmp_path / "plain.py", PLAIN_SCRIPT),
                     env={"HOME": str(tmp_path), "PYDIST_STATUS": "0"})
    assert done.returncode == 0, done.stderr
    assert "no running pydist cluster" in done.stdout
    assert not (tmp_path / ".pydist").exists()


def test_pydist_status_lists_every_cluster_of_the_user(cluster, tmp_path):
    serve_status(tmp_path / ".pydist")          # this process is one master, the script another
    try:
        done = run_plain(write(tmp_path / "plain.py", PLAIN_SCRIPT), "--json", env={"HOME": str(tmp_path)})
    finally:
        stop_status()
    assert done.returncode == 0, done.stderr
    snapshots = json.loads(done.stdout)
    assert len(snapshots) == 2
    assert sorted(len(s["processes"]) for s in snapshots) == [3, 3]


@pytest.fixture
def dashboard_url(cluster):
    yield dashboard(port=0)
    stop_dashboard()


def test_status_address_asks_a_masters_dashboard(dashboard_url, cluster):
    done = pydist("status", "--address", dashboard_url)
    assert done.returncode == 0, done.stderr
    assert "2 worker(s)" in done.stdout
    shown = {line.split()[0] for line in done.stdout.splitlines()[2:]}
    assert shown == {"1", *map(str, cluster)}


def test_status_address_without_the_token_is_refused(dashboard_url):
    done = pydist("status", "--address", dashboard_url.split("?")[0])
    assert done.returncode == 1
    assert "HTTP 403" in done.stderr and "token" in done.stderr
