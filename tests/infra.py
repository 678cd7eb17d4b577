"""What the test environment set up by ``.ci/`` provides, for the tests.

``bash .ci/setup.sh`` (or ``bash .ci/run`` in CI) starts a loopback sshd on
127.0.0.1:2222, a single-node Slurm and builds the images below; this module
names those things and tells whether they are there. It has no fixtures
(those live in conftest.py).

Outside CI a missing backend makes its tests skip, with the reason; in CI
(``CI=true``) it makes them fail, because there the set-up must provide
everything::

    import infra    # pytest puts tests/ on sys.path (no tests/__init__.py)
    infra.require(infra.sshd_running(), "the loopback sshd on 127.0.0.1:2222")

SSH: one client key (``SSH_KEY``) logs in as root on the loopback sshd and as
root or ``pydist`` on ``SSHHOST_IMAGE`` containers; those share one host key,
listed in ``SSH_KNOWN_HOSTS`` for ``[127.0.0.1]:2222`` and for ``*`` (OpenSSH
matches the pattern for any container IP; paramiko does not expand patterns:
add the key per host with :func:`known_hosts_line` or :func:`host_key`).
``python3`` in an ssh session (loopback sshd, SSH-host containers) and in a
Slurm task is an interpreter with pydist installed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CI_WORK = REPO / ".ci" / "work"

#: True when running in CI (``CI=true``): missing infrastructure is a failure.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# --- SSH -----------------------------------------------------------------
SSH_DIR = CI_WORK / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"                  #: client private key (ed25519)
SSH_PUBKEY = SSH_DIR / "id_ed25519.pub"
SSH_HOST_KEY = SSH_DIR / "ssh_host_ed25519_key"   #: host key of sshd and SSH-host containers
SSH_HOST_PUBKEY = SSH_DIR / "ssh_host_ed25519_key.pub"
SSH_KNOWN_HOSTS = SSH_DIR / "known_hosts"
SSHD_HOST = "127.0.0.1"
SSHD_PORT = 2222
SSHD_USER = "root"
#: Users the test key logs in as on SSH-host containers (port 22).
SSHHOST_USERS = ("root", "pydist")

# --- Docker --------------------------------------------------------------
BASE_IMAGE = "pydist-base:bookworm"      #: Debian 12 minbase + python3 (3.11), venv
WORKER_IMAGE = "pydist-worker:latest"    #: entrypoint python -m pydist.worker, user pydist
SSHHOST_IMAGE = "pydist-sshhost:test"    #: sshd on 22; pydist in /opt/pydist (on PATH)
#: Label put on containers by the CI's own checks; .ci/teardown.sh removes
#: containers labelled with it, ``pydist.cluster`` or ``org.testcontainers``.
CI_LABEL = "pydist.ci"

# --- Browser (the dashboard's tests) ---------------------------------------
CHROMIUM = Path("/usr/bin/chromium")            #: Debian package chromium
CHROMEDRIVER = Path("/usr/bin/chromedriver")    #: Debian package chromium-driver
#: Where tests leave what a person may want to look at (screenshots).
ARTIFACTS = Path(os.environ.get("PYDIST_ARTIFACTS", CI_WORK / "artifacts"))


def browser_available() -> bool:
    """Headless Chromium and its driver are installed (.ci/packages.sh), and selenium."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


# --- Slurm ---------------------------------------------------------------
SLURM_PARTITION = "debug"
SLURM_NODE = "localhost"                 #: NodeAddr 127.0.0.1: workers listen there


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None


def docker_running() -> bool:
    """The Docker engine answers."""
    r = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20)
    return r is not None and r.returncode == 0 and bool(r.stdout.strip())


def image_exists(tag: str) -> bool:
    """The image ``tag`` is in the local Docker engine (it is never pulled)."""
    r = _run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], timeout=20)
    return r is not None and r.returncode == 0


def sshd_running(host: str = SSHD_HOST, port: int = SSHD_PORT, timeout: float = 3.0) -> bool:
    """An SSH server answers on host:port and the test key exists."""
    if not (SSH_KEY.is_file() and SSH_KNOWN_HOSTS.is_file()):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


