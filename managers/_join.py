"""What managers whose workers dial in share: the join listener, the launch's wait for its
workers, and the base for backends that give each worker a resource of its own.

Worker connects (DESIGN.md): the master listens on one port; a worker started elsewhere runs
`python -m pydist.worker --join HEAD --ident IDENT`, authenticates with the cookie and offers
itself.  This module owns everything after the backend started the workers:

* `JoinListener` (_listener.py) queues the offers; offers of a launch that is over are
  refused at once, those no launch expects are ElasticManager's.
* `Joins` is one launch's wait: each resource (a batch job of many workers, a pod of one)
  reports its `Status`; a resource may pend for `pending_timeout` from its creation, then its
  workers have `worker_timeout` from the moment it runs (so time in a queue never fails a
  launch); one that ends first fails with its reason and the tail of its output.
* `ResourceManager` is a whole `ClusterManager` for "one resource per worker" (pods, VMs,
  processes): a backend writes `create`, `poll`, `delete` and, optionally, `logs` (or `watch`
  instead of `poll`, to follow a stream of events).  Batch jobs use `Joins` through
  `JobManager` (_jobs.py), which adds the scheduler's poll loop and walltime handling.

Threads: `pydist-join-status`, one per `ResourceManager` launch and ending with it, runs the
backend's `watch`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import enum
import itertools
import logging
import socket
import threading
import time
from typing import Callable, Iterable

from pydist import ClusterManager, LaunchError, WorkerConfig, settings
from pydist.manager import ask_to_exit, cluster_id

from ._base import host_port, refuse
from ._listener import JoinListener, awaited, awaiting, join_listener

log = logging.getLogger("pydist")

# Lines of a resource's output shown in a launch error: enough for a traceback, short enough
# to read in a terminal.
OUTPUT_TAIL_LINES = 20


class State(enum.Enum):
    """Where a resource that runs workers (a job, a pod, a process) is, as a launch needs it."""
    PENDING = "pending"      # waiting: for resources, an image, a begin time, ...
    RUNNING = "running"      # started: its workers should dial in now
    ENDED = "ended"          # exited, failed, cancelled, deleted or gone


@dataclasses.dataclass(frozen=True)
class Status:
    """What the backend learned about one resource."""
    state: State
    reason: str = ""                 # the backend's words: why it pends, or how it ended
    end_time: float | None = None    # when its walltime runs out (epoch seconds), if known


# -- one launch's wait -----------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Resource:
    """A resource a launch waits on.  `status` and `running_since` are guarded by Joins._lock."""
    rid: str
    idents: list[str]
    created: float = dataclasses.field(default_factory=time.monotonic)
    status: Status = Status(State.PENDING)
    running_since: float | None = None     # monotonic time of the first report past PENDING
    joined: int = 0


class DialInManager(ClusterManager):
    """What a `Joins` asks of the manager whose workers it awaits: where they dial, how long
    they may take, and how errors name a resource.  Subclasses: ResourceManager, JobManager."""

    kind = "resource"                    # how errors name one: "pod", "Slurm job"
    pending_hint = "raise pending_timeout"           # the next step after a resource pended too long
    join_hint = "check that the workers can reach that address (join_host=...)"
    no_output_hint = ""                  # the next step when a failed resource wrote nothing
    worker_timeout: float | None = None  # seconds from running to joined (None: addprocs's)
    pending_timeout: float = 300.0       # seconds a resource may pend
    join_host: str | None = None         # where workers dial (None: see head())
    join_port: int = 0

    def name(self, rid: str) -> str:
        """How a launch error names resource `rid` (its first element)."""
        return f"{self.kind} {rid}"

    def logs(self, rid: str) -> str:
        """The last lines of the resource's output, for error messages ("" if unknown)."""
        return ""

    def listener(self) -> JoinListener:
        """The join listener workers dial: on join_host if it is an address of this machine, else
        on all interfaces; join_port 0 shares any listener already open."""
        host = self.join_host or ""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            return join_listener("0.0.0.0", self.join_port)
        return join_listener(host, self.join_port, host)

    def head(self, listener: JoinListener) -> str:
        """The "host:port" workers dial: `join_host` if given, else the listener's address,
        else (a wildcard listener) this machine's hostname, which the nodes resolve."""
        host = self.join_host or (listener.host if listener.host not in ("0.0.0.0", "::", "")
                                  else socket.gethostname())
        return host_port(host, listener.port)


