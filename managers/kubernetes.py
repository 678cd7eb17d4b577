"""KubernetesManager: one pod per worker; each worker dials the master and joins (worker connects).

How a worker starts.  `addprocs(KubernetesManager(n=4))` loads the in-cluster configuration, else
the kubeconfig (KUBECONFIG, ~/.kube/config), keeps the cluster cookie in a Secret
`pydist-<cluster id>-cookie` of the namespace and creates n pods `pydist-worker-<cluster id>-<k>`
(`pod_manifest()` builds one without I/O), each running

    python -m pydist.worker --join HEAD --cookie-file /var/run/pydist/cookie --ident <pod name>

with the Secret mounted read-only at /var/run/pydist: the cookie is never in a label, an argument
or the environment.  Pods and Secret are labelled pydist.cluster=<cluster id>, pods also
pydist.role=worker and, once registered, pydist.pid; when the master runs in a pod, worker pods
get an ownerReference to it, so Kubernetes deletes them with it.

Which side connects.  The worker: it dials the master's join listener (pydist.managers.elastic) at
HEAD = join_host:port and authenticates with the cookie; the master never dials a pod.  This
cluster's pods are claimed from the listener, so an ElasticManager never takes them.  While a
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

Threads: `pydist-k8s-watch`, one per launch and ending with it, lists then watches the pods into
the launch's queue; `pydist-k8s-offers`, one per join listener, hands each join offer of this
cluster's pods to the launch awaiting that pod, and refuses the others.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

try:
    import urllib3
    from kubernetes import client, config, watch
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("KubernetesManager needs the official client: pip install 'pydist[kubernetes]'") from err

from pydist import ClusterManager, LaunchError, WorkerConfig, cluster_cookie, default_addprocs_params, settings
from pydist.manager import ask_to_exit
from pydist.process import STATE

from ._base import DEFAULT_IMAGE, forwarded_env, host_port, refuse, worker_argv, worker_env
from .elastic import join_listener

log = logging.getLogger("pydist")

NAME_PREFIX = "pydist-worker"
LABEL_CLUSTER, LABEL_ROLE, LABEL_PID = "pydist.cluster", "pydist.role", "pydist.pid"
COOKIE_DIR, COOKIE_KEY, COOKIE_VOLUME = "/var/run/pydist", "cookie", "pydist-cookie"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# Waiting reasons a worker's pod does not get out of by itself: it fails at once rather than
# after pending_timeout (a registry outage is then retried by calling addprocs again).
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
# Seconds one API call may take: a loaded API server answers in well under one, a hung one must
# not hang addprocs.
API_TIMEOUT = 30.0
# A watch request ends after this many seconds and is reopened where it stopped: one request per
# half minute per launch, and a stream whose stop() was missed ends soon anyway.
WATCH_TIMEOUT = 30
# SIGTERM to SIGKILL for a deleted pod.  Its worker normally left over its link already; this
# bounds a stuck one (Python as PID 1 without an init ignores SIGTERM).
GRACE_PERIOD = 5
# Log lines of a failed pod shown in the LaunchError: enough for a traceback.
TAIL_LINES = 20
IMAGE_HINT = ("; the nodes must be able to get image=... (push it to a registry they pull from, or load it, "
              "e.g. `kind load docker-image pydist-worker:latest`), or change image_pull_policy=")


@dataclasses.dataclass(eq=False)
class _Place:
    """A namespace of one API server where the cluster has pods; they share one cookie Secret."""
    core: Any
    namespace: str
    pods: set[str] = dataclasses.field(default_factory=set)   # created, not deleted; under _lock
    secret: bool = False                                       # exists; under _secret_lock


@dataclasses.dataclass(frozen=True)
class _PodRef:
    """A joined worker's `WorkerConfig.userdata`: its pod."""
    place: _Place
    name: str


