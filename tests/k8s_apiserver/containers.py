"""A pod's container: the kubelet's memory of one pod (PodRuntime), and how a pod spec becomes a
Docker container (image, command, environment, volumes, user)."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import tempfile
import threading

import docker
import docker.errors

from .objects import LABEL_POD_UID, LABEL_SERVER, NODE_NAME, ApiError, expand_vars, now, parse_quantity


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
    start_time: str = dataclasses.field(default_factory=now)
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



class Containers:
    """Kubelet's part that creates a pod's container (a base class of Kubelet: it uses its Docker
    client, store and volume_root)."""

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
