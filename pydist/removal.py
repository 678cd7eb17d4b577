"""Workers leaving the cluster (Julia: rmprocs, deregister_worker): removing workers, the exit
of a worker whichever way it went, replacing one that died, and the master's own exit.

`rmprocs` marks its workers TERMINATING and removes them on a thread each (`pydist-rmprocs`
waits for all): the manager's `kill`, the link closed, then `on_worker_exit`, the exit hook
that deregisters a worker on the master and tells every other worker to forget it.  A worker
that exits while still RUNNING died (a crash, SIGKILL, its memory_limit, a lost node); if
its addprocs call gave `restart=...`, a thread `pydist-restart-<pid>` asks its manager for a
replacement (`ClusterManager.replacement`) and adds it with the same keywords under a new
id, so the default pool, `everywhere(..., new_workers=True)` code and log settings reach it
as any new worker. A group restarts at most its limit of workers, so a worker that dies at
every start does not restart forever.  `shutdown` (atexit on the master) closes every link,
after which nothing restarts.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings

from . import settings
from .calls import internal
from .cluster import WorkerState, _add, _params_for, _registry, _Worker, on_each
from .manager import stop_process
from .process import STATE, myid, peer_exited

log = logging.getLogger("pydist")
_exiting = False                        # the master is shutting down: nothing restarts


@internal
def _forget(pid: int) -> None:
    peer_exited(pid)


def on_worker_exit(pid: int) -> None:
    """Exit hook on the master: deregister the worker and tell every other worker."""
    with STATE.cond:
        worker = _registry.get(pid)
        if worker is None or worker.state is WorkerState.EXITED:
            return
        died = worker.state is WorkerState.RUNNING          # not removed by rmprocs
        worker.state = WorkerState.EXITED
        others = [p for p, w in _registry.items() if w.state is WorkerState.RUNNING]
    on_each(others, _forget, pid)
    try:
        worker.manager.manage(pid, worker.config, "deregister")
    except Exception:
        log.exception("pydist: manage(%s, 'deregister') failed", pid)
    worker.gone.set()
    if died and worker.group is not None and not _exiting:
        threading.Thread(target=_replace, args=(worker,), name=f"pydist-restart-{pid}",
                         daemon=True).start()


def _replace(worker: _Worker) -> None:
    """Start a worker in place of `worker`, which died (restart=True)."""
    group = worker.group
    with STATE.cond:
        if group.restarts_left <= 0:
            log.warning("pydist: worker %s died and is not replaced: its addprocs group used up "
                        "its restarts (restart=...)", worker.pid)
            return
        group.restarts_left -= 1
    try:
        manager = worker.manager.replacement(worker.config)
        params = _params_for(manager, group.keywords)
        added = _add(manager, params, group)
    except Exception as err:
        log.error("pydist: worker %s died and its replacement could not start: %s", worker.pid, err)
        return
    log.warning("pydist: worker %s died; worker %s replaces it", worker.pid, ", ".join(map(str, added)))


class RemovalTask:
    """What rmprocs returns: `.wait()` blocks until the workers are gone (Julia: the Task)."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self._thread = threading.Thread(target=self._run, name="pydist-rmprocs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        threads = [threading.Thread(target=_remove_one, args=(p,), daemon=True) for p in self.pids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def wait(self, timeout: float | None = None) -> "RemovalTask":
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"rmprocs: workers {self.pids} not terminated after {timeout} seconds")
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()


def _remove_one(pid: int) -> None:
    with STATE.cond:
        worker = _registry.get(pid)
        if worker is None or worker.state is not WorkerState.TERMINATING:
            return
    try:
        worker.manager.kill(pid, worker.config)
    except Exception:
        log.exception("pydist: killing worker %s failed", pid)
    with STATE.cond:
        link = STATE.links.get(pid)
    if link is not None:
        link.close("removed by rmprocs")
    peer_exited(pid)
    on_worker_exit(pid)
    worker.gone.wait(settings.EXIT_TIMEOUT)     # the others have forgotten it (maybe on another thread)
    try:
        worker.manager.manage(pid, worker.config, "finalize")
    except Exception:
        log.exception("pydist: manage(%s, 'finalize') failed", pid)


def rmprocs(*pids, waitfor: float = math.inf) -> RemovalTask:
    """Remove workers (Julia: rmprocs). Waits up to `waitfor` seconds (0: not at all);
    returns a task whose `.wait()` blocks until they are gone. Process 1 is never removed."""
    if myid() != 1:
        raise RuntimeError(f"rmprocs can only be called on process 1, not on process {myid()}")
    flat: list[int] = []
    for p in pids:
        flat.extend(p if isinstance(p, (list, tuple, set)) else [p])
    if 1 in flat:
        warnings.warn("rmprocs: process 1 is the master and is not removed", stacklevel=2)
    with STATE.cond:
        targets = sorted(p for p in set(flat) if p != 1 and p in _registry
                         and _registry[p].state is WorkerState.RUNNING)
        for p in targets:                  # leaving together: none is told about another
            _registry[p].state = WorkerState.TERMINATING
    task = RemovalTask(targets)
    if waitfor > 0:
        task.wait(None if math.isinf(waitfor) else waitfor)
    return task


def shutdown() -> None:
    """At master exit: close every link (workers exit on losing it) and reap local processes."""
    global _exiting
    _exiting = True
    with STATE.cond:
        links = list(STATE.links.values())
        workers_ = list(_registry.values())
    for link in links:
        link.close("the master is exiting")
    for worker in workers_:
        process = worker.config.process
        if process is not None:
            try:
                process.wait(2.0)
            except Exception:
                stop_process(process)
