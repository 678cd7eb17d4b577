"""End to end: the Helm chart's worker pods join an ElasticManager in this process and compute.

The chart is rendered with the Helm engine from PyPI (helm-python-sdk), as tests/test_helm_chart.py
does, with head.address pointing at this process as the pods see it (the test API server's
gateway, or PYDIST_TEST_K8S_JOIN_HOST on a real cluster: conftest_k8s.py).  The cookie Secret
holds this process's cookie (what `cookie.existingSecret` or a head reading the chart's Secret
amounts to); the worker Deployment's pod template runs unchanged as two pods.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from conftest import wait_until
from conftest_k8s import IMAGE, POD_TIMEOUT, kube, remove_workers, wait_for_pods  # noqa: F401 (fixture)
from pydist.managers import ElasticManager
from pydist.managers.kubernetes import default_join_host
from pydist import addprocs, cluster_cookie, myid, pmap, remotecall_fetch, workers
from pydist.cluster import registry

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)")

CHART = Path(__file__).resolve().parents[2] / "helm" / "pydist"
REPLICAS = 2


def render(values: dict, release: str, namespace: str) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=release, namespace=namespace)
    return [d for name, text in out.items() if not name.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict], kind: str, suffix: str = "") -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return doc


@pytest.mark.kubernetes
def test_chart_worker_pods_join_an_elastic_manager_and_compute(kube):
    remove_workers()
    manager = ElasticManager(n=REPLICAS, port=0, timeout=POD_TIMEOUT)
    host = kube.join_host or default_join_host(kube.core.api_client.configuration.host, False)
    release = f"join-{uuid.uuid4().hex[:6]}"
    repository, tag = IMAGE.rsplit(":", 1)
    docs = render({"head": {"address": host, "port": manager.address[1]}, "replicas": REPLICAS,
                   "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                   "serviceAccount": {"create": False}, "rbac": {"create": False}}, release, kube.namespace)
    secret = find(docs, "Secret")
    template = find(docs, "Deployment", "-worker")["spec"]["template"]
    names = [f"{release}-worker-{k}" for k in range(REPLICAS)]
    selector = f"app.kubernetes.io/instance={release}"
    kube.core.create_namespaced_secret(kube.namespace, {"metadata": secret["metadata"],
                                                        "stringData": {"cookie": cluster_cookie()}})
    try:
        for name in names:
            kube.core.create_namespaced_pod(kube.namespace, {"metadata": {**template["metadata"], "name": name},
                                                             "spec": template["spec"]})
        ids = addprocs(manager)
        assert sorted(workers()) == ids and len(ids) == REPLICAS
        assert sorted(registry()[pid].config.ident for pid in ids) == names      # --ident $(POD_NAME)
        hostnames = {remotecall_fetch(lambda: __import__("socket").gethostname(), pid) for pid in ids}
        assert hostnames == set(names)
        a, b = ids
        assert remotecall_fetch(lambda other: remotecall_fetch(myid, other), a, b) == b    # --advertise $(POD_IP)
        assert pmap(lambda x: x * x, range(8)) == [x * x for x in range(8)]
    finally:
        # Pods first (grace 0): a worker asked to exit would be restarted by its restartPolicy
        # Always and dial in again; a deleted pod's worker just drops its link.
        kube.core.delete_collection_namespaced_pod(kube.namespace, label_selector=selector, grace_period_seconds=0)
        wait_for_pods(kube, selector, lambda pods: not pods, POD_TIMEOUT, f"the pods of release {release} to go")
        wait_until(lambda: workers() == [1], POD_TIMEOUT, "the deleted pods' workers to leave")
        kube.core.delete_namespaced_secret(secret["metadata"]["name"], kube.namespace)
