"""The kubelet: runs pods as Docker containers and writes what Docker says back into their status."""

from __future__ import annotations

import queue
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors

from .containers import Containers, PodError, PodRuntime
from .objects import (
    LABEL_SERVER,
    NODE_LABELS,
    NODE_NAME,
    QUICK_RUN,
    RESYNC_INTERVAL,
    ApiError,
    docker_time,
    epoch,
    log,
    not_found,
    now,
)
from .store import Store


class Kubelet(Containers):
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
                p["status"]["conditions"] = [{**cond, "lastTransitionTime": old.get("lastTransitionTime", now())}]
            self.store.update("Pod", ns, name, unschedulable)
            return False

        def bind(p):
            p["spec"]["nodeName"] = NODE_NAME
            p["status"].update(hostIP=self.gateway, hostIPs=[{"ip": self.gateway}], startTime=now(),
                               conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}])
        self.store.update("Pod", ns, name, bind)
        return True

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
                running = {"startedAt": docker_time(st["StartedAt"])}
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
                since = prev["lastTransitionTime"] if prev.get("status") == status else now()
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
        term = {"exitCode": code, "reason": reason, "message": message, "startedAt": docker_time(st["StartedAt"]),
                "finishedAt": docker_time(st["FinishedAt"]), "containerID": "docker://" + info["Id"]}
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
            quick = epoch(st["FinishedAt"]) - epoch(st["StartedAt"]) < QUICK_RUN
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
            kwargs.update(until=epoch(exits[-1]), **({"since": epoch(exits[-2])} if len(exits) > 1 else {}))
        elif exits:
            kwargs["since"] = max(kwargs.get("since", 0), epoch(exits[-1]))
        try:
            return self.api.logs(rt.container_id, stdout=True, stderr=True, stream=follow, follow=follow, **kwargs)
        except docker.errors.NotFound:
            raise not_found("Pod", name) from None
