"""`cluster_summary()`: what the cluster is made of, for a person (and Jupyter's display).

    from pydist.summary import cluster_summary
    cluster_summary()          # in a notebook: a table; print() it elsewhere

One row per process, the master first: id, host, OS pid, how it was started (the manager
and the worker's name there), its state and for how long it has been in the cluster.  It is
built from what the master knows, without asking the workers (`pydist.cli.cluster_status()`
asks them: calls running, memory).  Master only.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

from . import _html
from .cluster import registry
from .process import STATE, myid, workers

__all__ = ["ClusterSummary", "ProcessRow", "cluster_summary"]


@dataclasses.dataclass(frozen=True)
class ProcessRow:
    id: int
    host: str
    ospid: int
    manager: str          # "master", or the manager's class and the worker's name there
    state: str
    seconds: float        # in the cluster for this long


@dataclasses.dataclass(frozen=True)
class ClusterSummary:
    """The processes of the cluster; `repr` is a text table, `_repr_html_` an HTML one."""
    cluster_id: str
    processes: list[ProcessRow]

    HEADER = ("id", "host", "ospid", "started by", "state", "for")

    def _cells(self) -> list[tuple[object, ...]]:
        return [(p.id, p.host, p.ospid, p.manager, p.state, _duration(p.seconds)) for p in self.processes]

    def _title(self) -> str:
        workers = len(self.processes) - 1
        return f"pydist cluster {self.cluster_id}: {workers} worker{'' if workers == 1 else 's'}"

    def __repr__(self) -> str:
        rows = [tuple(map(str, row)) for row in [self.HEADER, *self._cells()]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([self._title(), *lines])

    def _repr_html_(self) -> str:
        return _html.grid(self._title(), self.HEADER, self._cells())


_started = time.time()      # when this process imported pydist: the master's time in its cluster


def cluster_summary() -> ClusterSummary:
    """The cluster's processes as the master knows them (no call to any worker)."""
    if myid() != 1:
        raise RuntimeError("cluster_summary() runs on the master (process 1)")
    now = time.time()
    rows = [ProcessRow(1, socket.gethostname(), os.getpid(), "master", "running", now - _started)]
    alive = set(workers())
    for pid, worker in sorted(registry().items()):
        if pid not in alive:
            continue                # removed, or exited
        info = STATE.members.get(pid)
        name = worker.config.ident or worker.config.host
        rows.append(ProcessRow(pid, info.hostname if info else str(worker.config.host), info.ospid if info else 0,
                               type(worker.manager).__name__ + (f" ({name})" if name else ""),
                               worker.state.value, now - worker.started))
    return ClusterSummary(STATE.cluster_id, rows)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