_lock = threading.Lock()                         # guards _awaited, _places, _listeners, _Place.pods
_awaited: dict[str, queue.SimpleQueue] = {}     # pod name -> queue of the launch awaiting its join
_places: dict[tuple[str, str], _Place] = {}     # (API server, namespace) -> place
_listeners: set[int] = set()                     # id() of the join listeners served by a thread
# Serialises creating and deleting Secrets (API calls under a lock, so that a launch that has
# counted its pods in _Place.pods never meets its Secret being deleted); taken before _lock.
_secret_lock = threading.Lock()
_serial = itertools.count(1)                     # pod names are never reused while the master lives


class KubernetesManager(ClusterManager):
    """`n` workers, one pod each, dialing the master (worker connects; see the module docstring).

    image, image_pull_policy (default IfNotPresent): the worker image, with `python` and pydist.
    namespace: default the pod's own in a cluster, else the kubeconfig context's, else "default".
    cpu, memory: requests and limits per pod ("500m", "2Gi").  env: extra environment.
    service_account, node_selector, tolerations, labels: as in a Pod spec.  pod_template: a Pod
    (dict or V1Pod) the pods are built on; the options here override it.  join_host, join_port:
    where workers dial (default: an address of this machine pods can reach, any free port).
    worker_timeout: seconds from Running to joined (None: addprocs's).  pending_timeout: seconds a
    pod may stay Pending (unschedulable, pulling) before it fails."""

    def __init__(self, n: int = 1, image: str = DEFAULT_IMAGE, namespace: str | None = None,
                 cpu: str | float | None = None, memory: str | int | None = None,
                 env: dict[str, str] | None = None, service_account: str | None = None,
                 node_selector: dict[str, str] | None = None, tolerations: list[dict] | None = None,
                 labels: dict[str, str] | None = None, image_pull_policy: str | None = None,
                 pod_template: dict | Any | None = None, join_host: str | None = None, join_port: int = 0,
                 worker_timeout: float | None = None, pending_timeout: float = 300.0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"KubernetesManager(n={n!r}): the number of workers must be an int >= 0")
        if image_pull_policy not in (None, *PULL_POLICIES):
            raise ValueError(f"image_pull_policy must be one of {', '.join(PULL_POLICIES)}, not {image_pull_policy!r}")
        if not pending_timeout > 0:
            raise ValueError(f"pending_timeout must be > 0 seconds, not {pending_timeout!r}")
        if pod_template is not None and not isinstance(pod_template, dict):
            pod_template = client.ApiClient().sanitize_for_serialization(pod_template)   # a V1Pod
        self.n, self.image, self.namespace, self.cpu, self.memory = n, image, namespace, cpu, memory
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.service_account, self.node_selector = service_account, dict(node_selector or {})
        self.tolerations, self.labels = list(tolerations or []), {str(k): str(v) for k, v in (labels or {}).items()}
        self.image_pull_policy = image_pull_policy or "IfNotPresent"
        self.pod_template, self.join_host, self.join_port = pod_template, join_host, int(join_port)
        self.worker_timeout, self.pending_timeout = worker_timeout, float(pending_timeout)
        self._api: tuple[Any, str, bool] | None = None     # (CoreV1Api, namespace, in a pod)

    def __repr__(self) -> str:
        return f"KubernetesManager(n={self.n}, image={self.image!r}, namespace={self.namespace!r})"

    def pod_manifest(self, name: str | None = None, head: str = "HOST:PORT", params: dict | None = None,
                     owner: dict | None = None) -> dict:
        """The Pod that runs one worker dialing `head`, for printing and tests; no side effects.
        A pod_template's command (and args) is kept if it sets one; else its args follow the worker's."""
        name = name or f"{NAME_PREFIX}-{STATE.cluster_id}-1"
        params = params or default_addprocs_params()
        timeout = float(self.worker_timeout or params.get("worker_timeout") or settings.WORKER_TIMEOUT)
        pod = {**copy.deepcopy(self.pod_template or {}), "apiVersion": "v1", "kind": "Pod"}
        pod.pop("status", None)
        meta = pod.setdefault("metadata", {})
        for key in ("namespace", "generateName", "uid", "resourceVersion", "creationTimestamp"):
            meta.pop(key, None)
        meta["name"] = name
        meta["labels"] = {**(meta.get("labels") or {}), **self.labels, LABEL_CLUSTER: STATE.cluster_id,
                          LABEL_ROLE: "worker"}
        if owner is not None:
            meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), owner]
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Never")          # a worker's id is never reused: no restarts
        spec.setdefault("terminationGracePeriodSeconds", GRACE_PERIOD)
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        else:
            spec.setdefault("automountServiceAccountToken", False)    # workers never call the API
        if self.node_selector:
            spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **self.node_selector}
        if self.tolerations:
            spec["tolerations"] = [*(spec.get("tolerations") or []), *self.tolerations]
        # Mode 0444: only the worker runs in the container, and the image's user need not be root.
        cookie = {"name": COOKIE_VOLUME, "secret": {"secretName": secret_name(), "defaultMode": 0o444,
                                                    "items": [{"key": COOKIE_KEY, "path": COOKIE_KEY}]}}
        spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != COOKIE_VOLUME] + [cookie]
        spec["containers"] = spec.get("containers") or [{}]
        container = spec["containers"][0]
        container.setdefault("name", "worker")
        container.update(image=self.image, imagePullPolicy=self.image_pull_policy)
        container.setdefault("command", worker_argv(
            params, "--join", head, "--cookie-file", f"{COOKIE_DIR}/{COOKIE_KEY}", "--ident", name,
            "--advertise", "$(POD_IP)", "--join-timeout", f"{timeout:g}", exename="python"))
        values = {**forwarded_env(), **worker_env(params), **self.env, "PYDIST_JOIN": head}
        ours = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                *({"name": k, "value": v} for k, v in values.items())]
        names = {e["name"] for e in ours}
        container["env"] = [e for e in container.get("env") or [] if e["name"] not in names] + ours
        asked = {k: str(v) for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}
        if asked:
            resources = container.setdefault("resources", {})
            for kind in ("requests", "limits"):
                resources[kind] = {**(resources.get(kind) or {}), **asked}
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != COOKIE_VOLUME]
        container["volumeMounts"] = mounts + [{"name": COOKIE_VOLUME, "mountPath": COOKIE_DIR, "readOnly": True}]
        return pod

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Create the pods and hand each worker that joins to the core; once every pod joined or
        failed, raise LaunchError for the failed ones (deleted by then)."""
        if self.n == 0:
            return
        core, namespace, in_cluster = self.api()
        listener = join_listener("0.0.0.0", self.join_port)
        with _lock:
            serve = id(listener) not in _listeners
            _listeners.add(id(listener))
            place = _places.setdefault((core.api_client.configuration.host, namespace), _Place(core, namespace))
        if serve:
            listener.claim(_ours)
            threading.Thread(target=_hand_out_offers, args=(listener,), name="pydist-k8s-offers", daemon=True).start()
        host = self.join_host or default_join_host(core.api_client.configuration.host, in_cluster)
        head = host_port(host, listener.port)
        _Launch(self, place, params, head, launched, notify).run(self._owner(core, namespace, in_cluster))

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """register: label the pod pydist.pid=<pid>; deregister (the worker is gone): delete its pod.
        interrupt and finalize need nothing: the core sends both over the worker's link."""
        ref = config.userdata
        if isinstance(ref, _PodRef) and op == "register":
            try:
                ref.place.core.patch_namespaced_pod(ref.name, ref.place.namespace, {"metadata": {"labels": {
                    LABEL_PID: str(pid)}}}, _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError) as err:
                log.debug("pydist: could not label pod %s with pydist.pid=%s: %s", ref.name, pid, err)
        elif isinstance(ref, _PodRef) and op == "deregister":
            _delete_pods(ref.place, [ref.name], GRACE_PERIOD)

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Ask worker `pid` to exit over its link, then delete its pod (without waiting for it)."""
        ask_to_exit(pid, settings.EXIT_TIMEOUT)
        if isinstance(config.userdata, _PodRef):
            _delete_pods(config.userdata.place, [config.userdata.name], GRACE_PERIOD)

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

    def _owner(self, core, namespace: str, in_cluster: bool) -> dict | None:
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


@dataclasses.dataclass
class _Pending:
    """A created pod whose worker has not joined yet."""
    created: float                       # monotonic
    running_since: float | None = None   # monotonic time the watch first saw it Running
    pod: dict | None = None              # its latest state from the watch


class _Launch:
    """One addprocs of a KubernetesManager, on the core's pydist-launch thread."""

    def __init__(self, manager: KubernetesManager, place: _Place, params: dict, head: str,
                 launched: list[WorkerConfig], notify: threading.Condition):
        self.manager, self.place, self.params, self.head = manager, place, params, head
        self.launched, self.notify, self.core, self.ns = launched, notify, place.core, place.namespace
        self.timeout = float(manager.worker_timeout or params["worker_timeout"])
        self.names = [f"{NAME_PREFIX}-{STATE.cluster_id}-{next(_serial)}" for _ in range(manager.n)]
        self.events: queue.SimpleQueue = queue.SimpleQueue()    # (kind, what) from the watch and offers
        self.missing: dict[str, _Pending] = {}
        self.failures: list[tuple[str, str]] = []
        self.done = threading.Event()
        self.stream: watch.Watch | None = None

    def run(self, owner: dict | None) -> None:
        with _lock:
            self.place.pods.update(self.names)            # counted before the Secret is made
            _awaited.update(dict.fromkeys(self.names, self.events))
        try:
            self._create(owner)
            threading.Thread(target=self._watch, name="pydist-k8s-watch", daemon=True).start()
            self._await_joins()
        finally:
            self.done.set()
            if self.stream is not None:
                self.stream.stop()
            with _lock:
                for name in self.names:
                    _awaited.pop(name, None)           # a late offer is refused
            while not self.events.empty():
                kind, what = self.events.get()
                if kind == "joined":
                    refuse(what)
            _delete_pods(self.place, list(self.missing), 0)     # only after an unexpected error
        if self.failures:
            raise LaunchError(self.failures)

    def _create(self, owner: dict | None) -> None:
        try:
            _ensure_secret(self.place)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            _delete_pods(self.place, self.names, 0, created=False)
            raise LaunchError([(f"Secret {self.ns}/{secret_name()}", _api_error(err, self.core, self.ns))]) from err
        for i, name in enumerate(self.names):
            try:
                self.core.create_namespaced_pod(self.ns, self.manager.pod_manifest(name, self.head, self.params, owner),
                                                _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError) as err:
                _delete_pods(self.place, self.names[i:], 0, created=False)
                why = _api_error(err, self.core, self.ns)
                if i == 0 and getattr(err, "status", None) in (400, 422):
                    raise ValueError(f"the API server refused the worker pod: {why}; "
                                     "print(manager.pod_manifest()) shows it") from err
                self.failures += [(f"pod {self.ns}/{n}", "not created: " + why) for n in self.names[i:]]
                return
            self.missing[name] = _Pending(time.monotonic())

    def _watch(self) -> None:
        """Thread pydist-k8s-watch: list the cluster's pods, then watch them from that version."""
        selector, version = f"{LABEL_CLUSTER}={STATE.cluster_id}", None
        while not self.done.is_set():
            try:
                if version is None:
                    listed = self.core.list_namespaced_pod(self.ns, label_selector=selector,
                                                           _request_timeout=API_TIMEOUT)
                    version = listed.metadata.resource_version
                    for pod in listed.items:
                        self.events.put(("pod", self.core.api_client.sanitize_for_serialization(pod)))
                self.stream = watch.Watch()
                for event in self.stream.stream(self.core.list_namespaced_pod, self.ns, label_selector=selector,
                                                resource_version=version, timeout_seconds=WATCH_TIMEOUT,
                                                _request_timeout=WATCH_TIMEOUT + API_TIMEOUT):
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    self.events.put(("deleted" if event["type"] == "DELETED" else "pod", event["raw_object"]))
                    if self.done.is_set():
                        self.stream.stop()
            except Exception as err:  # noqa: BLE001 -- 410: list again; else the watch broke, say why
                if isinstance(err, ApiException) and err.status == 410:
                    version = None
                    continue
                if not self.done.is_set():   # (a stop() ends the stream with an error too)
                    self.events.put(("error", _api_error(err, self.core, self.ns)))
                return

    def _await_joins(self) -> None:
        while self.missing:
            now = time.monotonic()
            deadlines = {name: p.running_since + self.timeout if p.running_since is not None
                         else p.created + self.manager.pending_timeout for name, p in self.missing.items()}
            for name in [n for n, d in deadlines.items() if d <= now]:
                self._fail(name, self._late(self.missing[name]))
            if not self.missing:
                return
            try:
                kind, what = self.events.get(timeout=min(deadlines[n] for n in self.missing) - now)
            except queue.Empty:
                continue
            if kind == "joined":
                self._hand_over(what)
            elif kind == "error":
                for name in list(self.missing):
                    self._fail(name, f"the watch of the pods failed ({what}) before its worker joined")
            elif what["metadata"]["name"] in self.missing:
                self._update(what, deleted=kind == "deleted")

    def _update(self, pod: dict, deleted: bool) -> None:
        pending = self.missing[pod["metadata"]["name"]]
        pending.pod = pod
        why = pod_failure(pod)
        if not why and (deleted or pod["metadata"].get("deletionTimestamp")):
            why = "was deleted (not by pydist) before its worker joined"
        if why:
            self._fail(pod["metadata"]["name"], why)
        elif pending.running_since is None and (pod.get("status") or {}).get("phase") == "Running":
            pending.running_since = time.monotonic()     # the launch timer starts now

    def _late(self, pending: _Pending) -> str:
        if pending.running_since is None:
            return (f"stayed Pending for {self.manager.pending_timeout:.0f} s ({pending_reason(pending.pod)}) and was "
                    "deleted: free or add capacity, relax node_selector=, tolerations=, cpu= or memory=, or raise "
                    "pending_timeout=")
        return (f"was Running but its worker did not join {self.head} within {self.timeout:.0f} s: check that pods "
                "can reach that address (join_host=...)")

    def _fail(self, name: str, why: str) -> None:
        with _lock:
            _awaited.pop(name, None)
        pending = self.missing.pop(name)
        self.failures.append((f"pod {self.ns}/{name}", why + self._tail(name, pending.pod)))
        _delete_pods(self.place, [name], 0)

    def _tail(self, name: str, pod: dict | None) -> str:
        """The pod's last log lines (of the run before, if it restarted and the current one is silent)."""
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
        for previous in (False, True) if statuses[0].get("restartCount") else (False,):
            try:
                text = self.core.read_namespaced_pod_log(name, self.ns, tail_lines=TAIL_LINES, previous=previous,
                                                         _request_timeout=API_TIMEOUT)
            except (ApiException, urllib3.exceptions.HTTPError):
                continue                # never started: no log
            if text.strip():
                return "; its last log lines:\n" + text.rstrip()
        return ""

    def _hand_over(self, config: WorkerConfig) -> None:
        name = str(config.ident)
        if self.missing.pop(name, None) is None:
            refuse(config)                 # it failed meanwhile
            return
        config.userdata = _PodRef(self.place, name)
        with self.notify:
            self.launched.append(config)
            self.notify.notify_all()