class Joins:
    """One launch's wait for the workers it started to dial in (see the module docstring).

    The launch thread calls `expect` for each resource it created and then `run`; any thread
    (a poll loop, a watch) calls `report` with what it learned.  `run` hands each worker that
    joins to the core and returns the failures; `close` (always, last) makes late offers stale."""

    def __init__(self, manager: DialInManager, listener: JoinListener, head: str, params: dict,
                 launched: list[WorkerConfig], notify: threading.Condition):
        self.manager, self.listener, self.head = manager, listener, head
        self.launched, self.notify = launched, notify
        self.worker_timeout = float(manager.worker_timeout or params["worker_timeout"])
        self.failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()          # guards _resources' status fields and _missing
        self._resources: dict[str, _Resource] = {}
        self._missing: dict[str, _Resource] = {}     # ident -> its resource, until joined or failed
        self._changed = threading.Event()       # a report arrived: run() re-reads the states

    def expect(self, rid: str, idents: Iterable[str]) -> None:
        """Await the workers `idents` of resource `rid` (call before they can dial in)."""
        resource = _Resource(rid, list(idents))
        with self._lock:
            self._resources[rid] = resource
            for ident in resource.idents:
                self._missing[ident] = resource
        awaiting(resource.idents)

    def report(self, rid: str, status: Status) -> None:
        """The latest status of resource `rid` (from any thread; unknown ids are ignored)."""
        with self._lock:
            resource = self._resources.get(rid)
            if resource is None:
                return
            resource.status = status
            if status.state is not State.PENDING and resource.running_since is None:
                resource.running_since = time.monotonic()     # the worker timeout counts from now
        self._changed.set()
        self.listener.wake()

    def fail(self, rid: str, why: str, tail: bool = True) -> None:
        """Give up on the workers of `rid` not joined yet, with the reason (and output tail)."""
        with self._lock:
            resource = self._resources[rid]
            missing = [ident for ident in resource.idents if self._missing.get(ident) is resource]
            for ident in missing:
                del self._missing[ident]
        if not missing:
            return
        awaited(missing)
        count = len(resource.idents)
        if count > 1:
            tasks = sorted(resource.idents.index(ident) for ident in missing)
            which = f"task {tasks[0]}" if len(tasks) == 1 else f"tasks {_ranges(tasks)}"
            why = f"{len(missing)} of {count} workers ({which}): {why}"
        text = self.manager.logs(rid) if tail else ""
        if text:
            why += f"; its output ends with:\n{text}"
        elif tail and self.manager.no_output_hint:
            why += f"; it wrote no output: {self.manager.no_output_hint}"
        self.failures.append((self.manager.name(rid), why))

    def joined(self, rid: str) -> int:
        """How many workers of `rid` were handed to the core."""
        with self._lock:
            return self._resources[rid].joined

    def run(self) -> list[tuple[str, str]]:
        """Hand each awaited worker that dials in to the core until every one joined or failed;
        returns the failures, (what, why) pairs for LaunchError."""
        while True:
            self._changed.clear()          # before reading: a report from now on wakes the wait
            now = time.monotonic()
            deadline = self._check(now)
            if deadline is None:
                return self.failures
            config = self.listener.next_offer(deadline - now, self._wanted, self._changed)
            if config is not None:
                self._hand_over(config)

    def close(self) -> None:
        """End the wait: offers of workers not joined become stale (refused from now on)."""
        with self._lock:
            missing, self._missing = list(self._missing), {}
        awaited(missing)
        self.listener.refuse_stale()

    def _check(self, now: float) -> float | None:
        """Fail the resources that ended or passed their deadline; the next deadline (None:
        nothing left to await)."""
        deadlines = []
        with self._lock:
            waiting = {id(r): r for r in self._missing.values()}.values()
            states = [(r, r.status, r.running_since) for r in waiting]
        for resource, status, running_since in states:
            if status.state is State.ENDED:
                self.fail(resource.rid, status.reason or "ended before joining")
            elif running_since is None:
                if now >= resource.created + self.manager.pending_timeout:
                    self.fail(resource.rid, f"stayed pending ({status.reason or 'no reason given'}) for "
                              f"{self.manager.pending_timeout:.0f} s and was cancelled: {self.manager.pending_hint}",
                              tail=False)
                else:
                    deadlines.append(resource.created + self.manager.pending_timeout)
            elif now >= running_since + self.worker_timeout:
                self.fail(resource.rid, f"started but did not join {self.head} within "
                          f"{self.worker_timeout:.0f} s: {self.manager.join_hint}")
            else:
                deadlines.append(running_since + self.worker_timeout)
        return min(deadlines) if deadlines else None

    def _wanted(self, config: WorkerConfig) -> bool:
        with self._lock:
            return str(config.ident) in self._missing

    def _hand_over(self, config: WorkerConfig) -> None:
        with self._lock:
            resource = self._missing.pop(str(config.ident), None)
            if resource is not None:
                resource.joined += 1
        if resource is None:           # failed since it was taken
            refuse(config)
            return
        awaited([str(config.ident)])
        with self.notify:
            self.launched.append(config)
            self.notify.notify_all()


# -- one resource per worker -------------------------------------------------------------------
_serial = itertools.count(1)        # resource names are never reused while the master lives


