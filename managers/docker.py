"""DockerManager: workers as Docker containers, one per worker (master connects).

How a worker starts: `launch` only checks that the daemon answers and that the image is
there (it is never pulled); the core then calls `connect(pid, config)` once per worker, and
that creates the container with the pid in its labels.  The container runs
`python -m pydist.worker` (the image's own ENTRYPOINT is not used, so the cookie can only
reach the worker), with `--init` and auto-remove, labelled `pydist.cluster`, `pydist.pid`
and `pydist.master` (hostname:ospid of the master, for `prune`).  `connect` attaches to the
container's stdin, stdout and stderr before starting it, writes the cookie as the first line
of stdin (never in the environment, labels, command line or image), waits for the
`pydist_worker:PORT#HOST` line and dials the container's IP on its network: the default
bridge, or `network=`, also when the master itself runs in a container on that network.

Threads: one per worker, `pydist-docker-output-<pid>`, owned by its container's attach
stream: it finds the address line, relays every line as `From worker N:` and ends when the
container does.

`kill` (rmprocs) asks the worker to exit over its link, stops the container if it did not
go (SIGTERM, then SIGKILL), and waits until Docker has removed it.  `interrupt` goes over
the link; the container is not signalled.  A worker exits when it loses its master, and its
container is then auto-removed; `pydist-docker prune` removes what a crash left behind.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import queue
import socket
import threading
from typing import Any

try:
    import docker
    import requests
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound
    from docker.utils.socket import SocketError, frames_iter
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("DockerManager needs the Docker SDK: pip install 'pydist[docker]'") from err

from pydist.cluster import relay_output

from .base import (DEFAULT_IMAGE, ClusterManager, LaunchError, WorkerConfig, ask_to_exit, cluster_cookie,
                   cluster_id, forwarded_env, master_hostname, parse_address, settings, worker_env)

log = logging.getLogger("pydist")

BUILD_COMMAND = "bash deploy/docker/build.sh"
# The worker command inside the container; the image must have `python` with pydist on PATH.
WORKER_COMMAND = ["python", "-m", "pydist.worker"]
# Seconds one Docker API call may take. Longer means the daemon is stuck or unreachable;
# shorter would fail container creation on a loaded machine.
API_TIMEOUT = 30.0
# Seconds kill waits for Docker to remove an exited container (it takes well under one)
# before removing it by force.
REMOVE_TIMEOUT = 20.0
# Output lines kept for the error of a container that failed before printing its address.
TAIL_LINES = 20
LABEL_CLUSTER, LABEL_PID, LABEL_MASTER = "pydist.cluster", "pydist.pid", "pydist.master"


@dataclasses.dataclass
class _Container:
    """A worker's `WorkerConfig.userdata`: what to start, then the container that runs it."""
    environment: dict[str, str]
    worker_timeout: float
    container: Any = None