def pod_failure(pod: dict) -> str | None:
    """Why a pod (a dict, as the API sends it) can no longer bring its worker; None if it still may."""
    status = pod.get("status") or {}
    limits = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("resources", {}).get("limits", {})
    for cs in status.get("containerStatuses") or []:
        for terminated in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
            if (terminated or {}).get("reason") == "OOMKilled":
                return (f"OOMKilled: the worker used more than its memory limit ({limits.get('memory', 'none set')}): "
                        "ask for more with memory=...")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            hint = IMAGE_HINT if "Image" in waiting["reason"] else ""
            hint = "; the container keeps exiting" if waiting["reason"] == "CrashLoopBackOff" else hint
            return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ") + hint
    if status.get("phase") in ("Failed", "Succeeded"):
        term = ((status.get("containerStatuses") or [{}])[0].get("state") or {}).get("terminated") or {}
        what = (f"exited with code {term.get('exitCode')} ({term.get('reason')})" if term else
                f"ended ({status.get('reason') or status['phase']}: {status.get('message') or 'no message'})")
        killed = (f"; 137 means SIGKILL, usually for going over the memory limit ({limits['memory']}): ask for more "
                  "with memory=..." if term.get("exitCode") == 137 and "memory" in limits else "")
        return f"the worker {what}{': ' + term['message'] if term.get('message') else ''} before it joined{killed}"
    return None