class ResourceManager(DialInManager):
    """`n` workers, each in a resource of its own (a pod, a VM, a process), dialing the master.

    A backend writes `create`, `poll` (or `watch`), `delete` and optionally `logs`; the base
    names the resources (`<prefix>-<cluster id>-<k>`, also the worker's ident), creates them,
    awaits the joins, deletes the resources whose worker failed, deletes a worker's resource
    when it is removed or dies, and starts a replacement for it (addprocs's restart=)."""

    prefix = "pydist-worker"          # resource names start with it
    poll_interval: float = 2.0        # seconds between the default watch's polls

    def __init__(self, n: int = 1):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}(n={n!r}): the number of workers must be an int >= 0")
        self.n = n
        self._live_lock = threading.Lock()      # guards _live
        self._live: set[str] = set()            # created and not deleted yet

    # -- what a backend writes ------------------------------------------------------------
    @abc.abstractmethod
    def create(self, name: str, head: str, params: dict) -> None:
        """Start one worker named `name` dialing `head`: `worker_argv(params, "--join", head,
        "--ident", name)` in a new resource called `name`.  Raise to fail it (ValueError or
        TypeError for a bad setting fails the whole launch); the error text is the reason."""

    def poll(self, names: list[str]) -> dict[str, Status]:
        """The status of each resource, in one call if the backend can; leave out the unknown.
        Write this, or override `watch`."""
        raise TypeError(f"{type(self).__name__} must define poll() or watch(): the launch cannot "
                        "tell when its resources run or end without one of them")

    @abc.abstractmethod
    def delete(self, names: list[str]) -> None:
        """Delete the resources without waiting for them; never called twice for a name, but maybe
        for one whose `create` failed half way (or did nothing)."""

    def watch(self, names: list[str], report: Callable[[str, Status], None], done: threading.Event) -> None:
        """Report each resource's status until `done` is set.  This default polls every
        `poll_interval`; a backend with an event stream (a Kubernetes watch) overrides it."""
        while not done.is_set():
            try:
                statuses = self.poll(names)
            except Exception as err:       # the backend may be briefly unreachable: poll again
                log.warning("pydist: polling %s %s failed (will retry): %s", self.kind, ", ".join(names), err)
                statuses = {}
            for name, status in statuses.items():
                report(name, status)
            done.wait(self.poll_interval)

    # -- ClusterManager -----------------------------------------------------------------------
    def launch(self, params: dict, launched: list[WorkerConfig], notify: threading.Condition) -> None:
        """Create the resources and hand each worker that joins to the core; once every one joined
        or failed, raise LaunchError for the failed ones (deleted by then)."""
        if self.n == 0:
            return
        listener = self.listener()
        joins = Joins(self, listener, self.head(listener), params, launched, notify)
        names = [f"{self.prefix}-{cluster_id()}-{next(_serial)}" for _ in range(self.n)]
        done = threading.Event()
        try:
            for name in names:
                joins.expect(name, [name])
            self._create_all(names, joins, params)
            threading.Thread(target=self.watch, args=(names, joins.report, done), name="pydist-join-status",
                             daemon=True).start()
            failures = joins.run()
        finally:
            done.set()
            joins.close()
            self._delete([name for name in names if not joins.joined(name)])
        if failures:
            raise LaunchError(failures)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """deregister (the worker left or died): delete its resource.  interrupt and finalize
        need nothing: the core sends both over the worker's link."""
        if op == "deregister":
            self._delete([str(config.ident)])

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Ask worker `pid` to exit over its link, then delete its resource."""
        ask_to_exit(pid, settings.EXIT_TIMEOUT)
        self._delete([str(config.ident)])

    def replacement(self, config: WorkerConfig) -> "ResourceManager":
        """A manager like this one that starts one worker: `addprocs(..., restart=True)` replaces
        a worker that died with it (same settings, a resource of its own)."""
        twin = copy.copy(self)
        twin.n, twin._live_lock, twin._live = 1, threading.Lock(), set()
        return twin

    def _create_all(self, names: list[str], joins: Joins, params: dict) -> None:
        for i, name in enumerate(names):
            with self._live_lock:
                self._live.add(name)       # before: a half-made resource is deleted too
            try:
                self.create(name, joins.head, params)
            except Exception as err:       # noqa: BLE001 -- the backend's error is the reason
                if i == 0 and isinstance(err, (ValueError, TypeError)):
                    raise                  # a bad setting: no worker of this launch could start
                for rest in names[i:]:     # the backend refuses: the others would fail alike
                    joins.fail(rest, f"not created: {err}", tail=False)
                return

    def _delete(self, names: list[str]) -> None:
        with self._live_lock:
            mine = [name for name in names if name in self._live]
            self._live.difference_update(mine)
        if mine:
            try:
                self.delete(mine)
            except Exception as err:       # noqa: BLE001 -- say what is left behind
                log.warning("pydist: could not delete %s %s: %s", self.kind, ", ".join(mine), err)


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts: list[tuple[int, int]] = []
    for n in numbers:
        if parts and parts[-1][1] == n - 1:
            parts[-1] = (parts[-1][0], n)
        else:
            parts.append((n, n))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)
