"""A small Kubernetes API server for tests: core/v1 pods and secrets, each pod a real Docker container.

Why it exists: no real control plane can be had on the test machines (no
kube-apiserver package, nothing can be downloaded), and the PyPI mocks store
JSON without running anything. This server speaks the HTTP/JSON subset of
core/v1 that the official ``kubernetes`` client (and ``kubectl
--validate=false``) uses, and a kubelet thread runs every pod as a Docker
container on a private network, so a KubernetesManager is tested with real
worker processes, real IPs, real logs and real exits.

Served endpoints (JSON only; anything else answers a 404/405 Status):

    GET                /version  /api  /api/v1  /apis  /healthz  /readyz  /livez
    GET                /api/v1/nodes[/{name}]                 one node, pydist-test-node
    GET, POST          /api/v1/namespaces,  GET /api/v1/namespaces/{ns}
    GET                /api/v1/pods  /api/v1/secrets          all namespaces; list or ?watch=true
    GET, POST, DELETE  /api/v1/namespaces/{ns}/pods           list|watch, create, deletecollection
    GET, PATCH, DELETE /api/v1/namespaces/{ns}/pods/{name}    metadata only; and GET .../status
    GET                /api/v1/namespaces/{ns}/pods/{name}/log   follow, tailLines, timestamps,
                                                                 sinceSeconds, limitBytes
    GET, POST, DELETE  /api/v1/namespaces/{ns}/secrets        list|watch, create, deletecollection
    GET, PUT, PATCH, DELETE  /api/v1/namespaces/{ns}/secrets/{name}

List and watch take ``labelSelector`` (=, ==, !=, in, notin, key, !key) and
``fieldSelector`` (=, ==, != on metadata.name, metadata.namespace,
status.phase, spec.nodeName, spec.restartPolicy, status.podIP; Secret: type).
Watch without ``resourceVersion`` (or with "0") first sends the current
objects as ADDED; with one it replays the history after it (410 Expired when
that is too old); ``timeoutSeconds`` ends the stream.

Threads (all daemons, all owned and stopped by ``KubeTestServer``):
``k8s-apiserver-http`` serves requests, one thread per connection;
``k8s-kubelet`` reconciles pods with their containers (one at a time);
``k8s-docker-events`` feeds Docker's event stream to the kubelet;
``k8s-delete-*`` (a pool) runs graceful deletions, which can take a grace period.

Limits, plainly: one container per pod (no init or sidecar containers), no
scheduler beyond nodeSelector against the one node, no Services/DNS names
other than pod names on the Docker network, volumes only ``secret`` and
``emptyDir`` (secret files are written when the container is created, never
refreshed), no probes, no server-side apply, pods' specs cannot be patched,
no strategic list merging, no exec/attach/port-forward, no
auth/RBAC/admission, namespaces are created on first use, images are never
pulled (a missing image never appears unless built locally), ``limit`` and
``continue`` on lists are ignored, watch bookmarks are never sent.
"""

from __future__ import annotations

import base64
import bisect
import copy
import dataclasses
import json
import logging
import os
import queue
import random
import re
import select
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import docker
import docker.errors

log = logging.getLogger("k8s_apiserver")

NODE_NAME = "pydist-test-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
               "kubernetes.io/arch": "amd64"}
