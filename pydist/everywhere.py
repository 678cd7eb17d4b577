"""everywhere(): run code, or define a function, on every process (Julia: @everywhere)."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Iterable

from . import cluster
from .calls import remotecall
from .errors import remote_exception
from .process import myid, procs as all_procs

log = logging.getLogger("pydist")

# What everywhere(..., new_workers=True) registered: (func, args, kwargs), replayed in order on
# every worker that joins later (addprocs, and replacements of workers that died).
_for_new_workers: list[tuple[Callable, tuple, dict]] = []


def _replay(pids: list[int]) -> None:
    """addprocs hook: run the registered code on the workers just added."""
    for func, args, kwargs in list(_for_new_workers):
        try:
            _on_all(pids, func, *args, **kwargs)
        except Exception as err:
            log.error("pydist: everywhere(..., new_workers=True) code failed on new workers %s: %s",
                      pids, err)


cluster._added_hooks.append(_replay)


def _exec_main(code: str) -> None:
    exec(compile(code, "<everywhere>", "exec"), sys.modules["__main__"].__dict__)


def _define_main(name: str, func: Callable) -> None:
    setattr(sys.modules["__main__"], name, func)


def _on_all(targets: list[int], func: Callable, *args, **kwargs) -> None:
    """Run func on every target (remote ones first, concurrently); raise the first failure."""
    futures = [remotecall(func, p, *args, **kwargs) for p in targets if p != myid()]
    first: BaseException | None = None
    if myid() in targets:
        try:
            func(*args, **kwargs)
        except Exception as err:
            first = remote_exception(myid(), err)
    for fut in futures:
        try:
            fut.wait()
        except Exception as err:
            first = first or err
    if first is not None:
        raise first


def _used_as_decorator(func: Callable) -> bool:
    """True when called as `@everywhere` right above `def func` (its first line is ours)."""
    caller = sys._getframe(2)
    code = getattr(func, "__code__", None)
    return (code is not None and func.__name__ != "<lambda>"
            and caller.f_code.co_filename == code.co_filename
            and caller.f_lineno == code.co_firstlineno)


def everywhere(code_or_callable: str | Callable | None = None, *args,
               procs: Iterable[int] | None = None, new_workers: bool = False, **kwargs) -> Any:
    """Run on every process, master included, and wait (Julia: @everywhere).

    A string is executed in `__main__` of each process; a callable is called with the
    arguments; as a decorator (`@everywhere` or `@everywhere(procs=[...])`) it defines the
    function in `__main__` of each process and returns it. `procs` restricts the processes.
    Raises RemoteException if any process failed. Workers added later do not replay it,
    unless `new_workers=True` (master only): then every worker that joins later runs it too,
    in the order such code was registered, replacements of dead workers included."""
    targets = list(procs) if procs is not None else all_procs()   # as Julia: once per listed id

    def run(func: Callable, *run_args, **run_kwargs) -> None:
        if new_workers:
            if myid() != 1:
                raise RuntimeError("everywhere(..., new_workers=True) registers code on process 1 only")
            _for_new_workers.append((func, run_args, run_kwargs))
        _on_all(targets, func, *run_args, **run_kwargs)

    if code_or_callable is None:
        def decorator(func):
            run(_define_main, func.__name__, func)
            return func
        return decorator
    if isinstance(code_or_callable, str):
        run(_exec_main, code_or_callable)
        return None
    if not args and not kwargs and _used_as_decorator(code_or_callable):
        run(_define_main, code_or_callable.__name__, code_or_callable)
        return code_or_callable
    run(code_or_callable, *args, **kwargs)
    return None
