"""KubernetesManager: pod manifests and pod statuses without a cluster; real worker pods on the
test API server, or on the cluster KUBECONFIG points at (conftest_k8s.py says how).

The tests marked `kubernetes` run few pods at a time (at most three), and after each one no pod
and no Secret of the test cluster is left (checked through the API, so also on a real cluster).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from conftest_k8s import (IMAGE, POD_TIMEOUT, cluster_pods, cluster_secrets, kube,  # noqa: F401 (fixture)
                          remove_workers, wait_for_pods, wait_nothing_left)
from pydist.managers._pods import pending_reason, pod_failure
from pydist.managers.kubernetes import KubernetesManager, default_namespace, pod_log, secret_name
from pydist import LaunchError, addprocs, cluster_cookie, myid, pmap, remotecall_fetch, rmprocs, workers
from conftest import wait_until
from pydist.process import STATE

REPO = Path(__file__).resolve().parents[2]


def manager(kube, **options) -> KubernetesManager:
    return KubernetesManager(**{"image": IMAGE, "join_host": kube.join_host, **options})


@pytest.fixture(autouse=True)
def nothing_left(request):
    """Teardown check: no pod and no Secret of the test cluster is left after a test."""
    yield
    if "kube" in request.fixturenames:
        remove_workers()
        wait_nothing_left(request.getfixturevalue("kube"))


@pytest.fixture
def k8s_workers(kube):
    """Two fresh workers in pods; yields their ids."""
    remove_workers()
    ids = addprocs(manager(kube, n=2))
    assert len(ids) == 2
    return ids


def container(pod: dict) -> dict:
    [c] = pod["spec"]["containers"]
    return c


def env_of(pod: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod)["env"]}


# -- the pod manifest: no cluster needed ---------------------------------------------------------
def test_pod_manifest_runs_the_worker_dialing_the_head_with_its_pod_name_as_ident():
    pod = KubernetesManager().pod_manifest("pydist-worker-c-1", "10.0.0.5:4242")
    argv = container(pod)["command"]
    assert argv[:3] == ["python", "-m", "pydist.worker"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--join"] == "10.0.0.5:4242" and flags["--ident"] == "pydist-worker-c-1"
    assert flags["--cookie-file"] == "/var/run/pydist/cookie" and flags["--advertise"] == "$(POD_IP)"
    assert env_of(pod)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert (pod["metadata"]["name"], pod["spec"]["restartPolicy"]) == ("pydist-worker-c-1", "Never")
    assert (container(pod)["image"], container(pod)["imagePullPolicy"]) == ("pydist-worker:latest", "IfNotPresent")


@pytest.mark.parametrize("options, path, want", [
    ({"image": "registry.example/w:1.2"}, ("spec", "containers", 0, "image"), "registry.example/w:1.2"),
    ({"image_pull_policy": "Never"}, ("spec", "containers", 0, "imagePullPolicy"), "Never"),
    ({"cpu": "500m", "memory": "1Gi"}, ("spec", "containers", 0, "resources"),
     {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}),
    ({"node_selector": {"disk": "ssd"}}, ("spec", "nodeSelector"), {"disk": "ssd"}),
    ({"tolerations": [{"key": "gpu", "operator": "Exists"}]}, ("spec", "tolerations"),
     [{"key": "gpu", "operator": "Exists"}]),
    ({"labels": {"team": "ml"}}, ("metadata", "labels", "team"), "ml"),
    ({"service_account": "driver"}, ("spec", "serviceAccountName"), "driver"),
])
def test_pod_manifest_carries_each_option(options, path, want):
    got = KubernetesManager(**options).pod_manifest()
    for key in path:
        got = got[key]
    assert got == want


def test_pod_manifest_passes_env_and_blas_settings_to_the_worker():
    env = env_of(KubernetesManager(env={"MY_SETTING": "a b"}).pod_manifest())
    assert env["MY_SETTING"] == "a b" and env["OMP_NUM_THREADS"] == "1" and env["PYDIST_JOIN"] == "HOST:PORT"


def test_pod_manifest_forwards_the_masters_pydist_settings_but_no_secret_or_ident(monkeypatch):
    monkeypatch.setenv("PYDIST_EXIT_TIMEOUT", "7")
    monkeypatch.setenv("PYDIST_COOKIE_FILE", "/c")
    monkeypatch.setenv("PYDIST_WORKER_IDENT", "master")
    env = env_of(KubernetesManager().pod_manifest())
    assert env["PYDIST_EXIT_TIMEOUT"] == "7"
    assert "PYDIST_COOKIE_FILE" not in env and "PYDIST_WORKER_IDENT" not in env


def test_pod_manifest_keeps_the_pydist_labels_and_mounts_no_token_by_default():
    pod = KubernetesManager(labels={"pydist.cluster": "spoofed", "pydist.role": "x"}).pod_manifest()
    assert pod["metadata"]["labels"] == {"pydist.cluster": STATE.cluster_id, "pydist.role": "worker"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in KubernetesManager(service_account="sa").pod_manifest()["spec"]


def test_pod_manifest_mounts_the_cookie_from_the_clusters_secret_and_never_carries_it():
    pod = KubernetesManager(env={"A": "1"}, labels={"b": "2"}).pod_manifest()
    [volume] = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secret_name() == f"pydist-{STATE.cluster_id}-cookie"
    assert volume["secret"]["items"] == [{"key": "cookie", "path": "cookie"}]
    assert container(pod)["volumeMounts"] == [{"name": volume["name"], "mountPath": "/var/run/pydist",
                                               "readOnly": True}]
    text = json.dumps(pod)
    assert cluster_cookie() not in text and base64.b64encode(cluster_cookie().encode()).decode() not in text


def test_pod_manifest_builds_on_a_pod_template():
    template = {"metadata": {"annotations": {"a": "b"}, "labels": {"team": "ml"}},
                "spec": {"securityContext": {"runAsUser": 1000}, "volumes": [{"name": "data", "emptyDir": {}}],
                         "containers": [{"name": "main", "image": "ignored", "args": ["--bind-to", "0.0.0.0"],
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                                         "env": [{"name": "X", "value": "1"}]}]}}
    pod = KubernetesManager(pod_template=template, image="w:2").pod_manifest()
    c = container(pod)
    assert c["name"] == "main" and c["image"] == "w:2" and c["args"] == ["--bind-to", "0.0.0.0"]
    assert c["command"][:3] == ["python", "-m", "pydist.worker"] and env_of(pod)["X"] == "1"
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["data", "pydist-cookie"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/data", "/var/run/pydist"]
    assert pod["metadata"]["annotations"] == {"a": "b"} and pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["securityContext"] == {"runAsUser": 1000}
    assert template["spec"]["containers"][0]["image"] == "ignored"        # the template is not changed
    custom = KubernetesManager(pod_template={"spec": {"restartPolicy": "Always", "containers": [
        {"command": ["sh", "-c", "exit 1"]}]}}).pod_manifest()
    assert container(custom)["command"] == ["sh", "-c", "exit 1"] and custom["spec"]["restartPolicy"] == "Always"


def test_pod_manifest_refers_to_the_owner_when_given():
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "driver", "uid": "u-1"}
    assert KubernetesManager().pod_manifest(owner=owner)["metadata"]["ownerReferences"] == [owner]
    assert "ownerReferences" not in KubernetesManager().pod_manifest()["metadata"]


@pytest.mark.parametrize("options", [{"n": -1}, {"n": 1.5}, {"image_pull_policy": "Sometimes"},
                                     {"pending_timeout": 0}])
def test_bad_options_raise_value_error(options):
    with pytest.raises(ValueError):
        KubernetesManager(**options)


def test_namespace_defaults_to_the_kubeconfig_context_then_default(tmp_path, monkeypatch):
    def kubeconfig(context: dict) -> str:
        path = tmp_path / f"config-{len(context)}"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                    "clusters": [{"name": "k", "cluster": {"server": "https://k.example"}}],
                                    "users": [{"name": "u", "user": {}}],
                                    "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", **context}}]}))
        return str(path)
    monkeypatch.setenv("KUBECONFIG", kubeconfig({"namespace": "team-a"}))
    assert default_namespace(False) == "team-a"
    monkeypatch.setenv("KUBECONFIG", kubeconfig({}))
    assert default_namespace(False) == "default"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert default_namespace(False) == "default"


def status(phase="Pending", waiting=None, terminated=None, last=None, restarts=0, conditions=None, limits=None):
    cs = {"restartCount": restarts, "state": {}, "lastState": {}}
    if waiting:
        cs["state"]["waiting"] = {"reason": waiting[0], "message": waiting[1]}
    if terminated:
        cs["state"]["terminated"] = terminated
    if last:
        cs["lastState"]["terminated"] = last
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"limits": limits or {}}}]},
            "status": {"phase": phase, "containerStatuses": [cs], "conditions": conditions or []}}


@pytest.mark.parametrize("pod, want", [
    (status(waiting=("ErrImagePull", 'failed to pull "x"')), 'ErrImagePull: failed to pull "x"; the nodes must'),
    (status(waiting=("ImagePullBackOff", "Back-off")), "kind load docker-image"),
    (status(waiting=("ErrImageNeverPull", "not present")), "image_pull_policy="),
    (status(waiting=("CrashLoopBackOff", "back-off 10s"), phase="Running", restarts=3),
     "CrashLoopBackOff: back-off 10s; the container keeps exiting"),
    (status(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}, limits={"memory": "20Mi"}),
     "OOMKilled: the worker used more than its memory limit (20Mi)"),
    (status(phase="Running", last={"exitCode": 137, "reason": "OOMKilled"}), "OOMKilled"),
    (status(phase="Failed", terminated={"exitCode": 1, "reason": "Error"}), "exited with code 1 (Error)"),
    (status(phase="Failed", terminated={"exitCode": 137, "reason": "Error"}, limits={"memory": "1Gi"}),
     "137 means SIGKILL, usually for going over the memory limit (1Gi)"),
    (status(phase="Failed"), "ended (Failed: no message)"),
    (status(waiting=("CreateContainerConfigError", 'secret "s" not found')), 'secret "s" not found'),
])
def test_pod_failure_names_the_reason(pod, want):
    assert want in pod_failure(pod)


@pytest.mark.parametrize("pod", [status(), status(waiting=("ContainerCreating", "")), status(phase="Running")])
def test_pod_failure_is_none_while_the_pod_may_still_bring_its_worker(pod):
    assert pod_failure(pod) is None


def test_pending_reason_quotes_the_scheduler():
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]
    assert pending_reason(status(conditions=unschedulable)).startswith("Unschedulable: 0/3 nodes are available")
    assert pending_reason(status(waiting=("ContainerCreating", ""))) == "ContainerCreating"


def test_unreachable_api_server_fails_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "config"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:1"}}],
                                "users": [{"name": "u", "user": {}}],
                                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(path))
    remove_workers()
    with pytest.raises(LaunchError, match=r"http://127.0.0.1:1 is unreachable .* check that KUBECONFIG"):
        addprocs(KubernetesManager(join_host="127.0.0.1"))
    assert workers() == [1]


# -- real pods -----------------------------------------------------------------------------------
@pytest.mark.kubernetes
def test_kubernetes_workers_compute_and_call_each_other(k8s_workers):
    a, b = k8s_workers
    assert sorted(workers()) == k8s_workers
    assert remotecall_fetch(lambda x: x * x, a, 12) == 144
    assert remotecall_fetch(lambda other: remotecall_fetch(myid, other), a, b) == b     # pod IP to pod IP
    assert pmap(lambda x: x + 1, range(10)) == list(range(1, 11))
    assert remotecall_fetch(os.getuid, b) != 0             # the image's non-root user


@pytest.mark.kubernetes
def test_pods_carry_cluster_role_and_pid_labels_and_the_ident_is_the_pod_name(kube, k8s_workers):
    pods = cluster_pods(kube, extra="pydist.role=worker")
    assert sorted(int(p.metadata.labels["pydist.pid"]) for p in pods) == k8s_workers
    for pod in pods:
        pid = int(pod.metadata.labels["pydist.pid"])
        assert remotecall_fetch(lambda: __import__("socket").gethostname(), pid) == pod.metadata.name
        assert pod.metadata.name.startswith(f"pydist-worker-{STATE.cluster_id}-")


@pytest.mark.kubernetes
def test_cookie_is_in_the_clusters_secret_only(kube, k8s_workers):
    cookie = cluster_cookie()
    [secret] = cluster_secrets(kube)
    assert base64.b64decode(secret.data["cookie"]).decode() == cookie
    for pod in cluster_pods(kube):
        text = json.dumps(kube.core.api_client.sanitize_for_serialization(pod))
        assert cookie not in text and secret.data["cookie"] not in text
        assert cookie not in pod_log(kube.core, pod.metadata.name, kube.namespace)


@pytest.mark.kubernetes
def test_rmprocs_deletes_the_pod(kube, k8s_workers):
    gone, kept = k8s_workers
    rmprocs(gone).wait(60)
    assert workers() == [kept]
    wait_for_pods(kube, f"pydist.cluster={STATE.cluster_id},pydist.pid={gone}", lambda pods: not pods,
                  POD_TIMEOUT, f"the pod of worker {gone} to go")
    assert len(cluster_pods(kube, extra=f"pydist.pid={kept}")) == 1
    assert remotecall_fetch(myid, kept) == kept
    rmprocs(kept).wait(60)
    assert cluster_secrets(kube) == []          # the cluster's last pod takes its Secret along


@pytest.mark.kubernetes
def test_worker_whose_pod_is_deleted_is_replaced_by_a_new_pod_with_restart(kube):
    remove_workers()
    [first] = addprocs(manager(kube, n=1), restart=True)
    [pod] = cluster_pods(kube, extra=f"pydist.pid={first}")
    kube.core.delete_namespaced_pod(pod.metadata.name, kube.namespace, grace_period_seconds=0)
    [second] = wait_until(lambda: [p for p in workers() if p not in (1, first)], timeout=POD_TIMEOUT,
                          what="the replacement pod's worker to join")
    assert remotecall_fetch(myid, second) == second
    [new] = wait_for_pods(kube, f"pydist.cluster={STATE.cluster_id},pydist.pid={second}", lambda pods: pods,
                          POD_TIMEOUT, "the replacement pod to be labelled")
    assert new.metadata.name != pod.metadata.name
    remove_workers()


@pytest.mark.kubernetes
def test_a_left_over_secret_of_the_cluster_gets_the_current_cookie(kube):
    labels = {"pydist.cluster": STATE.cluster_id}
    kube.core.create_namespaced_secret(kube.namespace, {"metadata": {"name": secret_name(), "labels": labels},
                                                        "stringData": {"cookie": "stale"}})
    remove_workers()
    [pid] = addprocs(manager(kube, n=1))
    assert remotecall_fetch(myid, pid) == pid


@pytest.mark.kubernetes
def test_worker_pods_are_owned_by_the_driver_pod(kube, monkeypatch):
    driver = f"driver-{uuid.uuid4().hex[:8]}"       # stands in for the pod the driver would run in
    placeholder = {"name": "d", "image": IMAGE, "command": ["sleep", "300"]}
    kube.core.create_namespaced_pod(kube.namespace, {"metadata": {"name": driver}, "spec": {
        "terminationGracePeriodSeconds": 0, "containers": [placeholder]}})
    try:
        uid = kube.core.read_namespaced_pod(driver, kube.namespace).metadata.uid
        monkeypatch.setenv("POD_NAME", driver)
        remove_workers()
        addprocs(manager(kube, n=1))
        [pod] = cluster_pods(kube)
        [owner] = pod.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("Pod", driver, uid)
    finally:
        kube.core.delete_namespaced_pod(driver, kube.namespace, grace_period_seconds=0)


DRIVER = """
import json, os
from pydist import addprocs, remotecall_fetch
from pydist.process import STATE
from pydist.managers import KubernetesManager
ids = addprocs(KubernetesManager(n=2, image=os.environ["IMAGE"], join_host=os.environ["JOIN_HOST"] or None))
print("CLUSTER", STATE.cluster_id, json.dumps([remotecall_fetch(lambda: 6 * 7, p) for p in ids]), flush=True)
"""


@pytest.mark.kubernetes
def test_master_exit_deletes_its_pods_and_secret(kube):
    env = {**os.environ, "IMAGE": IMAGE, "JOIN_HOST": kube.join_host or "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=2 * POD_TIMEOUT, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("CLUSTER ")), "")
    assert done.returncode == 0 and line, f"the driver failed:\n{done.stdout}\n{done.stderr}"
    _, cluster, results = line.split(" ", 2)
    assert json.loads(results) == [42, 42]
    assert cluster_secrets(kube, cluster) == []           # deleted before the driver exited
    wait_nothing_left(kube, cluster)                       # pods: deletion requested at exit


# -- launch failures: each names the pod and why, and leaves nothing behind -----------------------
def add_failing(kube, **options) -> LaunchError:
    remove_workers()
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        addprocs(manager(kube, n=1, **options))
    assert time.monotonic() - started < POD_TIMEOUT
    assert info.value.added == [] and workers() == [1]
    [(what, _)] = info.value.failures
    assert what.startswith(f"pod {kube.namespace}/pydist-worker-{STATE.cluster_id}-")
    return info.value


@pytest.mark.kubernetes
def test_missing_image_fails_with_the_pull_error(kube):
    err = add_failing(kube, image="pydist-nope:1")
    assert "ErrImagePull" in str(err) and "pydist-nope:1" in str(err) and "kind load docker-image" in str(err)


@pytest.mark.kubernetes
def test_unschedulable_pod_fails_after_pending_timeout_with_the_schedulers_reason(kube):
    # worker_timeout counts from Running only: the 1 s of it never runs out for a pending pod.
    err = add_failing(kube, node_selector={"disk": "ssd"}, pending_timeout=3, worker_timeout=1)
    assert "stayed pending (Unschedulable" in str(err) and "for 3 s and was cancelled" in str(err)
    assert "node_selector=" in str(err)


@pytest.mark.kubernetes
def test_oom_killed_pod_fails_naming_the_memory_limit(kube):
    hog = {"spec": {"containers": [{"command": ["python", "-c", "s = b' ' * (400 << 20)"]}]}}
    err = add_failing(kube, memory="32Mi", pod_template=hog)
    assert "(32Mi)" in str(err) and "ask for more with memory=" in str(err)
    # The test API server sometimes reads the container's exit before Docker flags the OOM kill
    # (its OOMKilled then says Error, code 137); a real kubelet says OOMKilled.
    assert "OOMKilled" in str(err) or "exited with code 137" in str(err)


@pytest.mark.kubernetes
def test_crash_looping_pod_fails_with_its_last_log_lines(kube):
    crash = {"spec": {"restartPolicy": "Always",
                      "containers": [{"command": ["sh", "-c", "echo worker setup failed; exit 1"]}]}}
    err = add_failing(kube, pod_template=crash)
    assert "CrashLoopBackOff" in str(err) and "worker setup failed" in str(err)


@pytest.mark.kubernetes
def test_worker_that_fails_at_start_fails_with_its_traceback(kube):
    err = add_failing(kube, env={"PYDIST_WORKER_TIMEOUT": "soon"})
    assert "exited with code 1" in str(err) and "could not convert string to float: 'soon'" in str(err)


@pytest.mark.kubernetes
def test_worker_that_cannot_reach_the_master_fails_naming_the_address(kube):
    err = add_failing(kube, join_host="127.0.0.1", worker_timeout=5)     # the pod's own loopback
    assert "127.0.0.1:" in str(err)