LABEL_SERVER = "pydist.k8s-apiserver"          # on containers and the network: which server owns them
LABEL_POD_UID = "pydist.k8s-apiserver.pod-uid"
HISTORY_LIMIT = 10_000     # watch events kept for replay; older resourceVersions get 410 Expired
RESYNC_INTERVAL = 1.0      # the kubelet re-reads every pod this often, in case a Docker event was missed
QUICK_RUN = 10.0           # a container that ran less than this before exiting counts as a quick failure
WAKE_INTERVAL = 1.0        # a watch with no events checks its deadline and client this often
KINDS = {"pods": "Pod", "secrets": "Secret", "namespaces": "Namespace"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> float:
    """A UTC RFC 3339 time (Docker's, with nanoseconds, or Kubernetes') as seconds since the epoch."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float("0." + (fraction or "0")[:6])


def _docker_time(text: str) -> str | None:
    """Docker's nanosecond timestamps cut to the RFC 3339 seconds Kubernetes writes; None for 'never'."""
    return None if not text or text.startswith("0001-") else text[:19] + "Z"


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object (what the client turns into ApiException)."""

    def __init__(self, code: int, reason: str, message: str, **details):
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": self.reason, "details": self.details, "code": self.code}


def not_found(kind: str, name: str) -> ApiError:
    plural = kind.lower() + "s"
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural)


# ---------------------------------------------------------------------------------------------
# Selectors

_REQUIREMENT = re.compile(
    r"""^\s*(?:!\s*(?P<notkey>[\w./-]+)
        |(?P<key>[\w./-]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)
                             |\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$""", re.X)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses: 'a in (x,y),b' -> ['a in (x,y)', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _requirement(key: str, op: str, values: set[str]):
    """One selector requirement as a predicate on a dict of labels (or of an object's fields)."""
    return {"=": lambda d: d.get(key) in values, "!=": lambda d: d.get(key) not in values,
            "in": lambda d: d.get(key) in values, "notin": lambda d: d.get(key) not in values,
            "exists": lambda d: key in d, "!": lambda d: key not in d}[op]


def parse_label_selector(text: str | None):
    """Compile a labelSelector into a predicate on a labels dict; ApiError 400 when it does not parse.

    As on a real server, `k!=v` and `k notin (...)` also match objects without the label."""
    preds = []
    for part in _split_top_level(text or ""):
        m = _REQUIREMENT.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part.strip()!r}")
        if m["notkey"]:
            preds.append(_requirement(m["notkey"], "!", set()))
        elif m["op"]:
            preds.append(_requirement(m["key"], "!=" if m["op"] == "!=" else "=", {m["value"]}))
        elif m["setop"]:
            preds.append(_requirement(m["key"], m["setop"], {v.strip() for v in m["values"].split(",") if v.strip()}))
        else:
            preds.append(_requirement(m["key"], "exists", set()))
    return lambda labels: all(p(labels or {}) for p in preds)


FIELDS = {"Pod": {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName",
                  "spec.restartPolicy", "status.podIP"},
          "Secret": {"metadata.name", "metadata.namespace", "type"},
          "Namespace": {"metadata.name", "status.phase"}}


def _field(obj: dict, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


def parse_field_selector(text: str | None, kind: str):
    """Compile a fieldSelector (=, ==, != on the fields a real server indexes) into a predicate on an object."""
    reqs = []
    for part in _split_top_level(text or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part.strip()!r}")
        if m[1] not in FIELDS[kind]:
            raise ApiError(400, "BadRequest", f"field label not supported: {m[1]}")
        reqs.append((m[1], _requirement(m[1], "!=" if m[2] == "!=" else "=", {m[3]})))
    return lambda obj: all(pred({field: _field(obj, field)}) for field, pred in reqs)


# ---------------------------------------------------------------------------------------------
# Store

@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str        # ADDED, MODIFIED, DELETED
    kind: str
    obj: dict        # a snapshot: never mutated after the event is recorded


class Store:
    """Objects by (kind, namespace, name), one resourceVersion counter, and the event history watches replay.

    A single Condition guards ``_objects``, ``_rv``, ``_history`` and ``_closed``; every change bumps
    the counter (like etcd's revision) and wakes the watchers. Callers get deep copies, so nothing
    outside the store mutates stored objects or history snapshots."""

    def __init__(self):
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._rv = 0
        self._history: list[WatchEvent] = []
        self._closed = False

    def _record(self, type_: str, kind: str, obj: dict) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(WatchEvent(self._rv, type_, kind, copy.deepcopy(obj)))
        if len(self._history) > 2 * HISTORY_LIMIT:
            del self._history[:-HISTORY_LIMIT]
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def create(self, kind: str, obj: dict) -> dict:
        """Store a new object (uid, timestamps, resourceVersion filled in); 409 AlreadyExists on a name clash."""
        meta = obj["metadata"]
        with self._cond:
            key = (kind, meta.get("namespace", ""), meta["name"])
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{meta["name"]}" already exists',
                               name=meta["name"], kind=kind.lower() + "s")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            self._objects[key] = obj = copy.deepcopy(obj)
            return self._record("ADDED", kind, obj)

    def get(self, kind: str, ns: str, name: str) -> dict:
        with self._cond:
            obj = self._objects.get((kind, ns, name))
            if obj is None:
                raise not_found(kind, name)
            return copy.deepcopy(obj)

    def list(self, kind: str, ns: str | None, match=lambda obj: True) -> tuple[list[dict], int]:
        """Matching objects of a kind (ns None: all namespaces), sorted by name, and the current revision."""
        with self._cond:
            items = [copy.deepcopy(o) for (k, n, _), o in sorted(self._objects.items())
                     if k == kind and (ns is None or n == ns) and match(o)]
            return items, self._rv

    def update(self, kind: str, ns: str, name: str, change) -> dict:
        """Apply ``change(obj)`` to a copy; record MODIFIED only if the object really changed.

        ``change`` runs under the store's lock: it must only edit the dict it is given."""
        with self._cond:
            old = self._objects.get((kind, ns, name))
            if old is None:
                raise not_found(kind, name)
            new = copy.deepcopy(old)
            change(new)
            if new == old:
                return copy.deepcopy(old)
            self._objects[(kind, ns, name)] = new
            return self._record("MODIFIED", kind, new)

    def delete(self, kind: str, ns: str, name: str) -> dict:
        with self._cond:
            obj = self._objects.pop((kind, ns, name), None)
            if obj is None:
                raise not_found(kind, name)
            return self._record("DELETED", kind, obj)

    def watch(self, kind: str, ns: str | None, since: int | None, deadline: float):
        """Yield WatchEvents of one kind (and namespace) as they happen, and None at least every WAKE_INTERVAL.

        The None heartbeats let the caller check whether its client is still there. ``since`` None:
        the current objects first, as ADDED. Ends at ``deadline`` (monotonic) or when the store closes."""
        with self._cond:
            if since is None:
                backlog = [WatchEvent(self._rv, "ADDED", kind, copy.deepcopy(o))
                           for (k, n, _), o in sorted(self._objects.items()) if k == kind and ns in (None, n)]
                cursor = self._rv
            else:
                oldest = self._history[0].rv if self._history else self._rv + 1
                if since < oldest - 1:
                    raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
                backlog, cursor = [], since
        yield from backlog
        while True:
            with self._cond:
                left = deadline - time.monotonic()
                self._cond.wait_for(lambda: self._rv > cursor or self._closed,  # noqa: B023 (called at once)
                                    timeout=max(0.0, min(left, WAKE_INTERVAL)))
                if self._closed or time.monotonic() >= deadline:
                    return
                batch = self._history[bisect.bisect_right(self._history, cursor, key=lambda e: e.rv):]
                cursor = self._rv
            for event in batch:
                if event.kind == kind and ns in (None, event.obj["metadata"].get("namespace")):
                    yield event
            yield None

    def close(self) -> None:
        """End every watch."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# Kubelet: pods as Docker containers

def parse_quantity(text) -> float:
    """A Kubernetes quantity ('512Mi', '1G', '500m', '2', '1e3') as a number of base units."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|)\s*", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    factor = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}[m[2]]
    return float(m[1]) * factor


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: $$ escapes, unknown names stay as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][\w.-]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (also used for strategic merge patches: no list merging here)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def json_patch(doc: dict, ops: list) -> dict:
    """RFC 6902 JSON patch (add, replace, remove, test); ApiError 422 when a path does not apply."""
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        try:
            node = doc
            for part in path[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = path[-1]
            if isinstance(node, list):
                last = len(node) if last == "-" else int(last)
            exists = (0 <= last < len(node)) if isinstance(node, list) else last in node
            if op["op"] == "test":
                if not exists or node[last] != op["value"]:
                    raise ApiError(422, "Invalid", f"the test operation failed at {op['path']}")
            elif op["op"] == "remove" and exists:
                del node[last]
            elif op["op"] == "replace" and exists:
                node[last] = op["value"]
            elif op["op"] == "add" and isinstance(node, list):
                node.insert(last, op["value"])
            elif op["op"] == "add":
                node[last] = op["value"]
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"the {op['op']} operation does not apply to {op['path']}") from None
    return doc


