"""Worker pods as data, no I/O: the Pod a KubernetesManager creates for one worker, and what a
pod's status (as the API sends it) means for that worker.  The manager is in kubernetes.py."""

from __future__ import annotations

import copy

from .base import State, Status, cluster_id, forwarded_env, settings, worker_argv, worker_env

NAME_PREFIX = "pydist-worker"
LABEL_CLUSTER, LABEL_ROLE, LABEL_PID = "pydist.cluster", "pydist.role", "pydist.pid"
COOKIE_DIR, COOKIE_KEY, COOKIE_VOLUME = "/var/run/pydist", "cookie", "pydist-cookie"
# Waiting reasons a worker's pod does not get out of by itself: it fails at once rather than
# after pending_timeout (a registry outage is then retried by calling addprocs again).
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
# SIGTERM to SIGKILL for a deleted pod.  Its worker normally left over its link already; this
# bounds a stuck one (Python as PID 1 without an init ignores SIGTERM).
GRACE_PERIOD = 5
IMAGE_HINT = ("; the nodes must be able to get image=... (push it to a registry they pull from, or load it, "
              "e.g. `kind load docker-image pydist-worker:latest`), or change image_pull_policy=")


def worker_pod(manager, name: str, head: str, params: dict, owner: dict | None) -> dict:
    """The Pod `name` running one worker that dials `head`, built from a KubernetesManager's
    settings (KubernetesManager.pod_manifest)."""
    timeout = float(manager.worker_timeout or params.get("worker_timeout") or settings.WORKER_TIMEOUT)
    pod = {**copy.deepcopy(manager.pod_template or {}), "apiVersion": "v1", "kind": "Pod"}
    pod.pop("status", None)
    meta = pod.setdefault("metadata", {})
    for key in ("namespace", "generateName", "uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    meta["name"] = name
    meta["labels"] = {**(meta.get("labels") or {}), **manager.labels, LABEL_CLUSTER: cluster_id(),
                      LABEL_ROLE: "worker"}
    if owner is not None:
        meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), owner]
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Never")          # a worker's id is never reused: no restarts
    spec.setdefault("terminationGracePeriodSeconds", GRACE_PERIOD)
    if manager.service_account:
        spec["serviceAccountName"] = manager.service_account
    else:
        spec.setdefault("automountServiceAccountToken", False)    # workers never call the API
    if manager.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **manager.node_selector}
    if manager.tolerations:
        spec["tolerations"] = [*(spec.get("tolerations") or []), *manager.tolerations]
    # Mode 0444: only the worker runs in the container, and the image's user need not be root.
    cookie = {"name": COOKIE_VOLUME, "secret": {"secretName": secret_name(), "defaultMode": 0o444,
                                                "items": [{"key": COOKIE_KEY, "path": COOKIE_KEY}]}}
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != COOKIE_VOLUME] + [cookie]
    spec["containers"] = spec.get("containers") or [{}]
    container = spec["containers"][0]
    container.setdefault("name", "worker")
    container.update(image=manager.image, imagePullPolicy=manager.image_pull_policy)
    container.setdefault("command", worker_argv(
        params, "--join", head, "--cookie-file", f"{COOKIE_DIR}/{COOKIE_KEY}", "--ident", name,
        "--advertise", "$(POD_IP)", "--join-timeout", f"{timeout:g}", exename="python"))
    values = {**forwarded_env(), **worker_env(params), **manager.env, "PYDIST_JOIN": head}
    ours = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *({"name": k, "value": v} for k, v in values.items())]
    names = {e["name"] for e in ours}
    container["env"] = [e for e in container.get("env") or [] if e["name"] not in names] + ours
    asked = {k: str(v) for k, v in (("cpu", manager.cpu), ("memory", manager.memory)) if v is not None}
    if asked:
        resources = container.setdefault("resources", {})
        for kind in ("requests", "limits"):
            resources[kind] = {**(resources.get(kind) or {}), **asked}
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != COOKIE_VOLUME]
    container["volumeMounts"] = mounts + [{"name": COOKIE_VOLUME, "mountPath": COOKIE_DIR, "readOnly": True}]
    return pod


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


def pod_status(pod: dict, deleted: bool = False) -> Status:
    """A pod (a dict, as the API sends it) as the launch needs it."""
    why = pod_failure(pod)
    if not why and (deleted or pod["metadata"].get("deletionTimestamp")):
        why = "was deleted (not by pydist) before its worker joined"
    if why:
        return Status(State.ENDED, why)
    if (pod.get("status") or {}).get("phase") == "Running":
        return Status(State.RUNNING)
    return Status(State.PENDING, pending_reason(pod))


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


def secret_name() -> str:
    """The name of the cluster's cookie Secret (the same in every namespace)."""
    return f"pydist-{cluster_id()}-cookie"