class DockerManager(ClusterManager):
    """`n` workers, each in a container of `image` on `network` (default: the bridge).

    cpus: CPUs per container (float); memory: limit per container ("2g" or bytes); env:
    extra environment; volumes: as the SDK's `volumes=` ({host: {"bind": path, "mode": "ro"}}
    or ["host:path:ro"]); labels: extra labels; docker_url: the daemon (default DOCKER_HOST
    or the local socket); name_prefix: containers are named `<prefix>-<cluster id>-<pid>`."""

    def __init__(self, n: int = 1, image: str = DEFAULT_IMAGE, network: str | None = None,
                 cpus: float | None = None, memory: str | int | None = None,
                 env: dict[str, str] | None = None, volumes: dict | list | None = None,
                 labels: dict[str, str] | None = None, docker_url: str | None = None,
                 name_prefix: str = "pydist-worker"):
        if n < 0:
            raise ValueError(f"DockerManager(n={n}): the number of workers must be >= 0")
        self.n, self.image, self.network = n, image, network
        self.cpus, self.memory, self.volumes = cpus, memory, volumes
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        self.docker_url, self.name_prefix = docker_url, name_prefix
        self._client: docker.DockerClient | None = None

    def container_spec(self, pid: int, environment: dict[str, str]) -> dict:
        """The keyword arguments of `containers.create` for worker `pid`; no I/O, no cookie."""
        labels = {**self.labels, LABEL_CLUSTER: cluster_id(), LABEL_PID: str(pid),
                  LABEL_MASTER: f"{master_hostname()}:{os.getpid()}"}
        spec = {"image": self.image, "entrypoint": WORKER_COMMAND, "command": [],
                "name": f"{self.name_prefix}-{cluster_id()}-{pid}", "labels": labels,
                "environment": environment, "stdin_open": True, "init": True, "auto_remove": True,
                "detach": True}
        optional = {"network": self.network, "volumes": self.volumes, "mem_limit": self.memory,
                    "nano_cpus": int(self.cpus * 1e9) if self.cpus else None}
        spec.update({k: v for k, v in optional.items() if v is not None})
        return spec

    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Check the daemon and the image, then hand the core one config per worker: the
        containers are created in `connect`, which knows the pid. Raises LaunchError."""
        client = self.client()
        try:
            client.images.get(self.image)
        except ImageNotFound:
            raise LaunchError([(self.image, (f"no image {self.image!r} on the Docker host; it is never "
                                             f"pulled implicitly: build it with `{BUILD_COMMAND}` (or "
                                             "pull it yourself), or pass image=..."))]) from None
        except (DockerException, requests.RequestException) as err:
            raise LaunchError([(self.image, f"could not inspect the image: {err}")]) from err
        environment = {**forwarded_env(), **worker_env(params), **self.env}
        for k in range(self.n):
            # ident names the worker in errors until connect names its container
            config = WorkerConfig(ident=f"{self.image} worker {k + 1}/{self.n}",
                                  userdata=_Container(environment, params["worker_timeout"]))
            with notify:
                launched.append(config)
                notify.notify_all()

    def client(self) -> docker.DockerClient:
        """The Docker client, made on first use (by `launch`, before any `connect` thread
        runs); raises LaunchError if the daemon does not answer."""
        if self._client is None:
            where = self.docker_url or os.environ.get("DOCKER_HOST") or "the local Docker socket"
            try:
                if self.docker_url:
                    self._client = docker.DockerClient(base_url=self.docker_url, timeout=API_TIMEOUT)
                else:
                    self._client = docker.from_env(timeout=API_TIMEOUT)
                self._client.ping()
            except (DockerException, requests.RequestException) as err:
                self._client = None
                raise LaunchError([(f"Docker daemon at {where}",
                                    (f"unreachable ({err}); check that dockerd runs and that "
                                     "docker_url= or DOCKER_HOST points at it"))]) from err
        return self._client

    def connect(self, pid: int, config: WorkerConfig):
        """Create and start worker `pid`'s container, send the cookie, read its address and
        dial it; returns (socket, socket). Removes the container on any failure."""
        data: _Container = config.userdata
        spec = self.container_spec(pid, data.environment)
        config.ident = spec["name"]
        client = self.client()
        container = data.container = client.containers.create(**spec)
        try:
            stream = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1,
                                                                    "stderr": 1, "stream": 1})
            raw = getattr(stream, "_sock", stream)     # SocketIO over the unix socket, else a socket
            raw.settimeout(None)                       # it carries output for the worker's lifetime
            output = _Output(stream, pid)
            try:
                container.start()
            except APIError as err:
                raise RuntimeError(f"container {spec['name']} ({self.image}) could not start: "
                                   f"{err.explanation or err}; the image needs `python` with pydist "
                                   f"installed: build one with `{BUILD_COMMAND}`") from None
            raw.sendall((cluster_cookie() + "\n").encode())
            address = output.address(data.worker_timeout)
            if address is None:
                raise RuntimeError(f"container {spec['name']} ({self.image}) exited before printing its "
                                   f"address{_exit_code(container)}" + output.tail()
                                   + f"\nCheck that the image runs pydist's worker: `{BUILD_COMMAND}`")
            config.host = _container_ip(container, self.network) or address[0]
            config.port = address[1]
            return super().connect(pid, config)
        except BaseException:
            _remove(container)
            raise

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """On "deregister" (the worker is gone) make sure its container is gone too."""
        if op == "deregister" and isinstance(config.userdata, _Container):
            _remove(config.userdata.container)

    def replacement(self, config: WorkerConfig) -> "DockerManager":
        """One more container like the others (same image, network, limits, labels)."""
        return DockerManager(1, self.image, self.network, self.cpus, self.memory, self.env,
                             self.volumes, self.labels, self.docker_url, self.name_prefix)

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Ask worker `pid` to exit, stop its container if it did not, wait until it is removed."""
        container = config.userdata.container if isinstance(config.userdata, _Container) else None
        if not ask_to_exit(pid, settings.EXIT_TIMEOUT) and container is not None:
            try:
                container.stop(timeout=max(1, int(settings.TERM_TIMEOUT)))
            except (DockerException, requests.RequestException):
                pass
        if container is not None:
            _await_removal(container)

    def __repr__(self) -> str:
        return f"DockerManager(n={self.n}, image={self.image!r}, network={self.network!r})"