class PodError(Exception):
    """The container cannot be started yet: reported as containerStatuses[].state.waiting {reason, message}."""

    def __init__(self, reason: str, message: str, retry: bool = True):
        super().__init__(message)
        self.reason, self.retry = reason, retry


@dataclasses.dataclass
class PodRuntime:
    """The kubelet's memory of one pod (by uid): its container, IP, secret files and restart bookkeeping."""
    uid: str
    ns: str
    name: str
    ip: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)   # serialises start/restart/stop
    volume_dir: str | None = None
    container_id: str | None = None
    start_time: str = dataclasses.field(default_factory=_now)
    error: PodError | None = None       # why the container is not running yet (if it never started)
    restart_count: int = 0
    # Docker's FinishedAt of each exit the container was restarted after: run k (0-based) wrote its
    # output after exits[k-1] and before exits[k].  A run's StartedAt is no such bound: Docker
    # stamps it after the process started, so a quick first line can be logged before it.
    exits: tuple[str, ...] = ()
    quick_failures: int = 0             # consecutive exits after < QUICK_RUN seconds; 2+ means back-off
    restart_at: float | None = None     # monotonic time of the next restart, None when none is due
    backoff: float = 0.0
    seen_exit: str | None = None        # FinishedAt of the last exit already accounted for
    terminated: tuple[str, dict] | None = None    # (FinishedAt, state.terminated) of the last exit
    last_state: dict = dataclasses.field(default_factory=dict)
    deleting: bool = False