def slurm_running(partition: str = SLURM_PARTITION) -> bool:
    """slurmctld answers and a node of the partition is up (idle, mix, alloc, comp)."""
    r = _run(["sinfo", "-h", "-p", partition, "-o", "%t"], timeout=10)
    if r is None or r.returncode != 0:
        return False
    return any(s in ("idle", "mix", "alloc", "comp") for s in r.stdout.split())


# --- Slurm in containers (.ci/slurm-multinode.sh) ---------------------------
SLURM_MN_DIR = CI_WORK / "slurm-mn"
SLURM_MN_CONF = SLURM_MN_DIR / "etc" / "slurm.conf"   #: SLURM_CONF for the host's client
SLURM_MN_SHARED = SLURM_MN_DIR / "shared"   #: mounted at the same path on both nodes
SLURM_MN_NODES = ("mn-node1", "mn-node2")   #: hostnames; containers pydist-<name>
SLURM_MN_GATEWAY = "172.30.213.1"           #: this host on the nodes' network
SLURM_MN_PYTHON = "/opt/pydist/bin/python"  #: the interpreter with pydist on the nodes


def slurm_multinode_running() -> bool:
    """The containers' slurmctld answers and both nodes are up."""
    r = _run(["env", f"SLURM_CONF={SLURM_MN_CONF}", "sinfo", "-h", "-N", "-p", "mn", "-o", "%N %t"])
    if r is None or r.returncode != 0:
        return False
    up = {line.split()[0] for line in r.stdout.splitlines() if line.split()[-1] in ("idle", "mix", "alloc")}
    return up == set(SLURM_MN_NODES)


def sge_running() -> bool:
    """sge_qmaster answers and this host's sge_execd reports load (.ci/sge.sh)."""
    r = _run(["qhost", "-h", socket.gethostname()], timeout=10)
    if r is None or r.returncode != 0:
        return False
    return any(line.split()[0] == socket.gethostname() and line.split()[6] != "-"
               for line in r.stdout.splitlines()[3:] if len(line.split()) > 6)


def require(condition: bool, what: str) -> None:
    """Skip the test when ``condition`` is false, naming ``what`` is missing;
    in CI (``CI=true``) fail it instead: there the set-up must provide it."""
    __tracebackhide__ = True  # report the caller's line, not this one
    if condition:
        return
    import pytest

    if IN_CI:
        pytest.fail(f"{what} is not available in CI: the set-up (.ci/setup.sh) is broken",
                    pytrace=False)
    pytest.skip(f"{what} is not available (run: bash .ci/setup.sh)")


def ssh_argv(host: str = SSHD_HOST, port: int = SSHD_PORT, user: str = SSHD_USER) -> list[str]:
    """``ssh`` argv (no remote command) that logs in with the test key and
    checks the host key against SSH_KNOWN_HOSTS, never prompting."""
    return ["ssh", "-p", str(port), "-i", str(SSH_KEY), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={SSH_KNOWN_HOSTS}", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", f"{user}@{host}"]


def host_key() -> tuple[str, str]:
    """(key type, base64 key) of the test host key."""
    kind, b64 = SSH_HOST_PUBKEY.read_text().split()[:2]
    return kind, b64


def known_hosts_line(host: str, port: int = 22) -> str:
    """A known_hosts line for ``host`` with the test host key (for paramiko,
    which ignores the ``*`` line: ``client.get_host_keys().add(...)`` or a file)."""
    name = host if port == 22 else f"[{host}]:{port}"
    kind, b64 = host_key()
    return f"{name} {kind} {b64}"


def container_ip(container_id: str) -> str:
    """The IP of a running container on its (first) network."""
    r = _run(["docker", "inspect", "-f",
              "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container_id], timeout=20)
    if r is None or r.returncode != 0 or not r.stdout.split():
        raise RuntimeError(f"no IP for container {container_id}: {r.stderr if r else 'no docker'}")
    return r.stdout.split()[0]


def wait_port(host: str, port: int, timeout: float = 30.0) -> bool:
    """Wait until a TCP connect to host:port succeeds (True) or timeout (False)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
