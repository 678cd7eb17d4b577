"""DockerManager: workers in real containers of the locally built worker image.

Needs the Docker engine and `pydist-worker:latest` (`bash .ci/images.sh`); without them the
tests skip here and fail in CI (infra.require). Few containers at a time (at most three), and
after every test no container labelled with the test cluster's id is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
import infra
from conftest import remove_all_workers, wait_until
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from pydist.managers.docker import DockerManager
from pydist import (LaunchError, ProcessExitedException, addprocs, cluster_cookie, fetch, myid,
                    remotecall, remotecall_fetch, rmprocs, workers)
from pydist.process import STATE

REPO = Path(__file__).resolve().parents[2]
# Pure-Python packages a master inside a container needs besides pydist (the Docker SDK and
# what it imports); mounted read-only from this interpreter, as the worker image lacks them.
SDK_PACKAGES = ("docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer")
# The worker image under test: DockerManager's default unless set (e.g. to a private tag
# while another build rewrites pydist-worker:latest on a shared machine).
IMAGE = os.environ.get("PYDIST_TEST_WORKER_IMAGE", infra.WORKER_IMAGE)


@pytest.fixture(scope="module")
def client():
    infra.require(infra.docker_running(), "the Docker engine")
    infra.require(infra.image_exists(IMAGE), f"the worker image {IMAGE}")
    c = docker.from_env(timeout=60)
    yield c
    c.close()


def cluster_containers(client, cluster_id: str | None = None, pid: int | None = None) -> list:
    labels = [f"pydist.cluster={cluster_id or STATE.cluster_id}"] + ([f"pydist.pid={pid}"] if pid else [])
    return client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)


@pytest.fixture(autouse=True)
def no_container_left(request):
    """Teardown check: every container of the test cluster is gone after each test."""
    yield
    if "client" in request.fixturenames:
        remove_all_workers()
        c = request.getfixturevalue("client")
        wait_until(lambda: not cluster_containers(c), 20, "the test cluster's containers to go")


@pytest.fixture
def docker_workers(client):
    """Two fresh workers in containers; yields their ids."""
    remove_all_workers()
    ids = addprocs(DockerManager(n=2, image=IMAGE))
    assert len(ids) == 2
    return ids


def test_container_spec_has_labels_limits_and_no_cookie():
    manager = DockerManager(cpus=1.5, memory="256m", labels={"team": "a", "pydist.pid": "spoofed"},
                            network="net", env={"A": "1"})
    spec = manager.container_spec(7, {"A": "1"})
    assert spec["labels"] == {"team": "a", "pydist.cluster": STATE.cluster_id, "pydist.pid": "7",
                              "pydist.master": f"{STATE.hostname}:{os.getpid()}"}
    assert spec["init"] and spec["auto_remove"] and spec["stdin_open"]
    assert (spec["nano_cpus"], spec["mem_limit"], spec["network"]) == (1_500_000_000, "256m", "net")
    assert spec["name"] == f"pydist-worker-{STATE.cluster_id}-7"
    assert cluster_cookie() not in repr(spec)


@pytest.mark.docker
def test_docker_workers_compute_and_call_each_other(docker_workers):
    a, b = docker_workers
    assert sorted(workers()) == docker_workers
    assert remotecall_fetch(lambda x: x * x, a, 12) == 144
    assert remotecall_fetch(lambda other: remotecall_fetch(myid, other), a, b) == b
    assert remotecall_fetch(os.getuid, b) != 0            # the image's non-root user


@pytest.mark.docker
def test_containers_carry_cluster_and_pid_labels(client, docker_workers):
    containers = cluster_containers(client)
    assert sorted(int(c.labels["pydist.pid"]) for c in containers) == docker_workers
    for c in containers:
        assert c.labels["pydist.master"] == f"{socket.gethostname()}:{os.getpid()}"
        assert c.name == f"pydist-worker-{STATE.cluster_id}-{c.labels['pydist.pid']}"


@pytest.mark.docker
def test_cookie_is_not_in_container_config_or_logs(client, docker_workers):
    cookie = cluster_cookie()
    for c in cluster_containers(client):
        attrs = client.api.inspect_container(c.id)        # Env, Cmd, Entrypoint, Labels, Args
        assert cookie not in json.dumps(attrs)
        assert attrs["HostConfig"]["Init"] and attrs["HostConfig"]["AutoRemove"]
        assert cookie.encode() not in c.logs()


@pytest.mark.docker
def test_rmprocs_removes_the_container(client, docker_workers):
    gone, kept = docker_workers
    rmprocs(gone).wait(30)
    assert cluster_containers(client, pid=gone) == []
    assert len(cluster_containers(client, pid=kept)) == 1
    assert remotecall_fetch(myid, kept) == kept


@pytest.mark.docker
def test_container_killed_mid_call_raises_process_exited(client, docker_workers):
    victim, other = docker_workers
    pending = remotecall(time.sleep, victim, 60)
    (container,) = cluster_containers(client, pid=victim)
    started = time.monotonic()
    container.kill()
    with pytest.raises(ProcessExitedException):
        fetch(pending)
    assert time.monotonic() - started < 5                  # a few seconds, not a heartbeat timeout
    wait_until(lambda: victim not in workers(), 10, "the killed worker to be removed")
    assert remotecall_fetch(myid, other) == other


@pytest.mark.docker
def test_a_killed_container_is_replaced_and_a_memory_hog_is_restarted(client):
    def _hog(megabytes):                  # travels by value: the image lacks the test modules
        block = bytearray(megabytes << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(60)

    remove_all_workers()
    [first] = addprocs(DockerManager(n=1, image=IMAGE), restart=True, memory_limit="150MB")
    (container,) = cluster_containers(client, pid=first)
    container.kill()                                       # SIGKILL of the container
    [second] = wait_until(lambda: [p for p in workers() if p not in (1, first)] or None, 60,
                          "a replacement container")
    assert remotecall_fetch(myid, second) == second
    assert len(cluster_containers(client, pid=second)) == 1
    with pytest.raises(ProcessExitedException, match="memory_limit"):
        remotecall_fetch(_hog, second, 300)
    [third] = wait_until(lambda: [p for p in workers() if p not in (1, first, second)] or None, 60,
                         "a replacement of the memory hog")
    assert remotecall_fetch(myid, third) == third


@pytest.mark.docker
def test_container_cut_off_its_network_is_declared_dead_by_the_heartbeat(client):
    from pydist.heartbeat import configure_heartbeat
    from pydist import settings
    old = settings.HEARTBEAT_TIMEOUT, settings.HEARTBEAT_INTERVAL
    network = client.networks.create(f"pydist-cut-{os.getpid()}", labels={"pydist.ci": "1"})
    try:
        [victim] = addprocs(DockerManager(n=1, image=IMAGE, network=network.name),
                            heartbeat_timeout=2.0)
        pending = remotecall(time.sleep, victim, 60)
        (container,) = cluster_containers(client, pid=victim)
        started = time.monotonic()
        network.disconnect(container, force=True)          # packets vanish: no FIN, no RST
        with pytest.raises(ProcessExitedException):
            fetch(pending)
        assert time.monotonic() - started < 15
        assert victim not in workers()
    finally:
        rmprocs(*[p for p in workers() if p != 1], waitfor=30)
        configure_heartbeat(*old)
        wait_until(lambda: not cluster_containers(client), 30, "the cut-off container to be removed")
        network.remove()


DRIVER = """
import json, os
from pydist import addprocs, myid, remotecall_fetch, rmprocs
from pydist.process import STATE
from pydist.managers.docker import DockerManager
print("CLUSTER", STATE.cluster_id, flush=True)
ids = addprocs(DockerManager(n=2, image=os.environ["IMAGE"], network=os.environ["NET"],
                             docker_url="unix:///var/run/docker.sock"))