def pending_reason(pod: dict | None) -> str:
    """Why a pod is Pending, in the scheduler's or the kubelet's words."""
    status = (pod or {}).get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason') or 'not scheduled'}: {cond.get('message') or ''}".rstrip(": ")
    for cs in status.get("containerStatuses") or []:
        if (cs.get("state") or {}).get("waiting"):
            waiting = cs["state"]["waiting"]
            return f"{waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ")
    return "not scheduled yet" if pod else "no status reported"


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


def secret_name() -> str:
    """The name of the cluster's cookie Secret (the same in every namespace)."""
    return f"pydist-{STATE.cluster_id}-cookie"


def _kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or "~/.kube/config"     # read now: the client reads it at import


def _ensure_secret(place: _Place) -> None:
    body = {"metadata": {"name": secret_name(), "labels": {LABEL_CLUSTER: STATE.cluster_id, LABEL_ROLE: "cookie"}},
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


def _delete_pods(place: _Place, names: list[str], grace: int, created: bool = True) -> None:
    """Delete those of `names` still counted as live (no wait; created=False: never created), then
    the Secret if the cluster has no pod left in the namespace."""
    with _lock:
        mine = [n for n in names if n in place.pods]
        place.pods.difference_update(mine)
    for name in mine if created else ():
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


def _ours(config: WorkerConfig) -> bool:
    return str(config.ident).startswith(f"{NAME_PREFIX}-{STATE.cluster_id}-")


def _hand_out_offers(listener) -> None:
    """Thread pydist-k8s-offers: each offer of this cluster's pods goes to the launch awaiting it."""
    while True:
        config = listener.next_offer(None, _ours)
        if config is None:
            return          # the listener was closed
        with _lock:         # put under the lock: a launch ending drains its queue after
            events = _awaited.pop(str(config.ident), None)     # removing its names (run)
            if events is not None:
                events.put(("joined", config))
        if events is None:
            log.warning("pydist: refused worker %s: no launch awaits it (it failed or timed out)", config.ident)
            refuse(config)


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
        selector = f"{LABEL_CLUSTER}={STATE.cluster_id}"
        try:
            place.core.delete_collection_namespaced_pod(place.namespace, label_selector=selector,
                                                        grace_period_seconds=GRACE_PERIOD, _request_timeout=API_TIMEOUT)
            place.core.delete_collection_namespaced_secret(place.namespace, label_selector=selector,
                                                           _request_timeout=API_TIMEOUT)
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            log.warning("pydist: could not delete the cluster's pods and Secret (%s): kubectl delete pods,secrets "
                        "-n %s -l %s", err, place.namespace, selector)
