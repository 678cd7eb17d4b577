"""KubeTestServer (store, kubelet and HTTP server together), and helpers for tests."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from http.server import ThreadingHTTPServer

import docker
import docker.errors

from .handler import NAME_PATTERN, Handler
from .kubelet import Kubelet
from .objects import NODE_LABELS, NODE_NAME, ApiError, json_patch, merge_patch, now
from .store import Store


class KubeTestServer:
    """The test API server: ``with KubeTestServer() as k8s: k8s.write_kubeconfig(path)``.

    ``url`` is http://127.0.0.1:PORT; ``network`` the Docker network pods run on; ``gateway`` the
    address of this host as pods see it (also every pod's status.hostIP): a driver on this host that
    pods must dial listens there (or on 0.0.0.0)."""

    class _HTTPServer(ThreadingHTTPServer):
        daemon_threads = True
        owner: "KubeTestServer"

    def __init__(self, host: str = "127.0.0.1", docker_client: docker.DockerClient | None = None,
                 crash_backoff: tuple[float, float] = (1.0, 10.0)):
        self.server_id = uuid.uuid4().hex[:10]
        self.started_at = now()
        self.host = host
        self.docker = docker_client or docker.from_env()
        self.store = Store()
        self.kubelet = Kubelet(self.store, self.docker, self.server_id, crash_backoff)
        self._http: KubeTestServer._HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._http.server_address[1]}"

    @property
    def network(self) -> str:
        return self.kubelet.network

    @property
    def gateway(self) -> str:
        return self.kubelet.gateway

    def start(self) -> "KubeTestServer":
        self.kubelet.start()
        for ns in ("default", "kube-system", "kube-public"):
            self.ensure_namespace(ns)
        self._http = self._HTTPServer((self.host, 0), Handler)
        self._http.owner = self
        self._thread = threading.Thread(target=self._http.serve_forever, name="k8s-apiserver-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end the watches, then remove every container, the network and the temp dirs."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.store.close()
        self.kubelet.stop()

    def __enter__(self) -> "KubeTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        """A plain-http kubeconfig for ``kubernetes.config.load_kube_config(config_file=path)`` (JSON is YAML)."""
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "pydist-test",
               "clusters": [{"name": "pydist-test", "cluster": {"server": self.url}}],
               "users": [{"name": "pydist-test", "user": {"token": "pydist-test-token"}}],
               "contexts": [{"name": "pydist-test", "context": {"cluster": "pydist-test", "user": "pydist-test",
                                                                "namespace": namespace}}]}
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    # -- operations the handler calls ----------------------------------------------------------
    def ensure_namespace(self, name: str, must_be_new: bool = False) -> dict:
        ns = {"kind": "Namespace", "apiVersion": "v1",
              "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
              "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        try:
            return self.store.create("Namespace", ns)
        except ApiError:
            if must_be_new:
                raise
            return self.store.get("Namespace", "", name)

    def node(self) -> dict:
        return {"kind": "Node", "apiVersion": "v1",
                "metadata": {"name": NODE_NAME, "labels": NODE_LABELS, "uid": self.server_id,
                             "creationTimestamp": self.started_at},
                "spec": {}, "status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "addresses": [{"type": "InternalIP", "address": self.gateway},
                                  {"type": "Hostname", "address": NODE_NAME}],
                    "capacity": {"cpu": str(os.cpu_count()), "pods": "110"}}}

    def create(self, kind: str, ns: str, body: dict) -> dict:
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{kind} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        if not re.fullmatch(NAME_PATTERN, meta["name"]) or len(meta["name"]) > 253:
            raise ApiError(422, "Invalid", f'{kind} "{meta["name"]}" is invalid: metadata.name: Invalid value: '
                                           "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                           "characters, '-' or '.'", name=meta["name"], kind=kind.lower() + "s")
        meta["namespace"] = ns
        body.update(kind=kind, apiVersion="v1")
        if kind == "Pod":
            self._default_pod(body)
        else:
            self._normalise_secret(body)
        self.ensure_namespace(ns)
        obj = self.store.create(kind, body)
        if kind == "Pod":
            self.kubelet.enqueue(ns, meta["name"])
        return obj

    @staticmethod
    def _default_pod(pod: dict) -> None:
        """Validate what the kubelet relies on and fill in the defaults a real API server would."""
        spec = pod.setdefault("spec", {})
        containers = spec.get("containers") or []
        name = pod["metadata"]["name"]
        if len(containers) != 1 or spec.get("initContainers"):
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec.containers: the test API server runs '
                                           "exactly one container per pod (no init containers)")
        for c in containers:
            if not c.get("name") or not c.get("image"):
                raise ApiError(422, "Invalid",
                               f'Pod "{name}" is invalid: spec.containers[0]: name and image are required')
            tag = c["image"].rsplit("/", 1)[-1]
            c.setdefault("imagePullPolicy", "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
        spec.setdefault("securityContext", {})
        limits = containers[0]["resources"].get("limits") or {}
        requests = containers[0]["resources"].get("requests") or limits
        qos = ("BestEffort" if not limits and not requests else
               "Guaranteed" if {"cpu", "memory"} <= limits.keys() and requests == limits else "Burstable")
        pod["status"] = {"phase": "Pending", "qosClass": qos}

    @staticmethod
    def _normalise_secret(secret: dict) -> None:
        """stringData is merged into data (base64) as a real server does; data must be valid base64."""
        data = secret.get("data") or {}
        for key, value in (secret.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        for key, value in data.items():
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                raise ApiError(422, "Invalid", f"Secret is invalid: data[{key}]: Invalid value: a valid config key")
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise ApiError(400, "BadRequest", f"Secret data[{key}] is not base64") from None
        secret["data"] = data
        secret.setdefault("type", "Opaque")

    def replace_secret(self, ns: str, name: str, body: dict) -> dict:
        self._normalise_secret(body)

        def replace(old):
            for field in ("data", "type"):
                old[field] = body[field]
            for field in ("labels", "annotations"):
                old["metadata"][field] = (body.get("metadata") or {}).get(field)
        return self.store.update("Secret", ns, name, replace)

    def patch(self, kind: str, ns: str, name: str, body, content_type: str) -> dict:
        """JSON patch (a list of operations), merge or strategic merge patch (a dict; no list merging).

        Pods accept changes to metadata (labels, annotations, ...) only; identity fields never change."""
        kind_of_patch = content_type.split(";")[0].strip()
        if kind_of_patch == "application/json-patch+json" and not isinstance(body, list):
            raise ApiError(400, "BadRequest", "json patch: the body must be a list of operations "
                                              "(for a dict, send Content-Type application/merge-patch+json)")
        if kind_of_patch not in ("application/json-patch+json", "application/merge-patch+json",
                                 "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"the test API server does not apply {content_type!r}")

        def change(obj):
            new = json_patch(copy.deepcopy(obj), body) if isinstance(body, list) else merge_patch(obj, body)
            if kind == "Pod" and (new.get("spec") != obj["spec"] or new.get("status") != obj["status"]):
                raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: only metadata of a pod '
                                               "can be patched on the test API server")
            for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
                new.setdefault("metadata", {}).pop(field, None)
                if field in obj["metadata"]:
                    new["metadata"][field] = obj["metadata"][field]
            if kind == "Secret":
                self._normalise_secret(new)             # a patch may carry stringData too
            obj.clear()
            obj.update(new)
        return self.store.update(kind, ns, name, change)

    def delete(self, kind: str, ns: str, name: str, grace: int | None) -> dict:
        """Secrets go at once; a pod gets deletionTimestamp (MODIFIED), is stopped within its grace
        period, and is then removed (DELETED). The reply is the object as it is at that moment."""
        if kind != "Pod":
            return self.store.delete(kind, ns, name)
        pod = self.store.get("Pod", ns, name)
        if pod["metadata"].get("deletionTimestamp"):
            return pod
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace

        def mark(p):
            p["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=grace)
        pod = self.store.update("Pod", ns, name, mark)
        self.kubelet.delete(pod, grace)
        return pod


# ---------------------------------------------------------------------------------------------
# Helpers for tests (they use only the official client, so they work against a real cluster too)

def wait_for_pod(core, ns: str, name: str, predicate, timeout: float = 30.0, what: str = "the awaited state"):
    """Return the pod (None once deleted) as soon as ``predicate(pod_or_None)`` holds; TimeoutError otherwise.

    Lists, then watches from the list's resourceVersion, so no change between the two is missed."""
    from kubernetes import watch
    deadline = time.monotonic() + timeout
    listed = core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}")
    pod = listed.items[0] if listed.items else None
    rv = listed.metadata.resource_version
    while not predicate(pod):
        left = deadline - time.monotonic()
        if left <= 0:
            status = pod.status.to_dict() if pod is not None else "deleted"
            raise TimeoutError(f"pod {ns}/{name} did not reach {what} within {timeout:g} s; last status: {status}")
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}",
                              resource_version=rv, timeout_seconds=max(1, int(left))):
            pod = None if event["type"] == "DELETED" else event["object"]
            rv = event["object"].metadata.resource_version
            if predicate(pod):
                w.stop()
                break
    return pod


def main() -> None:
    """Run a server until interrupted: ``cd tests && python -m k8s_apiserver --kubeconfig /tmp/kubeconfig``."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default="kubeconfig.test", help="where to write the kubeconfig")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with KubeTestServer() as server:
        server.write_kubeconfig(args.kubeconfig, args.namespace)
        print(f"serving {server.url}; pods on network {server.network} (host is {server.gateway}); "
              f"KUBECONFIG={os.path.abspath(args.kubeconfig)}; Ctrl-C stops and removes everything", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
