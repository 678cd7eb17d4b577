"""What the dashboard and performance_report show, gathered on the master once a second.

A `Sampler` owns one thread, `pydist-sampler`, that every INTERVAL seconds runs `_sample` on
every process at once (one internal call each, status.gather) and keeps, in memory bounded by
its `keep_*` sizes:

* each process's row (pydist.status.process_stats) with CPU % computed from the last tick;
* the memory (RSS) and CPU % of each process over time;
* the calls' timings (pydist.timings records, fetched since the last seq seen per process);
* the recent failed calls' tracebacks, the relayed worker output, the running pmaps.

Each tick yields an `update` (what is new) to the subscribers; `state()` is everything kept,
for a browser that connects now or for a report. Both are plain JSON-able dicts:

    workers: [{id, host, ospid, manager, uptime, cpu (%), rss, calls, queued, error}]
    samples: [{t, rss: {pid: bytes}, cpu: {pid: %}}]
    tasks:   [[pid, name, queued, start, end, bytes_in, bytes_out, ok]]
    errors:  [[pid, time, name, traceback text]]
    output:  [[time, pid, line]]
    pmaps:   [{name, done, total}]
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable

from .. import cluster, status, timings
from ..pmap import active_runs
from ..process import STATE, internal, myid

log = logging.getLogger("pydist")

# Seconds between two samples: the dashboard's refresh rate, and one internal call per
# worker per tick; shorter is livelier and costs the cluster more.
INTERVAL = 1.0


@internal
def _sample(seen: dict[int, int]) -> tuple[dict, list, list]:
    """Runs on each process: its status row, and the timings and errors it recorded since."""
    records, errors = timings.since(seen.get(myid(), 0))
    return status.process_stats(), records, errors


@functools.lru_cache(maxsize=1024)
def short_name(qualname: str) -> str:
    """`main.<locals>.step` -> `step`: the enclosing function says little on a plot."""
    return qualname.rpartition("<locals>.")[2]


class Sampler:
    """Samples the cluster every `interval` s on its thread until `stop()`; see the module."""

    def __init__(self, interval: float = INTERVAL, keep_tasks: int = 20_000, keep_samples: int = 600):
        self.interval = interval
        # Only the sampling thread (after start's first tick) uses these three:
        self._seen: dict[int, int] = {}      # pid -> last timings seq fetched
        self._last_cpu: dict[int, tuple[float, float]] = {}    # pid -> (time, cpu seconds)
        self._output_since = time.time()
        self._lock = threading.Lock()        # guards _subscribers and every field below
        self._subscribers: list[Callable[[dict], None]] = []
        self.workers: list[dict] = []
        self.samples: collections.deque = collections.deque(maxlen=keep_samples)
        self.tasks: collections.deque = collections.deque(maxlen=keep_tasks)
        self.errors: collections.deque = collections.deque(maxlen=timings.ERRORS_KEPT)
        self.output: collections.deque = collections.deque(maxlen=cluster.recent_output.maxlen)
        self.pmaps: list[dict] = []
        self.lost = 0                        # calls whose timings were overwritten or dropped
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pydist-sampler", daemon=True)

    def start(self, skip_history: bool = False) -> Sampler:
        """Take the first sample now, then one each interval on the thread; `skip_history`
        leaves out the calls recorded before now (a report)."""
        if skip_history:
            self._seen = {pid: seq for pid, seq in status.gather(timings.last_seq).items()
                          if not isinstance(seq, BaseException)}
        self.tick()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after one last sample (so the calls that just ended are in)."""
        self._stop.set()
        self._thread.join(status.STATUS_TIMEOUT + 2 * self.interval)

    def subscribe(self, callback: Callable[[dict], None]) -> dict:
        """Call `callback(update)` after each tick (on the sampler's thread); returns the state
        now, so the subscriber misses nothing in between."""
        with self._lock:
            self._subscribers.append(callback)
            return self._state()

    def unsubscribe(self, callback) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def state(self) -> dict:
        """Everything kept: the update format, with whole histories."""
        with self._lock:
            return self._state()

    def _state(self) -> dict:
        return {"kind": "state", "cluster_id": STATE.cluster_id, "t": time.time(),
                "started": self.started, "workers": self.workers, "samples": list(self.samples),
                "tasks": list(self.tasks), "errors": list(self.errors), "output": list(self.output),
                "pmaps": self.pmaps, "lost": self.lost}

    # -- the sampler's thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                self.tick()
            except Exception:
                log.exception("pydist: the dashboard's sampler failed")
            if stopping:
                return

    def _gather(self) -> dict:
        """pid -> _sample's answer, or the error in its place."""
        return status.gather(_sample, self._seen)

    def tick(self) -> dict:
        """Sample now; returns the update (also given to the subscribers)."""
        now = time.time()
        answers = self._gather()
        rows = {row["id"]: row for row in status.status_rows(
            {pid: a if isinstance(a, BaseException) else a[0] for pid, a in answers.items()})}
        tasks, errors, rss, cpu, overwritten = [], [], {}, {}, 0
        for pid, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                continue
            stats, records, failed = answer
            if records:
                overwritten += max(0, records[0][0] - self._seen.get(pid, 0) - 1)
                self._seen[pid] = records[-1][0]
            tasks.extend([pid, short_name(r[1]), *r[2:]] for r in records)
            errors.extend([pid, e[1], short_name(e[2]), e[3]] for e in failed)
            row = rows.get(pid)
            if row is not None:
                row["cpu_pct"] = cpu[pid] = self._cpu_percent(pid, stats["cpu"], now)
                rss[pid] = stats["rss"]
        fresh = [[t, pid, line] for t, pid, line in list(cluster.recent_output) if t > self._output_since]
        if fresh:
            self._output_since = fresh[-1][0]
        pmaps = [{"name": short_name(timings.call_name(run.func, ()) or "pmap"), "total": len(run.results),
                  "done": len(run.results) - run.remaining} for run in list(active_runs)]
        update = {"kind": "update", "t": now, "workers": [rows[p] for p in sorted(rows)],
                  "samples": [{"t": now, "rss": rss, "cpu": cpu}], "tasks": tasks, "errors": errors,
                  "output": fresh, "pmaps": pmaps}
        with self._lock:
            pushed_out = max(0, len(self.tasks) + len(tasks) - self.tasks.maxlen)
            self.lost += overwritten + pushed_out
            update["lost"] = self.lost
            self.workers, self.pmaps = update["workers"], pmaps
            self.samples.append(update["samples"][0])
            self.tasks.extend(tasks)
            self.errors.extend(errors)
            self.output.extend(fresh)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(update)
        return update

    def _cpu_percent(self, pid: int, cpu_seconds: float, now: float) -> float | None:
        before = self._last_cpu.get(pid)
        self._last_cpu[pid] = (now, cpu_seconds)
        if before is None or now <= before[0]:
            return None
        return max(0.0, 100.0 * (cpu_seconds - before[1]) / (now - before[0]))
