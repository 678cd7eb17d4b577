"""The master's side of the cluster: the workers' registry, addprocs, interrupt (Julia:
cluster.jl); workers leaving (rmprocs, deaths, restarts, the master's exit) are removal.py's.

`addprocs` runs the manager's `launch` on a thread (`pydist-launch`) and sets up every
launched worker on a thread of its own (`pydist-setup-<n>`) as soon as it appears: read its
address line, connect, authenticate, send JOIN, wait for JOINED, register.  So n workers
start in parallel.  When all are in, every worker is sent the full membership table; only
then does addprocs return, so old and new workers can call each other.  `restart=...` puts
the workers of one call in a restart group (`_RestartGroup`: its keywords and how many
restarts are left), which removal.py uses when one of them dies.

Worker output read from `WorkerConfig.io` is relayed by an `output.OutputRelay`, a thread per
worker (`pydist-output-<what>`), each line prefixed `From worker N:`.
"""

from __future__ import annotations

import atexit
import enum
import itertools
import logging
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import settings
from .calls import interrupt_calls, internal, remote_do
from .errors import LaunchError, ProcessExitedException
from .manager import ClusterManager, WorkerConfig, default_addprocs_params, reap, stop_process
from .messages import Kind, Mode
from .output import OutputRelay, stream_lines
from .heartbeat import configure_heartbeat, start_heartbeat
from .process import (STATE, WorkerInfo, add_members, cluster_cookie, myid, on_close, on_frame, result,
                      secure, send_call, share_memory, workers)
from .serialize import dumps, loads
from .handshake import handshake
from .transport import Link

log = logging.getLogger("pydist")

# Keywords addprocs accepts for every manager besides default_addprocs_params(); a manager
# declares its own (LocalManager's restrict, SSHManager's tunnel, ...) in its `params`.
_MANAGER_KEYWORDS = {"worker_timeout": None, "tls": None, "heartbeat_timeout": None, "restart": False,
                     "memory_limit": None, "dashboard": False}

# restart=True replaces at most this many workers of one addprocs call: enough for a long
# run's occasional crashes, while a worker that dies at every start gives up soon.
RESTART_LIMIT = 16


class WorkerState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    TERMINATING = "terminating"
    EXITED = "exited"


@dataclass
class _RestartGroup:
    """The workers of one addprocs(..., restart=...) call: replaced when they die."""
    keywords: dict          # the caller's addprocs keywords, given to the replacements too
    restarts_left: int


@dataclass
class _Worker:
    pid: int
    manager: ClusterManager
    config: WorkerConfig
    group: _RestartGroup | None = None
    state: WorkerState = WorkerState.RUNNING
    started: float = field(default_factory=time.time)
    gone: threading.Event = field(default_factory=threading.Event)   # every process forgot it


_registry: dict[int, _Worker] = {}      # pid -> worker, on the master; guarded by STATE.cond
_pids = itertools.count(2)              # ids are never reused while the master lives
_addprocs_lock = threading.Lock()       # addprocs runs one at a time (Julia: worker_lock)
_added_hooks: list = []                 # fn(pids) after workers joined (default pool)


# -- addprocs -----------------------------------------------------------------------------------
def addprocs(spec: Any = None, **kwargs) -> list[int]:
    """Start workers and add them to the cluster; returns their ids, ascending (Julia: addprocs).

    `addprocs(n)` starts n local workers, `addprocs(["host", "user@host:22", ("host", 4)])`
    SSH workers, `addprocs(manager)` whatever that ClusterManager launches.  Keywords are
    those of default_addprocs_params() plus the manager's own; others raise TypeError.
    `dashboard=True` (or a port) also serves the web dashboard (pydist.web.dashboard).
    Raises LaunchError when some workers could not start (`.added` lists those that did)."""
    if myid() != 1:
        raise RuntimeError(f"addprocs can only be called on process 1, not on process {myid()}")
    manager = _manager_for(spec, kwargs)
    params = _params_for(manager, kwargs)
    group = _restart_group(manager, params, kwargs)
    return _add(manager, params, group)


def _add(manager: ClusterManager, params: dict, group: _RestartGroup | None) -> list[int]:
    with _addprocs_lock:
        _check_topology(params)
        _check_tls(params)
        if params["heartbeat_timeout"] is not None:
            configure_heartbeat(params["heartbeat_timeout"])
        cluster_cookie()
        _ensure_master_setup()
        added, failures = _launch_and_setup(manager, params, group)
        _sync_members()
        for hook in _added_hooks:         # the workers are in: a hook's failure is logged,
            try:                          # never raised after they joined
                hook(added)
            except Exception:
                log.exception("pydist: setting up workers %s after they joined failed", added)
    port = params["dashboard"]                   # True, or a port (0: any free one)
    if port is not False and port is not None:
        from .web import dashboard
        dashboard(port=None if port is True else port)
    if failures:
        raise LaunchError(failures, added)
    return added


