"""The joblib backend "pydist": joblib.Parallel and scikit-learn n_jobs=-1 run on the workers."""

from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib")

from pydist import RemoteException, WorkerPool, remotecall_fetch  # noqa: E402
import pydist.joblib_backend  # noqa: E402,F401  (registers the backend)


def _ospids(ids):
    return {remotecall_fetch(os.getpid, pid) for pid in ids}


def test_importing_the_module_registers_the_backend():
    from joblib.parallel import BACKENDS
    assert BACKENDS["pydist"] is pydist.joblib_backend.PydistBackend


def test_parallel_runs_tasks_on_every_worker(cluster):
    with joblib.parallel_backend("pydist"):
        pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(8))
    assert set(pids) == _ospids(cluster)


def test_parallel_keeps_the_order_of_results(cluster):
    with joblib.parallel_backend("pydist"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(50))
    assert out == [i * i for i in range(50)]


def test_n_jobs_minus_one_means_one_job_per_worker(cluster):
    with joblib.parallel_backend("pydist"):
        assert joblib.effective_n_jobs(-1) == len(cluster)


def test_a_pool_restricts_the_work_to_its_workers(cluster):
    with joblib.parallel_backend("pydist", pool=WorkerPool([cluster[0]])):
        pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(6))
    assert set(pids) == _ospids([cluster[0]])


def _fail_on_three(x):
    if x == 3:
        raise KeyError(f"no {x}")
    return x


def test_a_failing_task_raises_its_own_exception(cluster):
    with joblib.parallel_backend("pydist"), pytest.raises(KeyError, match="no 3") as info:
        joblib.Parallel(n_jobs=-1)(joblib.delayed(_fail_on_three)(i) for i in range(8))
    assert isinstance(info.value.__cause__, RemoteException)


def test_the_backend_is_reusable_after_a_failure(cluster):
    with joblib.parallel_backend("pydist"):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=-1)(joblib.delayed(_fail_on_three)(i) for i in range(8))
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_sklearn_grid_search_fits_on_the_workers(cluster):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    scoring = {"accuracy": "accuracy", "pid": lambda est, X, y: os.getpid()}   # where each fit ran
    search = GridSearchCV(LogisticRegression(), grid, cv=3, scoring=scoring, refit="accuracy",
                          n_jobs=-1)
    with joblib.parallel_backend("pydist"):
        search.fit(X, y)

    fit_pids = {int(search.cv_results_[f"split{k}_test_pid"][i]) for k in range(3) for i in range(4)}
    assert fit_pids <= _ospids(cluster) and os.getpid() not in fit_pids
    local = GridSearchCV(LogisticRegression(), grid, cv=3, n_jobs=1).fit(X, y)
    assert search.best_params_ == local.best_params_
    assert sklearn.__version__


def test_without_workers_it_warns_and_runs_the_tasks_in_this_process(no_workers):
    with joblib.parallel_backend("pydist"):
        with pytest.warns(pydist.joblib_backend.NoWorkersWarning, match=r"call pydist.addprocs\(n\) first"):
            pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(4))
    assert pids == [os.getpid()] * 4


def test_with_workers_it_does_not_warn(cluster):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", pydist.joblib_backend.NoWorkersWarning)
        with joblib.parallel_backend("pydist"):
            assert joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
