"""Fixtures for the KubernetesManager and Helm-join tests: a Kubernetes API to run pods on.

With KUBECONFIG set, the tests use that cluster (its current context and namespace) as it is:
the worker image must be there (kind: `kind load docker-image pydist-worker:latest`), and the
pods must reach this process at PYDIST_TEST_K8S_JOIN_HOST (default: KubernetesManager's own
guess).  Otherwise they start the test API server (tests/k8s_apiserver/: every pod a Docker
container of the local image on a private network) and point KUBECONFIG at it; pods reach this
process at the network's gateway.  Imported by the test modules (not a conftest: the fixtures
are for these tests only).
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

import infra
from pydist import rmprocs, workers
from pydist.process import STATE

# The worker image under test (a private tag while another build rewrites the shared one).
IMAGE = os.environ.get("PYDIST_TEST_WORKER_IMAGE", infra.WORKER_IMAGE)
POD_TIMEOUT = 90.0      # generous: two cores shared with other tests' containers


@dataclasses.dataclass
class Kube:
    core: object             # kubernetes.client.CoreV1Api
    namespace: str
    join_host: str | None    # what the tests pass as KubernetesManager(join_host=...)
    server: object = None    # the KubeTestServer, if the tests started one


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """The cluster for this module's tests (see the module docstring)."""
    from kubernetes import client, config

    from pydist.managers.kubernetes import default_namespace
    if os.environ.get("KUBECONFIG"):
        core = client.CoreV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
        yield Kube(core, default_namespace(False), os.environ.get("PYDIST_TEST_K8S_JOIN_HOST"))
        return
    infra.require(infra.docker_running(), "the Docker engine")
    infra.require(infra.image_exists(IMAGE), f"the worker image {IMAGE}")
    from k8s_apiserver import KubeTestServer
    with KubeTestServer() as server, pytest.MonkeyPatch.context() as patch:
        path = server.write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "config"))
        patch.setenv("KUBECONFIG", path)
        core = client.CoreV1Api(config.new_client_from_config(config_file=path))
        yield Kube(core, "default", os.environ.get("PYDIST_TEST_K8S_JOIN_HOST") or server.gateway, server)
        remove_workers()            # before the server and its pods go


def remove_workers() -> None:
    ids = [p for p in workers() if p != 1]
    if ids:
        rmprocs(*ids, waitfor=60)


def cluster_pods(kube: Kube, cluster: str | None = None, extra: str = "") -> list:
    selector = f"pydist.cluster={cluster or STATE.cluster_id}" + (f",{extra}" if extra else "")
    return kube.core.list_namespaced_pod(kube.namespace, label_selector=selector).items


def cluster_secrets(kube: Kube, cluster: str | None = None) -> list:
    selector = f"pydist.cluster={cluster or STATE.cluster_id}"
    return kube.core.list_namespaced_secret(kube.namespace, label_selector=selector).items


def wait_for_pods(kube: Kube, selector: str, done, timeout: float, what: str) -> list:
    """List the pods `selector` matches, then watch them until done(pods) holds; returns them.
    Fails naming `what` and the pods' phases after `timeout`."""
    from kubernetes import watch
    deadline = time.monotonic() + timeout
    listed = kube.core.list_namespaced_pod(kube.namespace, label_selector=selector)
    pods = {p.metadata.name: p for p in listed.items}
    version = listed.metadata.resource_version
    while not done(list(pods.values())):
        left = deadline - time.monotonic()
        if left <= 0:
            phases = {name: p.status.phase for name, p in pods.items()}
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; pods: {phases}")
        stream = watch.Watch()
        for event in stream.stream(kube.core.list_namespaced_pod, kube.namespace, label_selector=selector,
                                   resource_version=version, timeout_seconds=max(1, int(left))):
            pod = event["object"]
            version = pod.metadata.resource_version
            if event["type"] == "DELETED":
                pods.pop(pod.metadata.name, None)
            else:
                pods[pod.metadata.name] = pod
            if done(list(pods.values())):
                stream.stop()
                break
    return list(pods.values())


def wait_nothing_left(kube: Kube, cluster: str | None = None, timeout: float = POD_TIMEOUT) -> None:
    """Every pod and the Secret of the cluster are gone (the Secret goes at once, pods in seconds)."""
    cluster = cluster or STATE.cluster_id
    wait_for_pods(kube, f"pydist.cluster={cluster}", lambda pods: not pods, timeout,
                  f"the pods of cluster {cluster} to go")
    assert cluster_secrets(kube, cluster) == [], f"the Secret of cluster {cluster} is left"