def _manager_for(spec, kwargs) -> ClusterManager:
    if isinstance(spec, ClusterManager):
        return spec
    if isinstance(spec, bool) or spec is None:
        raise TypeError("addprocs expects a number of workers, a list of machines or a ClusterManager")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"addprocs({spec}): the number of workers must be >= 0")
        from pydist.managers.local import LocalManager
        return LocalManager(spec, restrict=kwargs.get("restrict", True))
    if isinstance(spec, (list, tuple)):
        from pydist.managers.ssh import SSHManager
        return SSHManager(list(spec))
    raise TypeError(f"addprocs cannot start workers from a {type(spec).__name__}: pass a number, "
                    "a list of machines or a ClusterManager")


def _params_for(manager: ClusterManager, kwargs: dict) -> dict:
    params = {**default_addprocs_params(), **_MANAGER_KEYWORDS, **getattr(manager, "params", {})}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"addprocs() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
                        f"{type(manager).__name__} does not take them; it accepts {', '.join(sorted(params))}")
    params.update(kwargs)
    if isinstance(params["exeflags"], str):
        params["exeflags"] = shlex.split(params["exeflags"])
    params["exeflags"] = list(params["exeflags"])
    params["env"] = dict(params["env"] or {})
    if params["topology"] not in ("all_to_all", "master_worker", "custom"):
        raise ValueError(f"topology must be 'all_to_all', 'master_worker' or 'custom', "
                         f"not {params['topology']!r}")
    if params["worker_timeout"] is None:
        params["worker_timeout"] = settings.WORKER_TIMEOUT
    params["memory_limit"] = parse_size(params["memory_limit"], "memory_limit")
    return params


def _restart_group(manager: ClusterManager, params: dict, kwargs: dict) -> _RestartGroup | None:
    restart = params["restart"]
    if restart is False or restart == 0:
        return None
    if restart is True or restart == "on-failure":
        limit = RESTART_LIMIT
    elif isinstance(restart, int) and not isinstance(restart, bool) and restart > 0:
        limit = restart
    else:
        raise ValueError(f"restart must be True, False, 'on-failure' or a number of restarts, "
                         f"not {restart!r}")
    try:                 # a manager that cannot replace workers says why now, not at a death
        manager.replacement(WorkerConfig())
    except TypeError:
        raise
    except Exception:
        pass             # it needs a real worker's config: it can replace, it just cannot tell
    return _RestartGroup(dict(kwargs), limit)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(size: int | float | str | None, what: str) -> int | None:
    """Bytes from 2_000_000_000, "2GB", "1.5 GiB" or "512m" (units are powers of 1024)."""
    if size is None or (isinstance(size, (int, float)) and not isinstance(size, bool)):
        if size is not None and size <= 0:
            raise ValueError(f"{what} must be positive, not {size!r}")
        return None if size is None else int(size)
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(size), re.IGNORECASE)
    if not found or float(found[1]) <= 0:
        raise ValueError(f"{what}={size!r}: give a number of bytes or a size such as '2GB' or '512MiB'")
    return int(float(found[1]) * _SIZE_UNITS[found[2].lower()])


def _check_topology(params: dict) -> None:
    if len(_registry_running()) > 0:
        if params["topology"] != STATE.topology:
            raise ValueError(f"the running workers use topology {STATE.topology!r}; addprocs cannot "
                             f"add workers with topology {params['topology']!r}")
        if bool(params["lazy"]) != STATE.lazy:
            raise ValueError(f"the running workers use lazy={STATE.lazy}; addprocs cannot add "
                             f"workers with lazy={bool(params['lazy'])}")
    STATE.topology = params["topology"]
    STATE.lazy = bool(params["lazy"])


def _check_tls(params: dict) -> None:
    tls = params["tls"]
    if _registry_running() and tls != STATE.tls:
        raise ValueError("the running workers use " + ("TLS " + repr(STATE.tls) if STATE.tls else "no TLS")
                         + "; all links of a cluster must use the same tls=")
    STATE.tls = tls


def _registry_running() -> list[int]:
    with STATE.cond:
        return [p for p, w in _registry.items() if w.state is not WorkerState.EXITED]


