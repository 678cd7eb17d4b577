"""Launches inside a job: the launcher processes (one `srun` step, one `qrsh -inherit` per worker)
that a master running inside a Slurm allocation or a Grid Engine parallel job starts itself,
instead of submitting a job.  JobManager.launch starts a backend's `LocalLaunch`; the backend's
poll and cancel report and stop it by its key with `launch_status` and `stop_launches`.

`_launchers` (guarded by `_launchers_lock`) holds each live launch's processes by key; they are
started with their own session, so a signal meant for the master does not reach them.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import NamedTuple

from ._base import CommandError
from ._join import State, Status


class LocalLaunch(NamedTuple):
    """The spec of a launch inside a job (an allocation, a parallel job): the launcher commands
    this process runs (one srun step; one qrsh -inherit per worker), the launch key
    `<job id>.<launch>` that `submit` returns, and the file their output is appended to."""
    argvs: list[list[str]]
    key: str
    output: str


_launchers_lock = threading.Lock()                          # guards _launchers
_launchers: dict[str, list[subprocess.Popen]] = {}          # launch key -> its processes


def start_launch(launch: LocalLaunch) -> str:
    """Start the launch's processes (a backend's `submit`); returns its key."""
    os.makedirs(os.path.dirname(launch.output), mode=0o700, exist_ok=True)
    processes = []
    with open(launch.output, "ab") as output:
        for argv in launch.argvs:
            try:
                processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
            except FileNotFoundError as err:
                stop_processes(processes)
                raise CommandError(argv, 127, "", f"{argv[0]}: command not found") from err
    with _launchers_lock:
        _launchers[launch.key] = processes
    return launch.key


def launch_status(key: str, end_time: float | None) -> Status:
    """RUNNING (until `end_time`, the enclosing job's) while any of the launch's processes runs."""
    with _launchers_lock:
        processes = _launchers.get(key)
    if processes is None:
        return Status(State.ENDED, "cancelled")
    codes = [process.poll() for process in processes]
    if None in codes:
        return Status(State.RUNNING, "", end_time)
    return Status(State.ENDED, f"{processes[0].args[0]} exited with code "
                  + ", ".join(str(code) for code in codes))


def stop_launches(keys: list[str], timeout: float = 30.0) -> None:
    """Stop the launches among `keys` (other ids are ignored): see stop_processes."""
    with _launchers_lock:
        processes = [process for key in keys for process in _launchers.pop(key, [])]
    stop_processes(processes, timeout)


def stop_processes(processes: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM each launcher process (srun, qrsh -inherit: it ends its remote tasks), wait for
    it up to `timeout` seconds, then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