a, b = ids
result = {"ids": ids, "square": remotecall_fetch(lambda x: x * x, a, 7),
          "peer": remotecall_fetch(lambda o: remotecall_fetch(myid, o), a, b)}
rmprocs(*ids).wait(30)
print("RESULT", json.dumps(result), flush=True)
"""


@pytest.mark.docker
def test_master_in_a_container_reaches_workers_on_its_network(client):
    driver = (DockerContainer(IMAGE)
              .with_kwargs(entrypoint="python", user="root", init=True)
              .with_command(["-c", DRIVER])
              .with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
              .with_volume_mapping(str(REPO), "/src", "ro")
              .with_env("PYTHONPATH", "/src:/deps").with_env("IMAGE", IMAGE))
    for name in SDK_PACKAGES:
        package = Path(__import__(name).__file__).parent
        driver.with_volume_mapping(str(package), f"/deps/{name}", "ro")
    with Network(docker_network_kw={"labels": {infra.CI_LABEL: "test_docker"}}) as net:
        driver.with_network(net).with_env("NET", net.name)
        with driver:
            code = driver.get_wrapped_container().wait(timeout=90)["StatusCode"]
            out, err = driver.get_logs()
        text = out.decode()
        cluster = next((line.split()[1] for line in text.splitlines() if line.startswith("CLUSTER")), None)
        assert cluster and code == 0, f"driver exited with {code}:\n{text}\n{err.decode()}"
        wait_until(lambda: not cluster_containers(client, cluster), 20, "the driver's workers to go")
    result = json.loads(text.split("RESULT", 1)[1])
    assert result == {"ids": [2, 3], "square": 49, "peer": 3}


@pytest.mark.docker
def test_containers_go_away_when_the_master_is_sigkilled(client, tmp_path):
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pydist import addprocs
        from pydist.process import STATE
        from pydist.managers.docker import DockerManager
        addprocs(DockerManager(n=1, image=sys.argv[1]))
        print(STATE.cluster_id, flush=True)
        sys.stdin.read()
    """))
    master = subprocess.Popen([sys.executable, str(script), IMAGE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        cluster = master.stdout.readline().strip()
        assert cluster, "the master script did not start its worker"
        assert len(cluster_containers(client, cluster)) == 1
    finally:
        master.send_signal(signal.SIGKILL)
        master.wait(10)
    wait_until(lambda: not cluster_containers(client, cluster), 30, "the orphaned worker's container to go")


@pytest.mark.docker
def test_prune_removes_containers_of_dead_masters_only(client):
    cluster = f"prune-test-{os.getpid()}"
    dead = subprocess.Popen(["true"])
    dead.wait()

    def container(master_pid: int, start: bool = True):
        labels = {"pydist.cluster": cluster, "pydist.pid": "2",
                  "pydist.master": f"{socket.gethostname()}:{master_pid}"}
        c = client.containers.create(IMAGE, entrypoint=["python", "-c"], labels=labels,
                                     command=["import time; time.sleep(120)"], init=True)
        if start:
            c.start()
        return c
    orphan, never_started, alive = container(dead.pid), container(dead.pid, start=False), container(os.getpid())
    try:
        prune = [sys.executable, "-m", "pydist.managers.docker", "prune", "--cluster", cluster]
        listed = subprocess.run(prune + ["--all", "--dry-run"], capture_output=True, text=True,
                                cwd=REPO, timeout=60, check=False)
        assert listed.returncode == 0 and "would remove 3 container(s)" in listed.stdout, listed
        done = subprocess.run(prune, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert f"removed {orphan.name}: its master (process {dead.pid}" in done.stdout
        assert f"removed {never_started.name}: not running (created)" in done.stdout
        assert [c.id for c in cluster_containers(client, cluster)] == [alive.id]
    finally:
        for c in cluster_containers(client, cluster):
            c.remove(force=True)


def add_failing(manager: DockerManager) -> LaunchError:
    remove_all_workers()
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        addprocs(manager)
    assert time.monotonic() - started < 60
    assert info.value.added == [] and workers() == [1]
    return info.value


@pytest.mark.docker
def test_missing_image_fails_naming_the_build_command(client):
    err = add_failing(DockerManager(image="pydist-no-such-image:never"))
    assert "pydist-no-such-image:never" in str(err) and "bash deploy/docker/build.sh" in str(err)


@pytest.mark.docker
def test_unreachable_daemon_fails_clearly(client):
    err = add_failing(DockerManager(docker_url="tcp://127.0.0.1:1"))
    assert "tcp://127.0.0.1:1" in str(err) and "unreachable" in str(err)


@pytest.mark.docker
def test_image_without_python_fails_with_the_containers_output(client):
    infra.require(infra.image_exists(infra.BASE_IMAGE), f"the base image {infra.BASE_IMAGE}")
    err = add_failing(DockerManager(image=infra.BASE_IMAGE))
    assert "exited before printing its address" in str(err)
    assert "exec python failed" in str(err)                 # tini's own last line


@pytest.mark.docker
def test_worker_that_exits_at_once_fails_with_its_last_lines(client):
    err = add_failing(DockerManager(image=IMAGE, env={"PYDIST_WORKER_TIMEOUT": "soon"}))
    assert "exited before printing its address" in str(err)
    assert "could not convert string to float: 'soon'" in str(err)


@pytest.mark.docker
def test_worker_that_prints_no_address_times_out_and_is_removed(client, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(600)\n")   # hangs at start
    tmp_path.chmod(0o755)
    manager = DockerManager(image=IMAGE, volumes={str(tmp_path): {"bind": "/hang", "mode": "ro"}},
                            env={"PYTHONPATH": "/hang"})
    remove_all_workers()
    with pytest.raises(LaunchError, match="no address line within 3 s"):
        addprocs(manager, worker_timeout=3)
    assert cluster_containers(client) == []