_master_ready = False


def _ensure_master_setup() -> None:
    global _master_ready
    if not _master_ready:
        from .removal import on_worker_exit, shutdown     # removal.py builds on this module
        STATE.exit_hooks.append(on_worker_exit)
        atexit.register(shutdown)
        _master_ready = True


def _launch_and_setup(manager: ClusterManager, params: dict,
                      group: _RestartGroup | None) -> tuple[list[int], list]:
    launched: list[WorkerConfig] = []
    notify = threading.Condition()
    failures: list[tuple[str, str]] = []
    added: list[int] = []
    done = threading.Event()
    usage_errors: list[Exception] = []

    def run_launch():
        try:
            manager.launch(params, launched, notify)
        except (ValueError, TypeError) as err:
            usage_errors.append(err)         # a bad argument: raised as is by addprocs
        except Exception as err:
            log.debug("launch failed", exc_info=True)
            failures.extend(err.failures if isinstance(err, LaunchError) else
                            [(type(manager).__name__, f"{type(err).__name__}: {err}")])
        finally:
            done.set()
            with notify:
                notify.notify_all()

    threading.Thread(target=run_launch, name="pydist-launch", daemon=True).start()
    setups: list[threading.Thread] = []
    seen = 0
    while True:
        with notify:
            # The timeout only covers a manager that appends without notifying.
            notify.wait_for(lambda: len(launched) > seen or done.is_set(), timeout=0.5)
            fresh = launched[seen:]
            seen = len(launched)
        for config in fresh:
            thread = threading.Thread(target=_setup_one, args=(manager, config, params, group, added,
                                                               failures),
                                      name=f"pydist-setup-{len(setups) + 1}", daemon=True)
            thread.start()
            setups.append(thread)
        if done.is_set() and seen == len(launched):
            break
    for thread in setups:
        thread.join()
    if usage_errors and not added:
        raise usage_errors[0]
    failures.extend((type(manager).__name__, f"{type(e).__name__}: {e}") for e in usage_errors)
    return sorted(added), failures


_pending: set[int] = set()      # pids being set up; guarded by STATE.cond


def _setup_one(manager, config: WorkerConfig, params: dict, group: _RestartGroup | None,
               added: list, failures: list) -> None:
    what = _describe(config)
    relay = None
    pid = None
    try:
        if config.io is not None and config.sock is None and (config.host is None or config.port is None):
            relay = OutputRelay(stream_lines(config.io), what)
            host, port = relay.address(params["worker_timeout"])
            config.bind_addr = config.bind_addr or host
            config.host = config.host or host
            config.port = port
        with STATE.cond:
            pid = next(_pids)
            _pending.add(pid)
        link = _connect_and_join(manager, pid, config, params)
        with STATE.cond:
            _registry[pid] = _Worker(pid, manager, config, group)
            STATE.links[pid] = link
            STATE.cond.notify_all()
        if relay is not None:
            relay.pid = pid
        info = STATE.members.get(pid)
        share_memory(link, info.shm if info is not None else "")
        link.start(f"pydist-reader-{pid}")
        start_heartbeat()
        manager.manage(pid, config, "register")
        added.append(pid)
    except Exception as err:
        what = _describe(config)            # the manager may have named it better by now
        log.debug("setting up %s failed", what, exc_info=True)
        failures.append((what, f"{type(err).__name__}: {err}"))
        _abandon(manager, pid, config)
    finally:
        with STATE.cond:
            _pending.discard(pid)
            STATE.cond.notify_all()


def _connect_and_join(manager, pid: int, config: WorkerConfig, params: dict) -> Link:
    reader, _writer = manager.connect(pid, config)
    sock = reader
    if config.sock is None:
        try:
            sock = secure(sock, server=False)
            handshake(sock, cluster_cookie(), dialer=True)
        except BaseException:
            sock.close()
            raise
    link = Link(sock, on_frame, on_close, peer=pid)
    dial = _peers_to_dial(pid, config, params)
    with STATE.cond:
        members = list(STATE.members.values())
    join = {"pid": pid, "cluster_id": STATE.cluster_id, "topology": STATE.topology, "lazy": STATE.lazy,
            "master": STATE.master_info, "members": members, "dial": dial, "sys_path": list(sys.path),
            "heartbeat": (settings.HEARTBEAT_TIMEOUT, settings.HEARTBEAT_INTERVAL),
            "memory_limit": params.get("memory_limit")}
    link.send(Kind.JOIN, dumps(join)[0])
    sock.settimeout(params["worker_timeout"])
    try:
        kind, _mode, _rrid, _msg_id, body, _buffers = link.read_frame()
    except Exception as err:
        sock.close()
        raise ConnectionError(f"worker {pid} did not answer JOIN: {err or type(err).__name__}") from err
    sock.settimeout(None)
    if kind is not Kind.JOINED:
        sock.close()
        raise ConnectionError(f"worker {pid} answered JOIN with {kind.name}")
    info: WorkerInfo = loads(body)
    config.ospid = info.ospid
    add_members([info])
    return link


