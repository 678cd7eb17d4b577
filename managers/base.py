"""Everything a cluster manager's author needs, in one import (docs/managers/writing.md).

    from pydist.managers.base import ResourceManager, Status, State, worker_argv

Why here and not in `pydist.manager`: that module is the core's side of the interface and
sits below the cluster layer, so it cannot import the backends' shared bases (they use
`addprocs`, the join listener, the scheduler poll loop), and the core must not depend on
`pydist.managers`.  This module gathers the core's names with those bases; every backend in
pydist.managers imports only from here (and from its own client library), never from a
pydist module that is not public.

What a backend subclasses:

* `ClusterManager`: the four verbs (`launch`, `manage`; `connect`, `kill` have defaults), for
  workers the master dials (they print `pydist_worker:PORT#HOST`, see `parse_address`).
* `ResourceManager`: one resource per worker (pod, VM, process), workers dial in; write
  `create`, `poll` (or `watch`), `delete`, optionally `logs`.
* `JobManager`: one batch job of n tasks per launch, workers dial in; write `worker_count`,
  `build_spec`, `submit`, `poll`, `cancel`, optionally `output_tail` and `cookie_file` (or set
  `output_dir`); inside a job, `build_spec` returns a `LocalLaunch` (srun, qrsh -inherit) that
  the base starts, and `poll`/`cancel` use `launch_status`/`stop_launches` for it.
"""

from pydist import (ClusterManager, LaunchError, WorkerConfig, addprocs, cluster_cookie,
                    default_addprocs_params, settings)
from pydist._args import ArgumentParser
from pydist.manager import (ask_to_exit, cluster_id, master_hostname, parse_address, reap,
                            retire_workers, stop_process)
from pydist.output import STDERR_MARK, OutputRelay

from ._base import (DEFAULT_IMAGE, CommandError, forwarded_env, host_port, refuse, run, worker_argv,
                    worker_command, worker_env)
from ._jobs import JobManager, JobState, JobStatus, check_worker_count, export_lines, write_secret
from ._join import OUTPUT_TAIL_LINES, Joins, ResourceManager, State, Status
from ._launches import LocalLaunch, launch_status, stop_launches
from ._listener import JoinListener, join_listener

__all__ = [
    # the core's interface (pydist, pydist.manager)
    "ClusterManager", "WorkerConfig", "LaunchError", "addprocs", "cluster_cookie",
    "default_addprocs_params", "settings", "ask_to_exit", "stop_process", "reap", "cluster_id",
    "master_hostname", "parse_address", "retire_workers",
    # workers' output read by the backend itself (lines to the core's relay), a backend's command
    "OutputRelay", "STDERR_MARK", "ArgumentParser",
    # the worker's command and the backends' subprocess calls
    "worker_argv", "worker_command", "worker_env", "forwarded_env", "host_port", "run",
    "CommandError", "refuse", "DEFAULT_IMAGE", "OUTPUT_TAIL_LINES", "write_secret",
    # workers that dial in
    "JoinListener", "join_listener", "Joins", "State", "Status", "ResourceManager",
    "JobManager", "JobState", "JobStatus",
    # batch jobs: launches inside a job (srun, qrsh -inherit), job scripts
    "LocalLaunch", "launch_status", "stop_launches", "check_worker_count", "export_lines",
]
