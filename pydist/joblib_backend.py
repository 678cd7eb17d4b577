"""A joblib parallel backend named "pydist": joblib and scikit-learn work on the cluster's workers.

    import joblib
    import pydist.joblib_backend              # registers the backend "pydist"

    addprocs(2)
    with joblib.parallel_backend("pydist"):   # or joblib.parallel_config(backend="pydist")
        GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

Importing this module registers the backend (joblib is needed then, not before).
`parallel_backend("pydist", pool=some_pool)` restricts the work to a pool's workers; the
default is `default_worker_pool()`, every worker.  `n_jobs=-1` means one job per worker of
the pool.

Without workers (no `addprocs` yet, or a pool of only this process) the backend warns with
`NoWorkersWarning` when a Parallel run starts, and joblib runs the tasks in this process,
one after another, as pydist's default pool lends the master when there are no workers.
A warning, not an error: the results are right, only not parallel; to make it an error,
`warnings.simplefilter("error", NoWorkersWarning)`.

Each joblib batch (a `BatchedCalls` of several tasks) is one call of a `pydist.Executor`, so
a worker runs one batch at a time and joblib's auto-batching groups short tasks.  Results
come back through the executor's futures, whose done-callbacks feed joblib's
`BatchCompletionCallBack` (joblib's "retrieve callback" protocol, as its loky and Dask
backends use).  A batch that raised re-raises the task's own exception in the caller, chained
from the RemoteException with the remote traceback.  Nested joblib calls on a worker use
joblib's default there (threads), as with loky.
"""

from __future__ import annotations

import warnings

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .executor import Executor
from .pools import AbstractWorkerPool, default_worker_pool
from .process import myid

__all__ = ["PydistBackend", "BACKEND_NAME", "NoWorkersWarning"]

BACKEND_NAME = "pydist"


class NoWorkersWarning(RuntimeWarning):
    """The pydist joblib backend has no workers: the tasks run in this process."""


class PydistBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running each batch of tasks as one pydist call on a worker."""

    supports_retrieve_callback = True     # results are handed over by done-callbacks
    default_n_jobs = -1                   # Parallel() without n_jobs uses every worker
    uses_threads = False
    supports_sharedmem = False            # require="sharedmem" falls back to threads
    # A batch should last long enough to hide a round trip (~0.1 ms locally, more over SSH)
    # and short enough that the last batches do not leave workers idle.
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(self, pool: AbstractWorkerPool | None = None, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                         **kwargs)
        self.pool = pool
        self._executor: Executor | None = None

    def _pool(self) -> AbstractWorkerPool:
        return self.pool if self.pool is not None else default_worker_pool()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches may run at once: the pool's size for n_jobs=-1 (or None);
        n_jobs < -1 counts back from it as joblib does (-2: all workers but one).

        joblib runs n_jobs=1 in the caller, so n_jobs=-1 on a one-worker pool counts as 2
        (two batches queued for that worker) to keep the work on the cluster; without
        workers it is 1 and joblib runs in this process, as the default pool would."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        size = 0 if self._workerless() else self._pool().length()
        if n_jobs is None or n_jobs == -1:
            return max(size, 2) if size else 1
        if n_jobs < 0:
            return max(size + 1 + n_jobs, 1)
        return n_jobs

    def _workerless(self) -> bool:
        """The pool has no worker but this process (the default pool before addprocs)."""
        return self._pool().workers() <= {myid()}

    def configure(self, n_jobs: int = 1, parallel=None, **backend_args) -> int:
        if self._workerless():
            warnings.warn("the pydist joblib backend has no workers, so every task runs in this "
                          "process: call pydist.addprocs(n) first, or pass pool=WorkerPool([...])",
                          NoWorkersWarning, stacklevel=2)
        self.parallel = parallel
        n_jobs = self.effective_n_jobs(n_jobs)
        if self._executor is None:
            self._executor = Executor(self.pool)
        return n_jobs

    def submit(self, func, callback=None):
        """Run one batch on a worker; `callback` gets the future when it is done."""
        if self._executor is None:
            self._executor = Executor(self.pool)
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit                  # the name joblib < 1.5 calls

    def retrieve_result_callback(self, out):
        return out.result()

    def retrieve_result(self, out, timeout=None):
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: cancel the batches that have not started; running ones finish."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if ensure_ready:
            self._executor = Executor(self.pool)

    def terminate(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        self.reset_batch_stats()

    def __reduce__(self):
        # A backend travels with joblib's batches only as a nested backend; there it starts
        # fresh (pools are shared across processes, executors are not).
        return (PydistBackend, (self.pool,))


register_parallel_backend(BACKEND_NAME, PydistBackend)
