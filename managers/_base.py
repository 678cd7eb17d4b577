"""What two or more backends share: the worker command, its environment, subprocess calls,
"host:port" text and refusing a worker that dialed in.

A backend module holds only what differs (see STYLE.md, "A manager module").
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Sequence

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# The image `bash deploy/docker/build.sh` tags: DockerManager's and KubernetesManager's default.
DEFAULT_IMAGE = "pydist-worker:latest"

# PYDIST_* names never passed on: secrets (the cookie travels apart from the environment) and
# the master's own worker identity, which would name every worker alike.
NOT_FORWARDED = re.compile(r"COOKIE|SECRET|TOKEN|PASSWORD|KEY|^PYDIST_WORKER_IDENT$")


def worker_command(params: dict, exename: str | None = None) -> list[str]:
    """`exename exeflags -m pydist.worker`: the start of every worker's command line."""
    return [exename or params["exename"], *params["exeflags"], "-m", "pydist.worker"]


def worker_argv(params: dict, *flags: str, exename: str | None = None) -> list[str]:
    """The command that starts one worker: `exename exeflags -m pydist.worker flags`, plus the
    TLS flags when the cluster uses TLS (file paths, which must exist on the worker's host)."""
    tls = params.get("tls")
    return [*worker_command(params, exename), *flags, *(tls.argv() if tls is not None else ())]


def worker_env(params: dict) -> dict[str, str]:
    """Environment variables a worker needs on top of its host's: the user's `env`, unbuffered
    output (so relayed lines arrive when printed) and, unless enable_threaded_blas, one BLAS
    thread per worker (n workers x n BLAS threads would oversubscribe the cores)."""
    env = {"PYTHONUNBUFFERED": "1"}
    if not params.get("enable_threaded_blas"):
        env.update({name: "1" for name in BLAS_THREAD_VARIABLES})
    env.update({str(k): str(v) for k, v in dict(params.get("env") or {}).items()})
    return env


def forwarded_env() -> dict[str, str]:
    """The master's PYDIST_* settings, for workers whose environment is not the master's
    (containers, pods, SSH sessions): a setting made for the master then holds on its workers
    too (settings.py).  Secret-looking names and PYDIST_WORKER_IDENT stay behind."""
    return {k: v for k, v in os.environ.items() if k.startswith("PYDIST_") and not NOT_FORWARDED.search(k)}


def host_port(host: str, port: int | str) -> str:
    """The text "host:port", an IPv6 address in brackets ("[::1]:9090") so the port stays
    apart: what workers dial, and how errors and messages name an address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def refuse(config) -> None:
    """Refuse a worker that dialed in (its `WorkerConfig.sock`): closing its link makes it exit.
    Shared by the join path's managers, which all meet offers no launch wants."""
    try:
        config.sock.close()
    except (OSError, AttributeError):
        pass


class CommandError(RuntimeError):
    """A backend command failed: shows argv, exit code and the end of its output."""

    def __init__(self, argv: Sequence[str], code: int, stdout: str, stderr: str):
        self.argv, self.code, self.stdout, self.stderr = list(argv), code, stdout, stderr
        tail = "\n".join((stderr or stdout or "").strip().splitlines()[-10:])
        super().__init__(f"{' '.join(argv)} exited with code {code}" + (f":\n{tail}" if tail else ""))


def run(argv: Sequence[str], input: str | None = None, timeout: float = 60.0) -> str:
    """Run a backend command (sbatch, squeue, ...) and return its stdout; the only subprocess call
    managers make for commands. Raises CommandError on a non-zero exit."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        raise CommandError(argv, 127, "", f"{argv[0]}: command not found") from err
    if done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done.stdout
