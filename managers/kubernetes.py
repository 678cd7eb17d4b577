"""KubernetesManager: one pod per worker; each worker dials the master and joins (worker connects).

How a worker starts.  `addprocs(KubernetesManager(n=4))` loads the in-cluster configuration, else
the kubeconfig (KUBECONFIG, ~/.kube/config), keeps the cluster cookie in a Secret
`pydist-<cluster id>-cookie` of the namespace and creates n pods `pydist-worker-<cluster id>-<k>`
(`pod_manifest()` builds one without I/O, see pydist.managers._pods), each running

    python -m pydist.worker --join HEAD --cookie-file /var/run/pydist/cookie --ident <pod name>

with the Secret mounted read-only at /var/run/pydist: the cookie is never in a label, an argument
or the environment.  Pods and Secret are labelled pydist.cluster=<cluster id>, pods also
pydist.role=worker and, once registered, pydist.pid; when the master runs in a pod, worker pods
get an ownerReference to it, so Kubernetes deletes them with it.

Which side connects.  The worker: it dials the master's join listener at HEAD = join_host:port
and authenticates with the cookie; the master never dials a pod.  The launch is the base's
(pydist.managers._join.ResourceManager: the pod name is the worker's ident, so an ElasticManager
never takes these workers, and one that joins after its launch gave up is refused).  While a
launch waits, ONE watch over the cluster's pods (a label selector, no polling) follows them: a
pull error, a container config error, OOMKilled, CrashLoopBackOff or a pod that ends fails that
pod at once; a pod Pending for `pending_timeout` fails with the scheduler's reason; a Running pod
has `worker_timeout` seconds from Running to join.  Failed pods are deleted, and addprocs raises
LaunchError([(pod, reason and its last log lines)], added).

What kill and interrupt do.  `rmprocs` asks the worker to exit over its link, then deletes its
pod (grace period GRACE_PERIOD); a worker that dies is deregistered and its pod deleted.  When
the cluster has no pod left in a namespace its Secret is deleted; at master exit every pod and
Secret of the cluster is (workers exit anyway once their link drops).  `interrupt` goes over the
link; Kubernetes is not involved.

Threads: the base's `pydist-join-status`, one per launch and ending with it, lists then watches
the pods (`watch`).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import socket
import threading
from typing import Any, Callable
from urllib.parse import urlsplit

try:
    import urllib3
    from kubernetes import client, config, watch
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("KubernetesManager needs the official client: pip install 'pydist[kubernetes]'") from err

from ._pods import (COOKIE_KEY, GRACE_PERIOD, LABEL_CLUSTER, LABEL_PID, LABEL_ROLE, NAME_PREFIX, pod_status,
                    secret_name, worker_pod)
from .base import (DEFAULT_IMAGE, OUTPUT_TAIL_LINES, LaunchError, ResourceManager, State, Status, WorkerConfig,
                   cluster_cookie, cluster_id, default_addprocs_params, host_port, join_listener)

log = logging.getLogger("pydist")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# Seconds one API call may take: a loaded API server answers in well under one, a hung one must
# not hang addprocs.
API_TIMEOUT = 30.0
# A watch request ends after this many seconds and is reopened where it stopped: one request per
# half minute per launch, and a stream whose stop() was missed ends soon anyway.
WATCH_TIMEOUT = 30


@dataclasses.dataclass(eq=False)
class _Place:
    """A namespace of one API server where the cluster has pods; they share one cookie Secret."""
    core: Any
    namespace: str
    pods: set[str] = dataclasses.field(default_factory=set)   # created, not deleted; under _lock
    secret: bool = False                                       # exists; under _secret_lock


_lock = threading.Lock()                         # guards _places and _Place.pods
_places: dict[tuple[str, str], _Place] = {}     # (API server, namespace) -> place
# Serialises creating and deleting Secrets (API calls under a lock, so that a pod counted in
# _Place.pods never meets its Secret being deleted); taken before _lock.
_secret_lock = threading.Lock()


class KubernetesManager(ResourceManager):
    """`n` workers, one pod each, dialing the master (worker connects; see the module docstring).

    image, image_pull_policy (default IfNotPresent): the worker image, with `python` and pydist.
    namespace: default the pod's own in a cluster, else the kubeconfig context's, else "default".
    cpu, memory: requests and limits per pod ("500m", "2Gi").  env: extra environment.
    service_account, node_selector, tolerations, labels: as in a Pod spec.  pod_template: a Pod
    (dict or V1Pod) the pods are built on; the options here override it.  join_host, join_port:
    where workers dial (default: an address of this machine pods can reach, any free port).
    worker_timeout: seconds from Running to joined (None: addprocs's).  pending_timeout: seconds a
    pod may stay Pending (unschedulable, pulling) before it fails."""

    kind, prefix = "pod", NAME_PREFIX
    pending_hint = ("free or add capacity, relax node_selector=, tolerations=, cpu= or memory=, "
                    "or raise pending_timeout=")
    join_hint = "check that pods can reach that address (join_host=...)"

    def __init__(self, n: int = 1, image: str = DEFAULT_IMAGE, namespace: str | None = None,
                 cpu: str | float | None = None, memory: str | int | None = None,
                 env: dict[str, str] | None = None, service_account: str | None = None,
                 node_selector: dict[str, str] | None = None, tolerations: list[dict] | None = None,
                 labels: dict[str, str] | None = None, image_pull_policy: str | None = None,
                 pod_template: dict | Any | None = None, join_host: str | None = None, join_port: int = 0,
                 worker_timeout: float | None = None, pending_timeout: float = 300.0):
        super().__init__(n)
        if image_pull_policy not in (None, *PULL_POLICIES):
            raise ValueError(f"image_pull_policy must be one of {', '.join(PULL_POLICIES)}, not {image_pull_policy!r}")
        if not pending_timeout > 0:
            raise ValueError(f"pending_timeout must be > 0 seconds, not {pending_timeout!r}")
        if pod_template is not None and not isinstance(pod_template, dict):
            pod_template = client.ApiClient().sanitize_for_serialization(pod_template)   # a V1Pod
        self.image, self.namespace, self.cpu, self.memory = image, namespace, cpu, memory
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.service_account, self.node_selector = service_account, dict(node_selector or {})
        self.tolerations, self.labels = list(tolerations or []), {str(k): str(v) for k, v in (labels or {}).items()}
        self.image_pull_policy = image_pull_policy or "IfNotPresent"
        self.pod_template, self.join_host, self.join_port = pod_template, join_host, int(join_port)
        self.worker_timeout, self.pending_timeout = worker_timeout, float(pending_timeout)
        self._api: tuple[Any, str, bool] | None = None     # (CoreV1Api, namespace, in a pod)
        self._place: _Place | None = None                   # where its pods go, set by launch
        self._owner: dict | None = None                     # the pods' ownerReference, set by launch

    def __repr__(self) -> str:
        return f"KubernetesManager(n={self.n}, image={self.image!r}, namespace={self.namespace!r})"

    def pod_manifest(self, name: str | None = None, head: str = "HOST:PORT", params: dict | None = None,
                     owner: dict | None = None) -> dict:
        """The Pod that runs one worker dialing `head`, for printing and tests; no side effects.
        A pod_template's command (and args) is kept if it sets one; else its args follow the worker's."""
        return worker_pod(self, name or f"{NAME_PREFIX}-{cluster_id()}-1", head, params or default_addprocs_params(),
                          owner)

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Create the pods and hand each worker that joins to the core (the base's launch); once
        every pod joined or failed, raise LaunchError for the failed ones (deleted by then)."""
        if self.n == 0:
            return
        core, namespace, in_cluster = self.api()
        with _lock:
            self._place = _places.setdefault((core.api_client.configuration.host, namespace),
                                             _Place(core, namespace))
        self._owner = self._owner_ref(core, namespace, in_cluster)
        super().launch(params, launched, notify)

    def listener(self):
        return join_listener("0.0.0.0", self.join_port)      # join_host may be an address NAT maps here

    def head(self, listener) -> str:
        core, _, in_cluster = self.api()
        return host_port(self.join_host or default_join_host(core.api_client.configuration.host, in_cluster),
                         listener.port)

    def name(self, rid: str) -> str:
        return f"pod {self._place.namespace}/{rid}"

    def create(self, name: str, head: str, params: dict) -> None:
        """Count the pod in its place, make sure the cookie Secret is there, create the pod."""
        place = self._place
        with _lock:
            place.pods.add(name)            # counted before the Secret is made: it stays
        try:
            _ensure_secret(place)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            raise RuntimeError(f"the cookie Secret {place.namespace}/{secret_name()} could not be made: "
                               f"{_api_error(err, place.core, place.namespace)}") from err
        try:
            place.core.create_namespaced_pod(place.namespace, self.pod_manifest(name, head, params, self._owner),
                                             _request_timeout=API_TIMEOUT)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            why = _api_error(err, place.core, place.namespace)
            if getattr(err, "status", None) in (400, 422):
                raise ValueError(f"the API server refused the worker pod: {why}; "
                                 "print(manager.pod_manifest()) shows it") from err
            raise RuntimeError(why) from err

    def watch(self, names: list[str], report: Callable[[str, Status], None], done: threading.Event) -> None:
        """List the cluster's pods, then watch them from that version, reporting those of `names`."""
        core, ns, wanted = self._place.core, self._place.namespace, set(names)
        selector, version = f"{LABEL_CLUSTER}={cluster_id()}", None
        while not done.is_set():
            try:
                if version is None:
                    listed = core.list_namespaced_pod(ns, label_selector=selector, _request_timeout=API_TIMEOUT)
                    version = listed.metadata.resource_version
                    events = [("ADDED", core.api_client.sanitize_for_serialization(pod)) for pod in listed.items]
                else:
                    stream = watch.Watch().stream(core.list_namespaced_pod, ns, label_selector=selector,
                                                  resource_version=version, timeout_seconds=WATCH_TIMEOUT,
                                                  _request_timeout=WATCH_TIMEOUT + API_TIMEOUT)
                    events = ((event["type"], event["raw_object"]) for event in stream)
                for kind, pod in events:
                    version = pod["metadata"].get("resourceVersion", version)
                    if pod["metadata"]["name"] in wanted:
                        report(pod["metadata"]["name"], pod_status(pod, deleted=kind == "DELETED"))
                    if done.is_set():
                        return
            except Exception as err:  # noqa: BLE001 -- 410: list again; else the watch broke, say why
                if isinstance(err, ApiException) and err.status == 410:
                    version = None
                    continue
                why = f"the watch of the pods failed ({_api_error(err, core, ns)}) before its worker joined"
                for name in names:
                    report(name, Status(State.ENDED, why))
                return

    def delete(self, names: list[str]) -> None:
        _delete_pods(self._place, names, GRACE_PERIOD)

    def logs(self, name: str) -> str:
        """The pod's last log lines (of the run before, if it restarted and the current one is silent)."""
        place = self._place
        for previous in (False, True):
            try:
                text = pod_log(place.core, name, place.namespace, tail_lines=OUTPUT_TAIL_LINES,
                               previous=previous, _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError):
                continue                # never started, or never restarted: no log
            if text.strip():
                return text.rstrip()
        return ""

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """register: label the pod pydist.pid=<pid>; deregister (the worker is gone): delete its pod.
        interrupt and finalize need nothing: the core sends both over the worker's link."""
        if op == "register":
            try:
                self._place.core.patch_namespaced_pod(config.ident, self._place.namespace, {"metadata": {"labels": {
                    LABEL_PID: str(pid)}}}, _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError) as err:
                log.debug("pydist: could not label pod %s with pydist.pid=%s: %s", config.ident, pid, err)
        super().manage(pid, config, op)

    def api(self) -> tuple[Any, str, bool]:
        """(CoreV1Api, namespace, whether in a pod), made on first use from the in-cluster
        configuration, else the kubeconfig's current context.  Raises LaunchError without either."""
        if self._api is None:
            configuration, in_cluster = client.Configuration(), True
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                in_cluster = False
                try:
                    config.load_kube_config(config_file=_kubeconfig(), client_configuration=configuration)
                except (ConfigException, OSError, TypeError, ValueError) as err:
                    raise LaunchError([("Kubernetes configuration", (
                        f"not in a pod and no usable kubeconfig at {_kubeconfig()} ({err}): set KUBECONFIG, "
                        "or `kubectl config use-context ...`"))]) from err
            core = client.CoreV1Api(client.ApiClient(configuration))
            self._api = (core, self.namespace or default_namespace(in_cluster), in_cluster)
        return self._api

    def _owner_ref(self, core, namespace: str, in_cluster: bool) -> dict | None:
        """An ownerReference to the driver's own pod (env POD_NAME, or in a pod its hostname)."""
        name = os.environ.get("POD_NAME") or (socket.gethostname() if in_cluster else None)
        if not name:
            return None
        try:
            uid = core.read_namespaced_pod(name, namespace, _request_timeout=API_TIMEOUT).metadata.uid
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            log.info("pydist: worker pods get no ownerReference: no driver pod %s/%s (%s)", namespace, name,
                     getattr(err, "reason", err))
            return None
        return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


def default_namespace(in_cluster: bool) -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else "default"."""
    if in_cluster:
        try:
            with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace")) as f:
                return f.read().strip() or "default"
        except OSError:
            pass
    try:
        _, active = config.list_kube_config_contexts(config_file=_kubeconfig())
        return (active.get("context") or {}).get("namespace") or "default"
    except (ConfigException, OSError, TypeError, ValueError):
        return "default"


def default_join_host(api_server: str, in_cluster: bool) -> str:
    """The address pods dial when join_host is not given.  In a pod: its IP (env POD_IP, else the
    hostname's address).  Elsewhere: this machine's address on the route to the API server, or
    on the default route if that one is loopback (picked by a UDP connect, which sends nothing)."""
    if in_cluster or os.environ.get("POD_IP"):
        return os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname())
    for target in (urlsplit(api_server).hostname or "", "192.0.2.1"):     # TEST-NET-1: the default route
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                if not probe.getsockname()[0].startswith("127."):
                    return probe.getsockname()[0]
        except OSError:
            continue
    raise ValueError("cannot tell which address of this machine pods can reach: pass join_host=...")


def _kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or "~/.kube/config"     # read now: the client reads it at import


def _ensure_secret(place: _Place) -> None:
    body = {"metadata": {"name": secret_name(), "labels": {LABEL_CLUSTER: cluster_id(), LABEL_ROLE: "cookie"}},
            "type": "Opaque", "stringData": {COOKIE_KEY: cluster_cookie()}}
    with _secret_lock:
        if not place.secret:
            try:
                place.core.create_namespaced_secret(place.namespace, body, _request_timeout=API_TIMEOUT)
            except ApiException as err:     # 409: left by a deletion of ours that failed
                if err.status != 409:
                    raise
                place.core.replace_namespaced_secret(secret_name(), place.namespace, body, _request_timeout=API_TIMEOUT)
            place.secret = True


def _delete_pods(place: _Place, names: list[str], grace: int) -> None:
    """Delete those of `names` still counted as live (no wait), then the Secret if the cluster has
    no pod left in the namespace."""
    with _lock:
        mine = [n for n in names if n in place.pods]
        place.pods.difference_update(mine)
    for name in mine:
        try:
            place.core.delete_namespaced_pod(name, place.namespace, grace_period_seconds=grace,
                                             _request_timeout=API_TIMEOUT)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            if getattr(err, "status", None) != 404:
                log.warning("pydist: could not delete pod %s/%s (%s): kubectl delete pod -n %s %s",
                            place.namespace, name, getattr(err, "reason", err), place.namespace, name)
    with _secret_lock:
        with _lock:
            empty = not place.pods
        if empty and place.secret:
            try:
                place.core.delete_namespaced_secret(secret_name(), place.namespace, _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError) as err:
                if getattr(err, "status", None) != 404:
                    log.warning("pydist: could not delete Secret %s/%s: %s", place.namespace, secret_name(), err)
            place.secret = False


def _api_error(err: Exception, core, namespace: str) -> str:
    """An API error in words, with the next step."""
    if not isinstance(err, ApiException):
        return (f"the API server at {core.api_client.configuration.host} is unreachable ({err}): check that "
                "KUBECONFIG (or the in-cluster configuration) points at a running cluster")
    try:
        message = json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = err.reason
    if err.status in (401, 403):
        message += (f"; the driver's account needs pods, pods/log and secrets in namespace {namespace!r} "
                    "(see RBAC in docs/managers/kubernetes.md)")
    return f"{err.status} {message}"


@atexit.register
def _delete_everything() -> None:
    """At master exit: delete every pod and Secret of the cluster (their workers exit anyway once
    the master's links close)."""
    with _lock:
        places = [p for p in _places.values() if p.pods or p.secret]
    for place in places:
        selector = f"{LABEL_CLUSTER}={cluster_id()}"
        try:
            place.core.delete_collection_namespaced_pod(place.namespace, label_selector=selector,
                                                        grace_period_seconds=GRACE_PERIOD, _request_timeout=API_TIMEOUT)
            place.core.delete_collection_namespaced_secret(place.namespace, label_selector=selector,
                                                           _request_timeout=API_TIMEOUT)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            log.warning("pydist: could not delete the cluster's pods and Secret (%s): kubectl delete pods,secrets "
                        "-n %s -l %s", err, place.namespace, selector)


def pod_log(core, name: str, namespace: str, **options) -> str:
    """A pod's log as text.  The raw bytes are decoded here: the client's own decoding differs
    by version (36.x returns the repr of the bytes, kubernetes-client/python#2596) and fails on
    output that is not UTF-8."""
    response = core.read_namespaced_pod_log(name, namespace, _preload_content=False, **options)
    try:
        return response.data.decode("utf-8", errors="replace")
    finally:
        response.release_conn()
