"""Workers' `logging` records, handled by the master's loggers (opt-in).

    import logging
    from pydist.logs import forward_worker_logging

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    forward_worker_logging(logging.INFO)
    # logging.getLogger("app").info("hi") on worker 2 prints, on the master:
    #   INFO app: From worker 2: hi

Without it, a worker's records reach the master only as text: Python's last-resort
handler writes WARNING and above to the worker's stderr, which is relayed as
`From worker N:` lines.  With it, every worker gets a handler on its root logger that
forwards records of `level` and above to the master, where they go through
`logging.getLogger(record.name).handle(record)`: the master's handlers, filters and
formatters apply, with `record.worker_id` set, the message prefixed (`prefix`), and
`record.process` the worker's OS pid.  Workers added later get the handler too (the
master installs it when addprocs adds them).  Loggers with `propagate=False` on a
worker are not forwarded.  Records that cannot be pickled travel as text: the message is
formatted on the worker, a traceback is sent as `exc_text`, other attributes that are
not str, int, float, bool or None as their repr.

Threads.  On each worker, `emit` only queues the record; one thread, `pydist-logs`,
sends what is queued as one call to the master and waits for it, so a worker's records
arrive in the order they were made, a slow master slows the sender and not the code that
logs, and logging from any thread never waits on the network.  On the master, each batch
runs on a call thread.
"""

from __future__ import annotations

import logging
import queue
import threading

from . import cluster
from .calls import remotecall_fetch
from .process import internal, myid, workers

log = logging.getLogger("pydist")

__all__ = ["forward_worker_logging", "stop_forwarding_worker_logging", "WorkerIdFilter"]

DEFAULT_PREFIX = "From worker {worker_id}: "
# Records sent in one call at most: bounds a call's size after a burst of logging.
BATCH_RECORDS = 500

_PLAIN = (str, int, float, bool, type(None))

# -- the master's side ---------------------------------------------------------------------------
_settings: dict | None = None          # {"level", "prefix"} while forwarding is on
_settings_lock = threading.Lock()      # guards _settings and the _added_hooks entry


def forward_worker_logging(level: int = logging.INFO, prefix: str = DEFAULT_PREFIX) -> None:
    """Send every worker's log records of `level` and above to the master's loggers.

    Installs a handler on the root logger of every worker now and of every worker added
    later (on the master), lowering a worker's root level to `level` if it is higher.
    `prefix` is put before each message; `{worker_id}` in it becomes the worker's id ("" for
    none). Calling it again changes level and prefix. Raises RemoteException if a worker
    could not install the handler. Only on process 1."""
    if myid() != 1:
        raise RuntimeError("forward_worker_logging can only be called on the master (process 1)")
    global _settings
    with _settings_lock:
        _settings = {"level": level, "prefix": prefix}
        if _install_on_added not in cluster._added_hooks:
            cluster._added_hooks.append(_install_on_added)
    _on_workers(_install, [p for p in workers() if p != 1], level, prefix)


def stop_forwarding_worker_logging() -> None:
    """Remove the handlers forward_worker_logging installed; workers log locally again."""
    global _settings
    with _settings_lock:
        _settings = None
        if _install_on_added in cluster._added_hooks:
            cluster._added_hooks.remove(_install_on_added)
    _on_workers(_uninstall, [p for p in workers() if p != 1])


def _install_on_added(pids: list[int]) -> None:
    """addprocs hook: new workers get the handler as well."""
    with _settings_lock:
        settings = _settings
    if settings is None:
        return
    for pid in pids:
        try:
            remotecall_fetch(_install, pid, settings["level"], settings["prefix"])
        except Exception as err:        # addprocs itself must not fail over logging
            log.warning("pydist: worker %s will not forward its logging: %s", pid, err)


def _on_workers(func, pids: list[int], *args) -> None:
    for pid in pids:
        remotecall_fetch(func, pid, *args)


@internal
def _handle_records(worker_id: int, prefix: str, records: list[dict]) -> None:
    """Runs on the master: hand each record to the logger of its name."""
    for fields in records:
        record = logging.makeLogRecord(fields)
        record.worker_id = worker_id
        if prefix:
            record.msg = prefix + str(record.msg)
        name = record.name
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        logger.handle(record)


class WorkerIdFilter(logging.Filter):
    """Gives records made on this process `worker_id = myid()` when they have none, so a
    format with `%(worker_id)s` works for local and forwarded records alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker_id"):
            record.worker_id = myid()
        return True


# -- the worker's side ---------------------------------------------------------------------------
class _ForwardHandler(logging.Handler):
    """Queues records for the sender thread (installed on a worker's root logger)."""

    def __init__(self, level: int, prefix: str):
        super().__init__(level)
        self.prefix = prefix
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_loop, name="pydist-logs", daemon=True)
        self.sender.start()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self.sender:
            return          # a record about sending records: forwarding it could loop
        try:
            self.queue.put(_fields(record))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.queue.put(None)
        super().close()

    def _send_loop(self) -> None:
        prefix = self.prefix.replace("{worker_id}", str(myid()))
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_RECORDS:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)        # stop after this batch
                    break
                batch.append(item)
            try:
                remotecall_fetch(_handle_records, 1, myid(), prefix, batch)
            except Exception:
                pass        # the master is gone (this worker exits) or refused: drop them


def _fields(record: logging.LogRecord) -> dict:
    """The record as plain values: message formatted, traceback as text."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        if not record.exc_text:
            fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
    fields["exc_info"] = None
    for key, value in fields.items():
        if not isinstance(value, _PLAIN):
            fields[key] = repr(value)
    return fields


_installed: _ForwardHandler | None = None
_saved_level: int | None = None         # the root level before _install lowered it
_install_lock = threading.Lock()        # guards _installed and _saved_level


@internal
def _install(level: int, prefix: str) -> None:
    """Runs on a worker: (re)place the forwarding handler on the root logger."""
    global _installed, _saved_level
    root = logging.getLogger()
    with _install_lock:
        old, _installed = _installed, _ForwardHandler(level, prefix)
        if _saved_level is None:
            _saved_level = root.level
        root.addHandler(_installed)
        if old is not None:
            root.removeHandler(old)
        if _saved_level != logging.NOTSET and level < _saved_level:
            root.setLevel(level)
        else:
            root.setLevel(_saved_level)
    if old is not None:
        old.close()


@internal
def _uninstall() -> None:
    """Runs on a worker: remove the forwarding handler, restore the root level."""
    global _installed, _saved_level
    root = logging.getLogger()
    with _install_lock:
        old, _installed = _installed, None
        if old is not None:
            root.removeHandler(old)
        if _saved_level is not None:
            root.setLevel(_saved_level)
            _saved_level = None
    if old is not None:
        old.close()