class Kubelet:
    """Runs pods as Docker containers and writes what Docker says back into each pod's status.

    Level-triggered: ``reconcile`` looks at a pod and its container and does what is missing
    (schedule, start, restart, report). It runs on the ``k8s-kubelet`` thread for pods named in its
    queue (from the API handler or Docker events) and for every pod each RESYNC_INTERVAL. Deletions
    run on a small pool because ``docker stop`` waits out the grace period."""

    def __init__(self, store: Store, client: docker.DockerClient, server_id: str,
                 crash_backoff: tuple[float, float] = (1.0, 10.0)):
        self.store, self.client, self.api = store, client, client.api
        self.server_id, self.crash_backoff = server_id, crash_backoff
        self.network = f"pydist-k8s-{server_id}"
        self.subnet = self.gateway = ""
        self.volume_root = tempfile.mkdtemp(prefix=f"pydist-k8s-{server_id}-")   # 0700: secrets live here
        self._runtimes: dict[str, PodRuntime] = {}     # by pod uid; guarded by _lock with _free_ips
        self._free_ips: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._deleter = ThreadPoolExecutor(4, thread_name_prefix="k8s-delete")
        self._events = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Make the pod network (a free 10.244.N.0/24: pod IPs are chosen before start, so that
        status.podIP can be passed as an env var), then start the events and kubelet threads."""
        for n in random.sample(range(1, 255), 64):
            subnet, gateway = f"10.244.{n}.0/24", f"10.244.{n}.1"
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
            try:
                self.client.networks.create(self.network, driver="bridge", ipam=ipam,
                                            labels={LABEL_SERVER: self.server_id})
            except docker.errors.APIError as err:
                if "overlap" in str(err).lower():
                    continue
                raise
            self.subnet, self.gateway = subnet, gateway
            self._free_ips = [f"10.244.{n}.{i}" for i in range(2, 255)]
            break
        else:
            raise RuntimeError("no free 10.244.N.0/24 subnet for the test pod network")
        self._events = self.client.events(decode=True, filters={"type": "container",
                                                                 "label": f"{LABEL_SERVER}={self.server_id}"})
        for name, target in (("k8s-docker-events", self._feed_docker_events), ("k8s-kubelet", self._run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop the threads, then remove every container and the network of this server, and the secret files."""
        self._stopping.set()
        self._queue.put(None)
        if self._events is not None:
            self._events.close()
        for t in self._threads:
            t.join(timeout=10)
        self._deleter.shutdown(wait=False, cancel_futures=True)    # running deletions meet removed containers
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={self.server_id}"}):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
        for net in self.client.networks.list(filters={"label": f"{LABEL_SERVER}={self.server_id}"}):
            net.remove()
        shutil.rmtree(self.volume_root, ignore_errors=True)

    def enqueue(self, ns: str, name: str) -> None:
        self._queue.put((ns, name))

    def _feed_docker_events(self) -> None:
        try:
            for event in self._events:
                attrs = event.get("Actor", {}).get("Attributes", {})
                if "io.kubernetes.pod.name" in attrs:
                    self.enqueue(attrs["io.kubernetes.pod.namespace"], attrs["io.kubernetes.pod.name"])
        except Exception:                       # the stream is closed under us at stop
            if not self._stopping.is_set():
                log.exception("docker event stream failed; the kubelet falls back to its resync")

    def _run(self) -> None:
        next_resync = 0.0
        while not self._stopping.is_set():
            with self._lock:
                due = [rt.restart_at for rt in self._runtimes.values() if rt.restart_at is not None]
            wake = min([next_resync, *due])
            try:
                item = self._queue.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                item = None
            if self._stopping.is_set():
                return
            keys = [item] if item else []
            if time.monotonic() >= wake:            # a resync or a restart is due, however busy the queue is
                pods, _ = self.store.list("Pod", None)
                keys += [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods]
                self._collect_orphans(pods)
                next_resync = time.monotonic() + RESYNC_INTERVAL
            for ns, name in keys:
                try:
                    self.reconcile(ns, name)
                except Exception:
                    log.exception("kubelet: reconciling pod %s/%s failed", ns, name)

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self, ns: str, name: str) -> None:
        try:
            pod = self.store.get("Pod", ns, name)
        except ApiError:
            return
        if pod["metadata"].get("deletionTimestamp"):
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            rt = self._runtimes.get(uid)
        if rt is None:
            if not self._schedule(pod):
                return
            with self._lock:
                rt = self._runtimes[uid] = PodRuntime(uid, ns, name, self._free_ips.pop(0))
        with rt.lock:
            if rt.deleting:
                return
            if rt.container_id is None and (rt.error is None or rt.error.retry):
                try:
                    self._start_container(pod, rt)
                    rt.error = None
                except PodError as err:
                    rt.error = err
            self._report(pod, rt)

    def _schedule(self, pod: dict) -> bool:
        """The one-node scheduler: bind to NODE_NAME unless nodeSelector asks for a label the node lacks."""
        spec, ns, name = pod["spec"], pod["metadata"]["namespace"], pod["metadata"]["name"]
        wanted = spec.get("nodeSelector") or {}
        fits = all(NODE_LABELS.get(k) == v for k, v in wanted.items()) and spec.get("nodeName") in (None, NODE_NAME)
        if not fits:
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}

            def unschedulable(p):
                old = {c["type"]: c for c in p["status"].get("conditions") or []}.get("PodScheduled", {})
                p["status"]["conditions"] = [{**cond, "lastTransitionTime": old.get("lastTransitionTime", _now())}]
            self.store.update("Pod", ns, name, unschedulable)
            return False

        def bind(p):
            p["spec"]["nodeName"] = NODE_NAME
            p["status"].update(hostIP=self.gateway, hostIPs=[{"ip": self.gateway}], startTime=_now(),
                               conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}])
        self.store.update("Pod", ns, name, bind)
        return True

    def _start_container(self, pod: dict, rt: PodRuntime) -> None:
        """Create and start the pod's container; PodError when it cannot (yet)."""
        spec, meta = pod["spec"], pod["metadata"]
        c = spec["containers"][0]
        try:
            image = self.client.images.get(c["image"])
        except docker.errors.ImageNotFound:
            if c.get("imagePullPolicy") == "Never":
                raise PodError("ErrImageNeverPull", f'Container image "{c["image"]}" is not present '
                                                    "with pull policy of Never") from None
            raise PodError("ErrImagePull", f'failed to pull image "{c["image"]}": the test API server '
                                           "never pulls; build or tag the image locally") from None
        env = self._container_env(pod, c, rt.ip)
        binds = self._mount_volumes(pod, c, rt)
        sc = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        user = self._user(sc, image.attrs["Config"].get("User") or "")
        limits = (c.get("resources") or {}).get("limits") or {}
        mem = int(parse_quantity(limits["memory"])) if "memory" in limits else None
        caps = sc.get("capabilities") or {}
        host_config = self.api.create_host_config(
            init=True, network_mode=self.network, binds=binds, mem_limit=mem, memswap_limit=mem,
            nano_cpus=int(parse_quantity(limits["cpu"]) * 1e9) if "cpu" in limits else None,
            group_add=[str(g) for g in ([sc["fsGroup"]] if "fsGroup" in sc else []) + sc.get("supplementalGroups", [])]
            or None, read_only=bool(sc.get("readOnlyRootFilesystem")),
            cap_add=caps.get("add"), cap_drop=caps.get("drop"),
            security_opt=["no-new-privileges"] if sc.get("allowPrivilegeEscalation") is False else None)
        hostname = (spec.get("hostname") or meta["name"])[:63].rstrip("-.")
        net = self.api.create_networking_config(
            {self.network: self.api.create_endpoint_config(ipv4_address=rt.ip, aliases=[hostname])})
        labels = {LABEL_SERVER: self.server_id, LABEL_POD_UID: rt.uid,
                  "io.kubernetes.pod.name": rt.name, "io.kubernetes.pod.namespace": rt.ns}
        try:
            cid = self.api.create_container(
                c["image"], name=f"k8s_{rt.name}_{rt.ns}_{rt.uid[:8]}_{self.server_id}", hostname=hostname,
                entrypoint=[expand_vars(a, env) for a in c["command"]] if c.get("command") else None,
                command=[expand_vars(a, env) for a in c["args"]] if c.get("args") else None,
                environment=env, working_dir=c.get("workingDir"), user=user, labels=labels,
                host_config=host_config, networking_config=net)["Id"]
        except docker.errors.APIError as err:
            raise PodError("CreateContainerError", err.explanation or str(err), retry=False) from None
        try:
            self.api.start(cid)
        except docker.errors.APIError as err:       # e.g. the executable does not exist in the image
            self.api.remove_container(cid, force=True)
            raise PodError("StartError", err.explanation or str(err), retry=False) from None
        rt.container_id = cid

    def _container_env(self, pod: dict, c: dict, ip: str) -> dict[str, str]:
        """env and envFrom as the kubelet computes them: values, fieldRefs, secretKeyRefs, $(VAR) expansion."""
        meta, ns = pod["metadata"], pod["metadata"]["namespace"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": ns, "metadata.uid": meta["uid"],
                  "spec.nodeName": NODE_NAME, "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                  "status.hostIP": self.gateway, "status.podIP": ip}
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                data = self._secret_data(ns, src["secretRef"]["name"], src["secretRef"].get("optional"))
                env.update({src.get("prefix", "") + k: v.decode() for k, v in data.items()})
            else:
                raise PodError("CreateContainerConfigError", f"envFrom {list(src)} is not supported here", False)
        for e in c.get("env") or []:
            ref = e.get("valueFrom") or {}
            if "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                if m:
                    env[e["name"]] = (meta.get(m[1]) or {}).get(m[2], "")
                elif path in fields:
                    env[e["name"]] = fields[path]
                else:
                    raise PodError("CreateContainerConfigError", f"unsupported fieldPath: {path}", False)
            elif "secretKeyRef" in ref:
                sk = ref["secretKeyRef"]
                data = self._secret_data(ns, sk["name"], sk.get("optional"))
                if sk["key"] in data:
                    env[e["name"]] = data[sk["key"]].decode()
                elif not sk.get("optional"):
                    raise PodError("CreateContainerConfigError",
                                   f"couldn't find key {sk['key']} in Secret {ns}/{sk['name']}")
            elif ref:
                raise PodError("CreateContainerConfigError", f"unsupported valueFrom: {list(ref)}", False)
            else:
                env[e["name"]] = expand_vars(e.get("value", ""), env)
        return env

    def _secret_data(self, ns: str, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            secret = self.store.get("Secret", ns, name)
        except ApiError:
            if optional:
                return {}
            raise PodError("CreateContainerConfigError", f'secret "{name}" not found') from None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def _mount_volumes(self, pod: dict, c: dict, rt: PodRuntime) -> list[str]:
        """Write secret volumes as files (owner root, group fsGroup, mode defaultMode/items[].mode, default
        0644 as on a real kubelet) under a 0700 host directory, and bind-mount them; emptyDir is a fresh dir."""
        rt.volume_dir = rt.volume_dir or tempfile.mkdtemp(dir=self.volume_root, prefix=rt.uid[:8] + "-")
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        dirs = {}
        for vol in pod["spec"].get("volumes") or []:
            path = os.path.join(rt.volume_dir, vol["name"])
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            os.chmod(path, 0o755)
            if "secret" in vol:
                src = vol["secret"]
                try:
                    secret = self.store.get("Secret", rt.ns, src["secretName"])
                except ApiError:
                    if not src.get("optional"):
                        raise PodError("ContainerCreating", f'MountVolume.SetUp failed for volume "{vol["name"]}"'
                                                            f' : secret "{src["secretName"]}" not found') from None
                    secret = {}
                data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
                default_mode = src.get("defaultMode", 0o644)
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        raise PodError("ContainerCreating", f'secret {src["secretName"]} has no key {item["key"]}')
                    target = os.path.join(path, item["path"])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                        f.write(data[item["key"]])
                    mode = item.get("mode", default_mode)
                    if fs_group is not None:
                        os.chown(target, 0, int(fs_group))
                        mode |= 0o040
                    os.chmod(target, mode)
            elif "emptyDir" in vol:
                os.chmod(path, 0o1777)
            else:
                raise PodError("CreateContainerConfigError",
                               f'volume "{vol["name"]}": only secret and emptyDir volumes are supported here', False)
            dirs[vol["name"]] = (path, "secret" in vol)
        binds = []
        for mount in c.get("volumeMounts") or []:
            if mount["name"] not in dirs:
                raise PodError("CreateContainerConfigError", f'volumeMount "{mount["name"]}" has no volume', False)
            path, always_ro = dirs[mount["name"]]
            ro = always_ro or mount.get("readOnly")
            binds.append(f"{path}:{mount['mountPath']}:{'ro' if ro else 'rw'}")
        return binds

    @staticmethod
    def _user(sc: dict, image_user: str) -> str | None:
        """Docker's --user from runAsUser/runAsGroup; enforce runAsNonRoot the way the kubelet does."""
        uid = sc.get("runAsUser")
        if sc.get("runAsNonRoot"):
            effective = str(uid) if uid is not None else image_user.split(":")[0]
            if effective in ("", "0", "root"):
                raise PodError("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
            if not effective.isdigit():
                raise PodError("CreateContainerConfigError", f"container has runAsNonRoot and image has non-numeric "
                                                             f"user ({effective}), cannot verify user is non-root")
        if uid is None:
            return None
        return f"{uid}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(uid)

    def _report(self, pod: dict, rt: PodRuntime) -> None:
        """Turn the container's state into the pod's status (restarting it first if its policy says so)."""
        c = pod["spec"]["containers"][0]
        cstatus = {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "started": False,
                   "restartCount": rt.restart_count, "lastState": rt.last_state}
        phase = "Pending"
        if rt.container_id is None:
            err = rt.error or PodError("ContainerCreating", "")
            if err.reason == "StartError" and pod["spec"].get("restartPolicy") == "Never":
                phase = "Failed"                        # the kubelet gives up on a container that cannot start
                cstatus["state"] = {"terminated": {"exitCode": 128, "reason": "StartError", "message": str(err)}}
            else:
                cstatus["state"] = {"waiting": {"reason": err.reason, "message": str(err)}}
        else:
            try:
                info = self.api.inspect_container(rt.container_id)
            except docker.errors.NotFound:
                return                                  # removed by a deletion in progress
            st = info["State"]
            cstatus.update(imageID="docker-pullable://" + info["Image"], containerID="docker://" + info["Id"])
            if st["Status"] in ("exited", "dead") and not rt.deleting:
                st = self._maybe_restart(pod, rt, info)
                cstatus.update(restartCount=rt.restart_count, lastState=rt.last_state)
            if st["Running"]:
                phase = "Running"
                running = {"startedAt": _docker_time(st["StartedAt"])}
                cstatus.update(ready=True, started=True, state={"running": running})
            elif st["Status"] == "created":
                cstatus["state"] = {"waiting": {"reason": "ContainerCreating"}}
            elif rt.restart_at is not None:
                phase = "Running"
                cstatus["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                                f"back-off {rt.backoff:g}s restarting failed container={c['name']}"
                                                f" pod={rt.name}_{rt.ns}({rt.uid})"}}
            else:
                policy = pod["spec"].get("restartPolicy", "Always")
                restarts = policy == "Always" or (policy == "OnFailure" and st["ExitCode"] != 0)
                # A container that exits again at once after its restart is still the kubelet's
                # to restart: the pod stays Running (never Failed under Always), as on a kubelet.
                phase = "Running" if restarts else "Succeeded" if st["ExitCode"] == 0 else "Failed"
                cstatus["state"] = {"terminated": self._terminated(rt, info)}
        ready = "True" if cstatus["ready"] else "False"

        def write(p):
            old = {c["type"]: c for c in p["status"].get("conditions") or []}
            conds = []
            for type_, status in (("PodScheduled", "True"), ("Initialized", "True"),
                                  ("ContainersReady", ready), ("Ready", ready)):
                prev = old.get(type_, {})
                since = prev["lastTransitionTime"] if prev.get("status") == status else _now()
                conds.append({"type": type_, "status": status, "lastTransitionTime": since})
            p["status"].update(phase=phase, conditions=conds, hostIP=self.gateway, hostIPs=[{"ip": self.gateway}],
                               podIP=rt.ip, podIPs=[{"ip": rt.ip}], startTime=rt.start_time,
                               containerStatuses=[cstatus])
        try:
            self.store.update("Pod", rt.ns, rt.name, write)
        except ApiError:
            pass                                          # deleted meanwhile

    def _terminated(self, rt: PodRuntime, info: dict) -> dict:
        """containerStatuses[].state.terminated of the container's last exit (worked out once per exit)."""
        st = info["State"]
        if rt.terminated and rt.terminated[0] == st["FinishedAt"]:
            return rt.terminated[1]
        code, message = st["ExitCode"], None
        reason = "OOMKilled" if st.get("OOMKilled") else "Completed" if code == 0 else "Error"
        if code == 127:         # with --init, a missing executable is tini's exit 127; the kubelet says StartError 128
            tail = self.api.logs(info["Id"], stdout=False, stderr=True, tail=2).decode(errors="replace")
            if "[FATAL tini" in tail and "exec " in tail:
                code, reason, message = 128, "StartError", tail.strip()
        term = {"exitCode": code, "reason": reason, "message": message, "startedAt": _docker_time(st["StartedAt"]),
                "finishedAt": _docker_time(st["FinishedAt"]), "containerID": "docker://" + info["Id"]}
        rt.terminated = (st["FinishedAt"], term)
        return term

    def _maybe_restart(self, pod: dict, rt: PodRuntime, info: dict) -> dict:
        """restartPolicy Always/OnFailure: restart at once after one quick failure, then with a doubling
        back-off (reported as CrashLoopBackOff). Returns the container state to report."""
        policy, st = pod["spec"].get("restartPolicy", "Always"), info["State"]
        if policy == "Never" or (policy == "OnFailure" and st["ExitCode"] == 0):
            return st
        if rt.seen_exit != st["FinishedAt"]:                      # a new exit: account for it once
            rt.seen_exit = st["FinishedAt"]
            rt.last_state = {"terminated": self._terminated(rt, info)}
            quick = _epoch(st["FinishedAt"]) - _epoch(st["StartedAt"]) < QUICK_RUN
            rt.quick_failures = rt.quick_failures + 1 if quick else 0
            base, cap = self.crash_backoff
            rt.backoff = 0.0 if rt.quick_failures < 2 else min(base * 2 ** (rt.quick_failures - 2), cap)
            rt.restart_at = time.monotonic() + rt.backoff
        if time.monotonic() < rt.restart_at:
            return st
        rt.restart_at = None
        self.api.start(rt.container_id)
        rt.restart_count += 1
        rt.exits = (*rt.exits, st["FinishedAt"])      # one assignment: logs() reads it unlocked
        return self.api.inspect_container(rt.container_id)["State"]

    # -- delete and logs ------------------------------------------------------------------------
    def delete(self, pod: dict, grace: int) -> None:
        """Stop and remove the pod's container in the background, then drop the pod (DELETED event)."""
        self._deleter.submit(self._delete, pod, grace)

    def _delete(self, pod: dict, grace: int) -> None:
        with self._lock:
            rt = self._runtimes.get(pod["metadata"]["uid"])
        if rt is not None:
            self._teardown(rt, grace, pod)
        try:
            self.store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            pass

    def _teardown(self, rt: PodRuntime, grace: int, pod: dict | None) -> None:
        """Stop (with the pod's preStop hook, if there is a pod) and remove the container; free IP and files."""
        with rt.lock:                                # waits for a start in progress
            if rt.deleting:
                return
            rt.deleting, rt.restart_at = True, None
        if rt.container_id:
            if pod is not None:
                self._stop_container(pod, rt, grace)
                with rt.lock:
                    self._report(pod, rt)            # the final state, seen before DELETED as on a real server
            try:
                self.api.remove_container(rt.container_id, force=True)
            except docker.errors.NotFound:
                pass
        if rt.volume_dir:
            shutil.rmtree(rt.volume_dir, ignore_errors=True)
        with self._lock:
            self._runtimes.pop(rt.uid, None)
            self._free_ips.append(rt.ip)

    def _collect_orphans(self, pods: list[dict]) -> None:
        """Remove containers whose pod is gone: a pod deleted while the kubelet was starting it."""
        live = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            orphans = [rt for rt in self._runtimes.values() if rt.uid not in live and not rt.deleting]
        for rt in orphans:
            self._deleter.submit(self._teardown, rt, 0, None)

    def _stop_container(self, pod: dict, rt: PodRuntime, grace: int) -> None:
        """preStop hook (exec or sleep) within the grace period, then SIGTERM and SIGKILL at its end."""
        deadline = time.monotonic() + grace
        pre_stop = ((pod["spec"]["containers"][0].get("lifecycle") or {}).get("preStop") or {})
        if grace > 0 and "exec" in pre_stop:
            done = threading.Event()

            def run_hook():
                try:
                    exec_id = self.api.exec_create(rt.container_id, pre_stop["exec"]["command"])["Id"]
                    self.api.exec_start(exec_id)
                except docker.errors.APIError as err:
                    log.warning("preStop hook of pod %s/%s failed: %s", rt.ns, rt.name, err)
                finally:
                    done.set()
            threading.Thread(target=run_hook, name=f"k8s-prestop-{rt.name}", daemon=True).start()
            done.wait(grace)
        elif grace > 0 and "sleep" in pre_stop:
            self._stopping.wait(min(grace, pre_stop["sleep"]["seconds"]))
        try:
            self.api.stop(rt.container_id, timeout=max(0, round(deadline - time.monotonic())))
        except docker.errors.NotFound:
            pass

    def logs(self, pod: dict, follow: bool, previous: bool, **kwargs):
        """The container's output: bytes, or an iterator of chunks when following (ends when it exits).

        Docker keeps one log across restarts; as on a real kubelet, only the current run is shown, or
        with ``previous`` the run before it."""
        with self._lock:
            rt = self._runtimes.get(pod["metadata"]["uid"])
        c, name = pod["spec"]["containers"][0], pod["metadata"]["name"]
        if rt is None or rt.container_id is None:
            waiting = ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting") or {}
            raise ApiError(400, "BadRequest", f'container "{c["name"]}" in pod "{name}" is waiting to start: '
                                              f'{waiting.get("reason", "ContainerCreating")}')
        exits = rt.exits
        if previous and not exits:
            raise ApiError(400, "BadRequest", f'previous terminated container "{c["name"]}" in pod "{name}" not found')
        if previous:
            kwargs.update(until=_epoch(exits[-1]), **({"since": _epoch(exits[-2])} if len(exits) > 1 else {}))
        elif exits:
            kwargs["since"] = max(kwargs.get("since", 0), _epoch(exits[-1]))
        try:
            return self.api.logs(rt.container_id, stdout=True, stderr=True, stream=follow, follow=follow, **kwargs)
        except docker.errors.NotFound:
            raise not_found("Pod", name) from None


# ---------------------------------------------------------------------------------------------
# HTTP

_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
ROUTES = [
    (r"/(version|healthz|readyz|livez|api|apis|api/v1)", "misc"),
    (r"/api/v1/nodes(?:/(?P<name>[^/]+))?", "nodes"),
    (r"/api/v1/namespaces(?:/(?P<name>[^/]+))?", "namespaces"),
    (r"/api/v1/(?P<plural>pods|secrets)", "cluster_list"),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods|secrets)", "collection"),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods|secrets)/(?P<name>[^/]+)(?:/(?P<sub>status|log))?", "item"),
]