def _peers_to_dial(pid: int, config: WorkerConfig, params: dict) -> list[WorkerInfo]:
    """Which workers the new one dials during its join (Julia: the JoinPGRP wlist)."""
    deadline = time.monotonic() + params["worker_timeout"]
    with STATE.cond:
        if STATE.topology == "all_to_all" and not STATE.lazy:
            # Higher ids dial lower ones, which must have finished joining first.
            STATE.cond.wait_for(lambda: not any(p < pid for p in _pending), deadline - time.monotonic())
            return [info for p, info in STATE.members.items() if p < pid]
        if STATE.topology == "custom" and config.connect_idents:
            wanted = set(config.connect_idents)

            def ready():
                idents = {w.config.ident for w in _registry.values() if w.state is WorkerState.RUNNING}
                return wanted <= idents
            if not STATE.cond.wait_for(ready, deadline - time.monotonic()):
                raise TimeoutError(f"the workers {sorted(map(str, wanted))} to connect to did not join "
                                   f"within {params['worker_timeout']:.0f} s")
            return [STATE.members[p] for p, w in _registry.items()
                    if w.config.ident in wanted and p in STATE.members]
    return []


def _describe(config: WorkerConfig) -> str:
    for value in (config.ident, config.host):
        if value is not None:
            return str(value)
    process = config.process
    return f"local process {process.pid}" if getattr(process, "pid", None) else "worker"


def _abandon(manager: ClusterManager, pid: int | None, config: WorkerConfig) -> None:
    """A worker that failed to join must not linger: its manager kills it (it has an id
    once connect was tried), else its local process is stopped."""
    if pid is not None:
        try:
            manager.kill(pid, config)
            return
        except Exception:
            log.debug("kill of the abandoned worker %s failed", pid, exc_info=True)
    stop_process(config.process)
    reap(config.process)


@internal
def _set_members(infos: list[WorkerInfo], master: WorkerInfo) -> None:
    add_members(infos, master)


def _sync_members() -> None:
    """Send every worker the full membership table, in parallel, and wait for all."""
    with STATE.cond:
        infos = list(STATE.members.values())
        pids = [p for p, w in _registry.items() if w.state is WorkerState.RUNNING]
    on_each(pids, _set_members, infos, STATE.master_info)


def on_each(pids: list[int], func, *args, timeout: float | None = None) -> None:
    """Run an internal func on each worker, in parallel, and wait for all, `timeout` seconds
    at most in total (default EXIT_TIMEOUT; a worker that is gone meanwhile is skipped, with
    a log line)."""
    def failed(pid, err):
        gone = isinstance(err, ProcessExitedException) or pid not in STATE.members
        (log.debug if gone else log.warning)("pydist: %s on worker %s failed: %s",
                                             getattr(func, "__name__", func), pid, err)
    timeout = settings.EXIT_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    replies = []
    for pid in pids:
        try:
            replies.append((pid, send_call(pid, Mode.FETCH, func, args)))
        except Exception as err:
            failed(pid, err)
    for pid, reply in replies:
        if not reply.wait(max(0.0, deadline - time.monotonic())):
            failed(pid, TimeoutError(f"no answer within {timeout:g} s"))
            continue
        try:
            result(reply)
        except Exception as err:
            failed(pid, err)


def interrupt(*pids) -> None:
    """Raise KeyboardInterrupt in the calls running on the given workers (default: all)."""
    if myid() != 1:
        raise RuntimeError("interrupt can only be called on process 1")
    flat: list[int] = []
    for p in pids:
        flat.extend(p if isinstance(p, (list, tuple, set)) else [p])
    for pid in flat or workers():
        worker = _registry.get(pid)
        if worker is None or worker.state is not WorkerState.RUNNING:
            continue
        remote_do(interrupt_calls, pid)
        worker.manager.manage(pid, worker.config, "interrupt")


def registry() -> dict[int, _Worker]:
    """The master's workers by id (for managers and status tools)."""
    with STATE.cond:
        return dict(_registry)
