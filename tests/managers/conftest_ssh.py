"""Fixtures for the SSHManager tests: the loopback sshd and two SSH "remote hosts".

The loopback sshd is the one `.ci/sshd.sh start` runs on 127.0.0.1:2222.  The remote hosts are
two containers of `pydist-sshhost:test` on a private Docker network made here; both are removed
at teardown.  PYDIST_TEST_SSHD_PORT and PYDIST_TEST_SSHHOST_IMAGE point the tests at another sshd
or image, for a checkout whose keys or code differ from those the shared ones were made from.
Everything logs in with the test key in .ci/work/ssh and checks host keys against its
known_hosts.  Imported by test_ssh.py (not a conftest: the fixtures are for these tests only).
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

import infra
from pydist import rmprocs, workers

SSHD_PORT = int(os.environ.get("PYDIST_TEST_SSHD_PORT") or infra.SSHD_PORT)
LOOPBACK = f"root@127.0.0.1:{SSHD_PORT}"
# An SSH-host image of one's own (built from this checkout and its keys) when the shared tag
# was built from another checkout.
SSHHOST_IMAGE = os.environ.get("PYDIST_TEST_SSHHOST_IMAGE") or infra.SSHHOST_IMAGE


def ssh_flags(key=infra.SSH_KEY, known_hosts=infra.SSH_KNOWN_HOSTS, timeout: float = 10,
              strict: bool = True) -> list[str]:
    """sshflags that log in with the test key only and check host keys strictly."""
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"ConnectTimeout={timeout:g}"] + (["-o", "StrictHostKeyChecking=yes"] if strict else [])


def remove_workers() -> None:
    ids = [p for p in workers() if p != 1]
    if ids:
        rmprocs(*ids, waitfor=60)


def pid_gone(pid: int) -> bool:
    """The local process `pid` (a loopback worker) no longer exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


class Host:
    """One SSH-host container: its name and IP on the test network."""

    def __init__(self, name: str, ip: str, network: str):
        self.name, self.ip, self.network = name, ip, network

    def worker_pids(self) -> list[int]:
        """pids of the pydist workers running in the container."""
        out = docker("exec", self.name, "pgrep", "-f", "pydist.worker", check=False).stdout
        return [int(p) for p in out.split()]

    def hostname(self) -> str:
        return docker("exec", self.name, "hostname").stdout.strip()


@pytest.fixture
def no_workers():
    """No workers before and after the test."""
    remove_workers()
    yield
    remove_workers()


@pytest.fixture(scope="session")
def loopback() -> str:
    """`root@127.0.0.1:PORT` of the loopback sshd, after checking the test key logs in."""
    infra.require(infra.sshd_running(port=SSHD_PORT), f"the loopback sshd on 127.0.0.1:{SSHD_PORT}")
    argv = infra.ssh_argv(port=SSHD_PORT) + ["python3 -c 'import pydist'"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    infra.require(done.returncode == 0, f"a loopback sshd on 127.0.0.1:{SSHD_PORT} that accepts "
                  f"{infra.SSH_KEY} and has pydist ({done.stderr.strip()[-200:]})")
    return LOOPBACK


@pytest.fixture(scope="module")
def sshhosts() -> list[Host]:
    """Two running SSH-host containers on a private network; removed afterwards."""
    infra.require(infra.docker_running(), "the Docker engine")
    infra.require(infra.image_exists(SSHHOST_IMAGE), f"the image {SSHHOST_IMAGE}")
    tag = f"pydist-ssh-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--label", f"{infra.CI_LABEL}=1", tag)
    names = [f"{tag}-{i}" for i in (1, 2)]
    try:
        for name in names:
            docker("run", "-d", "--init", "--network", tag, "--label", f"{infra.CI_LABEL}=1",
                   "--name", name, "--hostname", name, SSHHOST_IMAGE)
        hosts = [Host(name, infra.container_ip(name), tag) for name in names]
        for host in hosts:
            assert infra.wait_port(host.ip, 22, 30), f"sshd in {host.name} ({host.ip}) did not listen"
        yield hosts
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)
        docker("network", "rm", tag, check=False)