class Handler(BaseHTTPRequestHandler):
    """Routes a request to a resource method; every error is a Status object with the real code and reason."""
    protocol_version = "HTTP/1.1"           # keep-alive: the client's urllib3 pool reuses connections
    disable_nagle_algorithm = True          # headers and body are two writes: without this, 40 ms each (delayed ACK)
    server: "KubeTestServer._HTTPServer"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self): self._dispatch("GET")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")
    def do_PATCH(self): self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            self.body = json.loads(raw) if raw else {}
            for pattern, name in ROUTES:
                m = re.fullmatch(pattern, url.path.rstrip("/"))
                if m:
                    return getattr(self, "_" + name)(method, **{k: v for k, v in m.groupdict().items() if v})
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({url.path})")
        except ApiError as err:
            self._json(err.code, err.status())
        except (ValueError, KeyError, TypeError) as err:
            self._json(400, ApiError(400, "BadRequest", f"bad request: {err!r}").status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # noqa: BLE001 -- a bug here must answer 500, not drop the connection
            log.exception("internal error on %s %s", method, self.path)
            self._json(500, ApiError(500, "InternalError", repr(err)).status())

    # -- writing --------------------------------------------------------------------------------
    def _json(self, code: int, obj: dict) -> None:
        self._bytes(code, json.dumps(obj).encode(), "application/json")

    def _bytes(self, code: int, data: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunked(self, chunks, ctype: str) -> None:
        """Stream chunks (None: nothing to send, only a chance to stop) until they end or the client goes."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for data in chunks:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                elif self._client_gone():
                    return
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- routes ---------------------------------------------------------------------------------
    def _misc(self, method, **_):
        srv = self.server.owner
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/version":
            return self._json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-pydist-test",
                                    "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
        if path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": srv.url.split("//")[1]}]})
        if path == "/apis":
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            res = [("pods", "Pod", True, "create delete deletecollection get list watch"),
                   ("pods/log", "Pod", True, "get"), ("pods/status", "Pod", True, "get"),
                   ("secrets", "Secret", True, "create delete deletecollection get list update watch"),
                   ("namespaces", "Namespace", False, "create get list"), ("nodes", "Node", False, "get list")]
            return self._json(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": v.split()}
                for n, k, ns, v in res]})
        return self._bytes(200, b"ok", "text/plain")

    def _nodes(self, method, name=None):
        node = self.server.owner.node()
        if name is None:
            return self._json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [node]})
        if name != NODE_NAME:
            raise not_found("Node", name)
        return self._json(200, node)

    def _namespaces(self, method, name=None):
        owner = self.server.owner
        if method == "POST" and name is None:
            return self._json(201, owner.ensure_namespace(self.body["metadata"]["name"], must_be_new=True))
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} on namespaces is not supported by the test API server")
        if name is None:
            return self._list("Namespace", None)
        return self._json(200, owner.store.get("Namespace", "", name))

    def _cluster_list(self, method, plural):
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} {self.path} is not supported")
        return self._list(KINDS[plural], None)

    def _collection(self, method, ns, plural):
        kind = KINDS[plural]
        if method == "GET":
            return self._list(kind, ns)
        if method == "POST":
            return self._json(201, self.server.owner.create(kind, ns, self.body))
        if method == "DELETE":
            items, rv = self.server.owner.store.list(kind, ns, self._matcher(kind))
            deleted = [self.server.owner.delete(kind, ns, o["metadata"]["name"], self._grace()) for o in items]
            return self._json(200, {"kind": kind + "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(rv)}, "items": deleted})
        raise ApiError(405, "MethodNotAllowed", f"{method} on a {plural} collection is not supported")

    def _item(self, method, ns, plural, name, sub=None):
        owner, kind = self.server.owner, KINDS[plural]
        if sub == "log":
            return self._log(owner.store.get("Pod", ns, name))
        if method == "GET":
            return self._json(200, owner.store.get(kind, ns, name))
        if method == "DELETE" and sub is None:
            return self._json(200, owner.delete(kind, ns, name, self._grace()))
        if method == "PUT" and kind == "Secret" and sub is None:
            return self._json(200, owner.replace_secret(ns, name, self.body))
        if method == "PATCH" and sub is None:
            return self._json(200, owner.patch(kind, ns, name, self.body, self.headers.get("Content-Type", "")))
        raise ApiError(405, "MethodNotAllowed", f"{method} {self.path} is not supported by the test API server")

    def _grace(self) -> int | None:
        value = self.query.get("gracePeriodSeconds", self.body.get("gracePeriodSeconds"))
        return None if value is None else int(value)

    def _matcher(self, kind: str):
        labels = parse_label_selector(self.query.get("labelSelector"))
        fields = parse_field_selector(self.query.get("fieldSelector"), kind)
        return lambda obj: labels(obj["metadata"].get("labels")) and fields(obj)

    def _list(self, kind: str, ns: str | None):
        store, match = self.server.owner.store, self._matcher(kind)
        if self.query.get("watch") in ("true", "1"):
            rv = self.query.get("resourceVersion")
            timeout = self.query.get("timeoutSeconds")
            deadline = time.monotonic() + (float(timeout) if timeout else 3600.0)
            events = store.watch(kind, ns, None if rv in (None, "", "0") else int(rv), deadline)
            return self._chunked(self._watch_lines(events, match), "application/json")
        items, rv = store.list(kind, ns, match)
        self._json(200, {"kind": kind + "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)},
                         "items": items})

    @staticmethod
    def _watch_lines(events, match):
        """One JSON line per matching event, None between batches (a chance to notice a gone client)."""
        try:
            for event in events:
                if event is None:
                    yield None
                elif match(event.obj):
                    yield json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n"
        except ApiError as err:             # 410 Expired: raised before the first event
            yield json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n"

    def _log(self, pod: dict):
        q = self.query
        if q.get("container") not in (None, pod["spec"]["containers"][0]["name"]):
            raise ApiError(400, "BadRequest",
                           f'container {q["container"]} is not valid for pod {pod["metadata"]["name"]}')
        follow = q.get("follow") in ("true", "1")
        kwargs = {"timestamps": q.get("timestamps") in ("true", "1"),
                  "tail": int(q["tailLines"]) if "tailLines" in q else "all"}
        if "sinceSeconds" in q:
            kwargs["since"] = int(time.time()) - int(q["sinceSeconds"])
        out = self.server.owner.kubelet.logs(pod, follow, q.get("previous") in ("true", "1"), **kwargs)
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        if not follow:
            return self._bytes(200, out[:limit] if limit else out, "text/plain")
        self._chunked(out, "text/plain")


# ---------------------------------------------------------------------------------------------
# The server

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
        self.started_at = _now()
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
        if not re.fullmatch(_NAME, meta["name"]) or len(meta["name"]) > 253:
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
            p["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=grace)
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
    """Run a server until interrupted: ``python tests/k8s_apiserver.py --kubeconfig /tmp/kubeconfig``."""
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


if __name__ == "__main__":
    main()
