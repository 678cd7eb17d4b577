"""The test Kubernetes API server, exercised with the official client and real containers.

Each test uses its own namespace on one server per module; ``test_stop_*`` runs its own server to
check that nothing is left behind. The pod image is built here from a local base image.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import uuid

import docker
import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

import infra                                  # tests/ is on sys.path (no tests/__init__.py)
from k8s_apiserver import KubeTestServer, wait_for_pod
from pydist.managers.kubernetes import pod_log

pytestmark = pytest.mark.kubernetes

POD_TIMEOUT = 60.0      # generous: two cores shared with other test containers


def finished(pod):
    return pod is not None and pod.status.phase in ("Succeeded", "Failed")


def running(pod):
    return pod is not None and pod.status.phase == "Running"


def waiting_reason(pod):
    statuses = pod and pod.status.container_statuses
    return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason


def pod_body(name, command=None, args=None, restart="Never", labels=None, **container):
    body = {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "main", "image": IMAGE, **container}]}}
    if command is not None:
        body["spec"]["containers"][0]["command"] = command
    if args is not None:
        body["spec"]["containers"][0]["args"] = args
    return body


IMAGE = "unset"           # set by the pod_image fixture before any test creates a pod


@pytest.fixture(scope="session")
def pod_image():
    """A tiny image with a known ENTRYPOINT and CMD, made from whichever local base image exists.

    A commit of an unstarted container: one step, where a Dockerfile build with the legacy builder
    makes three (measured here under load: 5 s against 17 s)."""
    global IMAGE
    base = next((i for i in (infra.BASE_IMAGE, infra.WORKER_IMAGE) if infra.image_exists(i)), None)
    infra.require(base is not None, f"a base image ({infra.BASE_IMAGE} or {infra.WORKER_IMAGE})")
    engine = docker.from_env()
    repo, tag = "pydist-k8s-apiserver-test", uuid.uuid4().hex[:8]
    scratch = engine.api.create_container(base, labels={"pydist.test": "k8s-apiserver-image"})["Id"]
    try:
        engine.api.commit(scratch, repo, tag, changes=[
            "USER root", 'ENTRYPOINT ["/bin/echo", "image-entrypoint"]', 'CMD ["image-cmd"]'])
    finally:
        engine.api.remove_container(scratch)
    IMAGE = tag = f"{repo}:{tag}"
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def k8s(pod_image):
    with KubeTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def core(k8s, tmp_path_factory):
    path = k8s.write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "config"))
    return client.CoreV1Api(config.new_client_from_config(config_file=path))


@pytest.fixture
def ns(core):
    """A fresh namespace; its pods are deleted (grace 0) and awaited at the end of the test."""
    name = "t-" + uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    for pod in core.list_namespaced_pod(name).items:
        wait_for_pod(core, name, pod.metadata.name, lambda p: p is None, POD_TIMEOUT, "deletion")


def run_to_end(core, ns, body):
    """Create a pod, wait until it has finished, return (pod, log)."""
    core.create_namespaced_pod(ns, body)
    name = body["metadata"]["name"]
    pod = wait_for_pod(core, ns, name, finished, POD_TIMEOUT, "Succeeded or Failed")
    return pod, pod_log(core, name, ns)


def test_version_and_discovery_answer_like_a_real_server(core):
    assert client.VersionApi(core.api_client).get_code().major == "1"
    assert client.CoreApi(core.api_client).get_api_versions().versions == ["v1"]
    names = {r.name for r in core.get_api_resources().resources}
    assert {"pods", "pods/log", "secrets", "namespaces"} <= names
    node = core.read_node("pydist-test-node")
    assert node.metadata.labels["kubernetes.io/os"] == "linux"


def test_running_pod_has_pod_ip_on_the_network_and_host_ip_at_the_gateway(core, k8s, ns):
    core.create_namespaced_pod(ns, pod_body("web", ["sleep", "300"]))
    pod = wait_for_pod(core, ns, "web", running, POD_TIMEOUT, "Running")
    assert pod.status.host_ip == k8s.gateway
    assert pod.status.pod_ip.rsplit(".", 1)[0] == k8s.gateway.rsplit(".", 1)[0]
    assert pod.spec.node_name == "pydist-test-node"
    state = pod.status.container_statuses[0]
    assert state.ready and state.state.running and state.container_id.startswith("docker://")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    container = docker.from_env().containers.get(state.container_id[len("docker://"):])
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["Config"]["Hostname"] == "web"
    assert k8s.network in container.attrs["NetworkSettings"]["Networks"]


@pytest.mark.parametrize("command, args, output", [
    (None, None, "image-entrypoint image-cmd"),                 # the image's own entrypoint and cmd
    (None, ["a", "b"], "image-entrypoint a b"),                 # args replace CMD only
    (["/bin/echo", "cmd"], None, "cmd"),                        # command replaces ENTRYPOINT and drops CMD
    (["/bin/echo", "cmd"], ["x", "$(GREETING)"], "cmd x hi"),  # $(VAR) is expanded from the pod's env
])
def test_command_and_args_follow_kubernetes_rules(core, ns, command, args, output):
    body = pod_body("cmd", command, args, env=[{"name": "GREETING", "value": "hi"}])
    pod, log = run_to_end(core, ns, body)
    assert pod.status.phase == "Succeeded"
    assert log.strip() == output


def test_env_values_field_refs_and_secret_key_refs_reach_the_container(core, k8s, ns):
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}   # noqa: E731
    env = [{"name": "PLAIN", "value": "v"},
           {"name": "POD_NAME", **field("metadata.name")}, {"name": "POD_NS", **field("metadata.namespace")},
           {"name": "POD_UID", **field("metadata.uid")}, {"name": "NODE", **field("spec.nodeName")},
           {"name": "HOST_IP", **field("status.hostIP")}, {"name": "POD_IP", **field("status.podIP")},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    names = [e["name"] for e in env]
    script = "; ".join(f'echo {n}=${n}' for n in names)
    pod, log = run_to_end(core, ns, pod_body("env", ["sh", "-c", script], env=env))
    got = dict(line.split("=", 1) for line in log.splitlines())
    assert got == {"PLAIN": "v", "POD_NAME": "env", "POD_NS": ns, "POD_UID": pod.metadata.uid,
                   "NODE": "pydist-test-node", "HOST_IP": k8s.gateway, "POD_IP": pod.status.pod_ip,
                   "TOKEN": "s3cret"}


def test_working_dir_and_run_as_user_apply(core, ns):
    body = pod_body("who", ["sh", "-c", "pwd; id -u; id -G"], workingDir="/tmp",
                    securityContext={"runAsUser": 1234, "runAsGroup": 2345})
    body["spec"]["securityContext"] = {"fsGroup": 3456}
    _, log = run_to_end(core, ns, body)
    cwd, uid, groups = log.splitlines()
    assert (cwd, uid) == ("/tmp", "1234")
    assert set(groups.split()) == {"2345", "3456"}


def test_run_as_non_root_refuses_an_image_that_runs_as_root(core, ns):
    core.create_namespaced_pod(ns, pod_body("root", ["true"], securityContext={"runAsNonRoot": True}))
    pod = wait_for_pod(core, ns, "root", lambda p: waiting_reason(p) == "CreateContainerConfigError",
                       POD_TIMEOUT, "CreateContainerConfigError")
    assert "runAsNonRoot" in pod.status.container_statuses[0].state.waiting.message


@pytest.fixture
def labelled(core, ns):
    """Three sleeping pods: a (app=x, tier=web), b (app=y, tier=db), c (app=x, no tier)."""
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "y", "tier": "db"}), ("c", {"app": "x"})):
        core.create_namespaced_pod(ns, pod_body(name, ["sleep", "300"], labels=labels))
    return ns


@pytest.mark.parametrize("selector, names", [
    ("app=x", {"a", "c"}), ("app==x", {"a", "c"}), ("app!=x", {"b"}),
    ("tier in (web,db)", {"a", "b"}), ("tier notin (web)", {"b", "c"}),
    ("tier", {"a", "b"}), ("!tier", {"c"}), ("app=x,tier", {"a"}), ("app in (x, y),!tier", {"c"}),
    ("", {"a", "b", "c"}),
])
def test_list_filters_by_label_selector(core, labelled, selector, names):
    pods = core.list_namespaced_pod(labelled, label_selector=selector).items
    assert {p.metadata.name for p in pods} == names


def test_list_filters_by_field_selector(core, labelled):
    wait_for_pod(core, labelled, "a", running, POD_TIMEOUT, "Running")
    by_name = core.list_namespaced_pod(labelled, field_selector="metadata.name=b").items
    assert [p.metadata.name for p in by_name] == ["b"]
    not_a = core.list_namespaced_pod(labelled, field_selector="metadata.name!=a,metadata.namespace=" + labelled)
    assert {p.metadata.name for p in not_a.items} == {"b", "c"}
    running_now = core.list_namespaced_pod(labelled, field_selector="status.phase=Running").items
    running_names = {p.metadata.name for p in running_now}
    assert "a" in running_names
    everywhere = core.list_pod_for_all_namespaces(label_selector="tier=db").items
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere] == [(labelled, "b")]


def test_bad_selector_is_400(core, ns):
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(ns, label_selector="app in x")
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(ns, field_selector="spec.bogus=1")
    assert err.value.status == 400


def test_watch_without_resource_version_starts_with_current_pods_as_added(core, labelled):
    events = list(watch.Watch().stream(core.list_namespaced_pod, labelled, label_selector="app=x", timeout_seconds=1))
    added = {e["object"].metadata.name for e in events if e["type"] == "ADDED"}
    assert added == {"a", "c"}


def test_watch_from_resource_version_replays_added_modified_deleted(core, ns):
    rv = core.list_namespaced_pod(ns).metadata.resource_version
    core.create_namespaced_pod(ns, pod_body("short", ["true"]))
    wait_for_pod(core, ns, "short", finished, POD_TIMEOUT, "Succeeded")
    core.delete_namespaced_pod("short", ns)
    wait_for_pod(core, ns, "short", lambda p: p is None, POD_TIMEOUT, "deletion")
    seen = []
    for event in watch.Watch().stream(core.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=2):
        seen.append((event["type"], event["object"].status.phase))
    types = [t for t, _ in seen]
    assert types[0] == "ADDED" and types[-1] == "DELETED" and "MODIFIED" in types
    assert ("MODIFIED", "Succeeded") in seen


def test_watch_ends_after_timeout_seconds(core, ns):
    start = time.monotonic()
    assert list(watch.Watch().stream(core.list_namespaced_pod, ns, timeout_seconds=1)) == []
    assert time.monotonic() - start < 20       # a watch without its timeout would run for an hour


def test_pod_log_supports_tail_lines_and_follow(core, ns):
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done"
    core.create_namespaced_pod(ns, pod_body("talk", ["sh", "-c", script]))
    wait_for_pod(core, ns, "talk", lambda p: p is not None and p.status.phase != "Pending", POD_TIMEOUT, "a start")
    followed = pod_log(core, "talk", ns, follow=True)      # the stream ends with the container
    assert followed.splitlines() == [f"line{i}" for i in range(1, 6)]
    assert pod_log(core, "talk", ns, tail_lines=2) == "line4\nline5\n"


def test_log_of_a_pod_that_never_started_is_400_with_the_reason(core, ns):
    core.create_namespaced_pod(ns, pod_body("ghost", ["true"], image="pydist-no-such-image:1",
                                            imagePullPolicy="Never"))
    wait_for_pod(core, ns, "ghost", lambda p: waiting_reason(p) == "ErrImageNeverPull", POD_TIMEOUT)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log("ghost", ns)
    assert err.value.status == 400 and "ErrImageNeverPull" in err.value.body


def test_delete_marks_the_pod_stops_the_container_then_404(core, ns):
    core.create_namespaced_pod(ns, pod_body("victim", ["sleep", "300"]))
    pod = wait_for_pod(core, ns, "victim", running, POD_TIMEOUT, "Running")
    cid = pod.status.container_statuses[0].container_id[len("docker://"):]
    deleted = core.delete_namespaced_pod("victim", ns, grace_period_seconds=1)
    assert deleted.metadata.deletion_timestamp is not None
    wait_for_pod(core, ns, "victim", lambda p: p is None, POD_TIMEOUT, "deletion")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("victim", ns)
    assert err.value.status == 404
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(cid)


def test_prestop_exec_hook_runs_before_the_stop(core, ns, k8s):
    """The hook writes a file; the container must still be running when it does."""
    hook = {"exec": {"command": ["sh", "-c", "echo bye > /proc/1/fd/1"]}}     # PID 1 (tini)'s stdout is the log
    body = pod_body("hooked", ["sleep", "300"], lifecycle={"preStop": hook})
    core.create_namespaced_pod(ns, body)
    pod = wait_for_pod(core, ns, "hooked", running, POD_TIMEOUT, "Running")
    container = docker.from_env().containers.get(pod.status.container_statuses[0].container_id[len("docker://"):])
    core.delete_namespaced_pod("hooked", ns, grace_period_seconds=5)
    logs = b""
    deadline = time.monotonic() + POD_TIMEOUT
    for chunk in container.logs(stream=True, follow=True):     # ends when the container stops
        logs += chunk
        if time.monotonic() > deadline:
            break
    assert b"bye" in logs


def test_deletecollection_deletes_only_matching_pods(core, labelled):
    core.delete_collection_namespaced_pod(labelled, label_selector="app=x", grace_period_seconds=0)
    for name in ("a", "c"):
        wait_for_pod(core, labelled, name, lambda p: p is None, POD_TIMEOUT, "deletion")
    assert [p.metadata.name for p in core.list_namespaced_pod(labelled).items] == ["b"]


def test_errors_are_status_objects_with_real_codes(core, ns):
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("nobody", ns)
    assert err.value.status == 404 and '"reason": "NotFound"' in err.value.body
    core.create_namespaced_pod(ns, pod_body("twice", ["sleep", "300"]))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(ns, pod_body("twice", ["sleep", "300"]))
    assert err.value.status == 409 and '"reason": "AlreadyExists"' in err.value.body
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(ns, pod_body("Bad_Name", ["true"]))
    assert err.value.status == 422


def test_generate_name_gives_distinct_names(core, ns):
    body = pod_body("", ["sleep", "300"])
    body["metadata"] = {"generateName": "worker-"}
    names = {core.create_namespaced_pod(ns, body).metadata.name for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("worker-") and len(n) == len("worker-") + 5 for n in names)


def test_secrets_create_get_list_replace_delete(core, ns):
    core.create_namespaced_secret(ns, {"metadata": {"name": "s1", "labels": {"role": "cookie"}},
                                       "stringData": {"cookie": "abc"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "s2"},
                                       "data": {"k": base64.b64encode(b"v").decode()}})
    s1 = core.read_namespaced_secret("s1", ns)
    assert s1.data == {"cookie": base64.b64encode(b"abc").decode()} and s1.string_data is None and s1.type == "Opaque"
    assert [s.metadata.name for s in core.list_namespaced_secret(ns, label_selector="role=cookie").items] == ["s1"]
    s1.data = {"cookie": base64.b64encode(b"xyz").decode()}
    core.replace_namespaced_secret("s1", ns, s1)
    assert base64.b64decode(core.read_namespaced_secret("s1", ns).data["cookie"]) == b"xyz"
    core.delete_namespaced_secret("s2", ns)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("s2", ns)
    assert err.value.status == 404
    core.delete_collection_namespaced_secret(ns, label_selector="role=cookie")
    assert core.list_namespaced_secret(ns).items == []


def test_secret_volume_files_have_the_content_and_modes_asked_for(core, ns):
    core.create_namespaced_secret(ns, {"metadata": {"name": "cookie"}, "stringData": {"cookie": "c00kie", "other": "o"},
                                       "data": {"bin": base64.b64encode(b"\x00\x01").decode()}})
    script = ("cd /var/run/pydist && for f in cookie bin sub/o; do stat -c '%n %a %g' $f; done;"
              " cat cookie; echo; od -An -tx1 bin; touch x 2>/dev/null || echo read-only")
    body = pod_body("vol", ["sh", "-c", script],
                    volumeMounts=[{"name": "c", "mountPath": "/var/run/pydist"}])
    body["spec"]["securityContext"] = {"fsGroup": 4242}
    items = [{"key": "cookie", "path": "cookie"}, {"key": "bin", "path": "bin"},
             {"key": "other", "path": "sub/o", "mode": 0o600}]
    body["spec"]["volumes"] = [{"name": "c", "secret": {"secretName": "cookie", "defaultMode": 0o400, "items": items}}]
    pod, log = run_to_end(core, ns, body)
    assert pod.status.phase == "Succeeded", log
    lines = log.splitlines()
    assert lines[:3] == ["cookie 440 4242", "bin 440 4242", "sub/o 640 4242"]   # fsGroup adds group read
    assert lines[3] == "c00kie" and lines[4].split() == ["00", "01"] and lines[5] == "read-only"


def test_missing_secret_for_a_volume_keeps_the_pod_creating_until_it_exists(core, ns):
    body = pod_body("later", ["cat", "/s/k"], volumeMounts=[{"name": "s", "mountPath": "/s"}])
    body["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": "late"}}]
    core.create_namespaced_pod(ns, body)
    pod = wait_for_pod(core, ns, "later", lambda p: waiting_reason(p) == "ContainerCreating" and
                       "not found" in (p.status.container_statuses[0].state.waiting.message or ""), POD_TIMEOUT)
    assert pod.status.phase == "Pending"
    core.create_namespaced_secret(ns, {"metadata": {"name": "late"}, "stringData": {"k": "finally"}})
    pod = wait_for_pod(core, ns, "later", finished, POD_TIMEOUT, "Succeeded")
    assert pod_log(core, "later", ns) == "finally"


def test_missing_secret_key_ref_is_create_container_config_error(core, ns):
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    core.create_namespaced_pod(ns, pod_body("nosecret", ["true"], env=env))
    pod = wait_for_pod(core, ns, "nosecret", lambda p: waiting_reason(p) == "CreateContainerConfigError", POD_TIMEOUT)
    assert pod.status.phase == "Pending"


@pytest.mark.parametrize("policy, reason", [("Never", "ErrImageNeverPull"), ("IfNotPresent", "ErrImagePull")])
def test_missing_image_is_pending_with_the_pull_error_reason(core, ns, policy, reason):
    core.create_namespaced_pod(ns, pod_body("noimg", ["true"], image="pydist-no-such-image:1", imagePullPolicy=policy))
    pod = wait_for_pod(core, ns, "noimg", lambda p: waiting_reason(p) == reason, POD_TIMEOUT, reason)
    assert pod.status.phase == "Pending"


def test_unschedulable_pod_stays_pending_and_starts_no_container(core, k8s, ns):
    body = pod_body("nowhere", ["true"])
    body["spec"]["nodeSelector"] = {"pool": "gpu"}
    core.create_namespaced_pod(ns, body)
    pod = wait_for_pod(core, ns, "nowhere", lambda p: bool(p and p.status.conditions), POD_TIMEOUT, "a condition")
    [cond] = pod.status.conditions
    assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None and not pod.status.container_statuses
    mine = docker.from_env().containers.list(all=True, filters={"label": f"io.kubernetes.pod.namespace={ns}"})
    assert mine == []


def test_nonzero_exit_is_failed_with_reason_error_and_the_exit_code(core, ns):
    pod, _ = run_to_end(core, ns, pod_body("bad", ["sh", "-c", "exit 3"]))
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.exit_code, term.reason) == ("Failed", 3, "Error")


def test_missing_executable_fails_the_pod_with_start_error(core, ns):
    core.create_namespaced_pod(ns, pod_body("noexe", ["/no/such/binary"]))
    pod = wait_for_pod(core, ns, "noexe", finished, POD_TIMEOUT, "Failed")
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.reason, term.exit_code) == ("Failed", "StartError", 128)


def test_out_of_memory_is_reported_as_oom_killed(core, ns):
    body = pod_body("hog", ["python3", "-c", "s = ' ' * (400 << 20)"],
                    resources={"limits": {"memory": "32Mi"}})
    pod, _ = run_to_end(core, ns, body)
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.reason, term.exit_code) == ("Failed", "OOMKilled", 137)


def test_resource_limits_become_docker_limits(core, ns):
    body = pod_body("limited", ["sleep", "300"], resources={"limits": {"memory": "64Mi", "cpu": "500m"}})
    core.create_namespaced_pod(ns, body)
    pod = wait_for_pod(core, ns, "limited", running, POD_TIMEOUT, "Running")
    host = docker.from_env().containers.get(pod.status.container_statuses[0].container_id[9:]).attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (64 << 20, 500_000_000)
    assert pod.status.qos_class == "Guaranteed"      # requests default to the limits


def test_restart_policy_always_restarts_and_reports_crash_loop_back_off(core, ns):
    core.create_namespaced_pod(ns, pod_body("crashy", ["sh", "-c", "exit 1"], restart="Always"))
    pod = wait_for_pod(core, ns, "crashy", lambda p: waiting_reason(p) == "CrashLoopBackOff", POD_TIMEOUT,
                       "CrashLoopBackOff")
    status = pod.status.container_statuses[0]
    assert status.restart_count >= 1 and status.last_state.terminated.exit_code == 1
    assert pod.status.phase == "Running"


def test_restart_policy_on_failure_restarts_until_success(core, ns):
    # the container's filesystem survives a restart: the second run finds /tmp/once and succeeds
    script = "test -e /tmp/once && { echo run-2; exit 0; }; touch /tmp/once; echo run-1; exit 1"
    pod, log = run_to_end(core, ns, pod_body("twice", ["sh", "-c", script], restart="OnFailure"))
    status = pod.status.container_statuses[0]
    assert (pod.status.phase, status.restart_count, status.last_state.terminated.exit_code) == ("Succeeded", 1, 1)
    assert log == "run-2\n"                                     # the current run only, as on a real kubelet
    assert pod_log(core, "twice", ns, previous=True) == "run-1\n"


def test_patch_changes_pod_metadata_but_not_its_spec(core, ns):
    core.create_namespaced_pod(ns, pod_body("tagged", ["sleep", "300"], labels={"a": "1"}))
    merge = {"metadata": {"labels": {"a": None, "b": "2"}, "annotations": {"note": "x"}}}
    core.patch_namespaced_pod("tagged", ns, merge, _content_type="application/merge-patch+json")
    core.patch_namespaced_pod("tagged", ns, [{"op": "add", "path": "/metadata/labels/c", "value": "3"}])
    core.patch_namespaced_pod("tagged", ns, {"metadata": {"labels": {"d": "4"}}})    # the client: strategic merge
    pod = core.read_namespaced_pod("tagged", ns)
    assert pod.metadata.labels == {"b": "2", "c": "3", "d": "4"} and pod.metadata.annotations == {"note": "x"}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("tagged", ns, [{"op": "replace", "path": "/spec/restartPolicy", "value": "Always"}])
    assert err.value.status == 422


def test_pod_reaches_the_host_at_its_host_ip(core, k8s, ns):
    listener = socket.create_server((k8s.gateway, 0))
    listener.settimeout(POD_TIMEOUT)
    port = listener.getsockname()[1]
    script = f"import os, socket; socket.create_connection((os.environ['HOST_IP'], {port}), 10).sendall(b'hi from pod')"
    env = [{"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]
    core.create_namespaced_pod(ns, pod_body("dialer", ["python3", "-c", script], env=env))
    with listener:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(100) == b"hi from pod"


def test_host_reaches_the_pod_at_its_pod_ip(core, ns):
    script = ("import socket; s = socket.create_server(('0.0.0.0', 9000)); c, _ = s.accept(); "
              "c.sendall(b'hi from pod'); c.close()")
    core.create_namespaced_pod(ns, pod_body("server", ["python3", "-c", script]))
    pod = wait_for_pod(core, ns, "server", running, POD_TIMEOUT, "Running")
    deadline = time.monotonic() + 10
    while True:                 # the process inside may not be listening yet: retry the dial until the deadline
        try:
            with socket.create_connection((pod.status.pod_ip, 9000), timeout=2) as conn:
                assert conn.recv(100) == b"hi from pod"
                return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.1)


def test_stop_removes_containers_network_and_secret_files(pod_image, tmp_path):
    engine = docker.from_env()
    server = KubeTestServer().start()
    try:
        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
        body = pod_body("left", ["sleep", "300"], volumeMounts=[{"name": "s", "mountPath": "/s"}])
        body["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": "s"}}]
        core.create_namespaced_pod("default", body)
        wait_for_pod(core, "default", "left", running, POD_TIMEOUT, "Running")
        volume_root = server.kubelet.volume_root
    finally:
        server.stop()
    label = f"pydist.k8s-apiserver={server.server_id}"
    assert engine.containers.list(all=True, filters={"label": label}) == []
    assert engine.networks.list(names=[server.network]) == []
    assert not os.path.exists(volume_root)