class _Output:
    """A container's attached stdout/stderr: the address line, then every line relayed."""

    def __init__(self, stream, pid: int):
        self.pid = pid
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._stream = stream
        self._address: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"pydist-docker-output-{pid}", daemon=True).start()

    def address(self, timeout: float) -> tuple[str, int] | None:
        """(host, port) from the address line; None if the container ended first."""
        try:
            return self._address.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"worker {self.pid} printed no address within {timeout:.0f} s "
                               "(PYDIST_WORKER_TIMEOUT)" + self.tail()) from None

    def tail(self) -> str:
        return "; its last output lines:\n" + "\n".join(self.lines) if self.lines else "; it printed nothing"

    def _run(self) -> None:
        found = False
        partial: dict[int, bytes] = {}
        try:
            for stream_no, chunk in frames_iter(self._stream, tty=False):
                *complete, partial[stream_no] = (partial.get(stream_no, b"") + chunk).split(b"\n")
                for raw in complete:
                    found = self._line(raw.decode(errors="replace").rstrip("\r"), found)
            for rest in partial.values():
                if rest:
                    found = self._line(rest.decode(errors="replace"), found)
        except (OSError, ValueError, SocketError):
            pass
        finally:
            self._stream.close()
            if not found:
                self._address.put(None)

    def _line(self, line: str, found: bool) -> bool:
        if not found:
            try:
                address = parse_address(line)
            except ValueError:
                address = None
            if address is not None:
                self._address.put(address)
                return True
            self.lines.append(line)
        relay_output(self.pid, line)
        return found


def _container_ip(container, network: str | None) -> str | None:
    """The container's address on `network` (or its only network), from Docker's view."""
    try:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"] or {}
    except (DockerException, requests.RequestException, KeyError):
        return None
    chosen = [networks[network]] if network in networks else list(networks.values())
    return next((n["IPAddress"] for n in chosen if n.get("IPAddress")), None)


def _exit_code(container) -> str:
    try:
        code = container.wait(timeout=5, condition="not-running")["StatusCode"]
    except (DockerException, requests.RequestException, KeyError):
        return ""       # already auto-removed: the output below says why it ended
    return f" (exit code {code})"


def _remove(container) -> None:
    """Remove a container by force; one that is gone or already going is fine."""
    if container is None:
        return
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except (DockerException, requests.RequestException) as err:
        if "already in progress" not in str(err):
            log.warning("pydist: could not remove container %s: %s", container.name, err)


def _await_removal(container) -> None:
    try:
        container.client.api.wait(container.id, timeout=REMOVE_TIMEOUT, condition="removed")
    except NotFound:
        return
    except (DockerException, requests.RequestException):
        pass
    _remove(container)


# -- pydist-docker prune --------------------------------------------------------------------
def prune(client: docker.DockerClient | None = None, everything: bool = False,
          cluster: str | None = None, dry_run: bool = False) -> list[tuple[str, str]]:
    """Remove pydist worker containers left by dead clusters; returns (name, why) per container.

    A container is left over when it no longer runs, or when its master (label
    `pydist.master=<hostname>:<ospid>`) ran on this host and that process is gone.
    Containers of masters on other hosts are kept. `everything`: every pydist container;
    `cluster`: only that cluster's."""
    client = client or docker.from_env(timeout=API_TIMEOUT)
    label = f"{LABEL_CLUSTER}={cluster}" if cluster else LABEL_CLUSTER
    removed = []
    for container in client.containers.list(all=True, filters={"label": label}, ignore_removed=True):
        why = "--all" if everything else _leftover(container)
        if why is None:
            continue
        if not dry_run:
            _remove(container)
        removed.append((container.name, why))
    return removed


def _leftover(container) -> str | None:
    if container.status not in ("running", "restarting", "paused"):
        return f"not running ({container.status})"
    host, _, ospid = container.labels.get(LABEL_MASTER, "").rpartition(":")
    if host != socket.gethostname() or not ospid.isdigit():
        return None
    try:
        os.kill(int(ospid), 0)
    except ProcessLookupError:
        return f"its master (process {ospid} on {host}) is gone"
    except PermissionError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    """`pydist-docker prune [--all] [--cluster ID] [--dry-run] [--docker-url URL]`."""
    parser = argparse.ArgumentParser(prog="pydist-docker", description="Manage pydist worker containers.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prune", help="remove worker containers of dead clusters (by label)")
    p.add_argument("--all", action="store_true", help="remove every pydist worker container")
    p.add_argument("--cluster", help="only containers of this cluster id")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.add_argument("--docker-url", help="the Docker daemon (default DOCKER_HOST or the local socket)")
    args = parser.parse_args(argv)
    try:
        client = (docker.DockerClient(base_url=args.docker_url, timeout=API_TIMEOUT) if args.docker_url
                  else docker.from_env(timeout=API_TIMEOUT))
        removed = prune(client, args.all, args.cluster, args.dry_run)
    except (DockerException, requests.RequestException) as err:
        parser.exit(1, f"pydist-docker: the Docker daemon did not answer: {err}\n")
    verb = "would remove" if args.dry_run else "removed"
    for name, why in removed:
        print(f"{verb} {name}: {why}")
    print(f"{verb} {len(removed)} container(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
