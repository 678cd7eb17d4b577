"""pydist: Julia's Distributed standard library for Python."""

import importlib.abc
import importlib.util
import os
import sys


class _CheckoutManagers(importlib.abc.MetaPathFinder):
    """`pydist.managers` from a source checkout used without an install (PYTHONPATH=the
    repository): the top-level managers/ folder, as an install maps it (pyproject.toml's
    package-dir). Consulted after every other finder, so an installed copy always wins."""

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "managers")

    def find_spec(self, name, path, target=None):
        if name != "pydist.managers" or not os.path.isfile(os.path.join(self.folder, "__init__.py")):
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(self.folder, "__init__.py"), submodule_search_locations=[self.folder])


if not any(isinstance(finder, _CheckoutManagers) for finder in sys.meta_path):
    sys.meta_path.append(_CheckoutManagers())

from .calls import (fetchany, fetchfrom, remote_do, remotecall, remotecall_fetch, remotecall_wait,
                    spawn, spawnat)
from .channel import Channel
from .cluster import addprocs, interrupt
from .removal import rmprocs
from .everywhere import everywhere
from .executor import Executor
from .errors import (CapturedException, InvalidStateError, LaunchError, ProcessExitedException,
                     RemoteException)
from .distributed import distributed
from .pmap import pmap
from .pools import (AbstractWorkerPool, CachingPool, WorkerPool, clear, default_worker_pool,
                    remote)
from .manager import ClusterManager, WorkerConfig, default_addprocs_params
from .process import (cluster_cookie, myid, nprocs, nworkers, procs, worker_id_from_socket,
                      workers)
from .refs import (RRID, Future, RemoteChannel, channel_from_id, fetch, isready, put,
                   remoteref_id, take, wait)
from .worker import init_worker, process_messages, start_worker
from . import status  # noqa: F401  (its addprocs hook: every master answers `pydist status`)
from .web import dashboard, performance_report

__version__ = "0.1.0"

__all__ = [
    "addprocs", "nprocs", "nworkers", "procs", "workers", "rmprocs", "interrupt", "myid",
    "remotecall", "remotecall_wait", "remotecall_fetch", "remote_do", "spawnat", "spawn",
    "fetchfrom", "fetchany", "everywhere", "distributed", "remote", "pmap",
    "AbstractWorkerPool", "WorkerPool", "CachingPool", "default_worker_pool", "clear",
    "Future", "RemoteChannel", "Channel", "fetch", "put", "take", "isready", "wait",
    "remoteref_id", "channel_from_id", "RRID",
    "RemoteException", "CapturedException", "ProcessExitedException", "LaunchError",
    "InvalidStateError",
    "cluster_cookie", "worker_id_from_socket", "Executor",
    "ClusterManager", "WorkerConfig", "init_worker", "start_worker", "process_messages",
    "default_addprocs_params", "dashboard", "performance_report",
]
