"""forward_worker_logging: workers' logging records reach the master's loggers, with worker_id."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from pydist import addprocs, remotecall_fetch, rmprocs
from pydist.logs import WorkerIdFilter, forward_worker_logging, stop_forwarding_worker_logging

DEADLINE = 30.0


class Collect(logging.Handler):
    """Keeps the records it gets; `arrived` is set when one with `until` in its message comes."""

    def __init__(self, until: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.until = until
        self.arrived = threading.Event()

    def emit(self, record):
        self.records.append(record)
        if self.until in record.getMessage():
            self.arrived.set()

    def wait(self):
        assert self.arrived.wait(DEADLINE), f"no record with {self.until!r} within {DEADLINE:.0f} s"
        return self.records


@pytest.fixture
def collect(request):
    """A handler on the master's logger "x" (cleaned up, forwarding stopped, afterwards)."""
    handlers = []

    def make(until: str) -> Collect:
        handler = Collect(until)
        logging.getLogger("x").addHandler(handler)
        handlers.append(handler)
        return handler
    yield make
    stop_forwarding_worker_logging()
    for handler in handlers:
        logging.getLogger("x").removeHandler(handler)


def _log(level: int, message: str) -> None:
    logging.getLogger("x").log(level, message)


def test_worker_warning_reaches_a_master_handler_with_worker_id(cluster, collect):
    handler = collect("hi")
    forward_worker_logging()
    remotecall_fetch(lambda: logging.getLogger("x").warning("hi"), cluster[0])
    [record] = handler.wait()
    assert record.worker_id == cluster[0]
    assert record.getMessage() == f"From worker {cluster[0]}: hi"
    assert record.levelno == logging.WARNING and record.name == "x"
    assert record.process == remotecall_fetch(os.getpid, cluster[0])


def test_info_is_forwarded_and_debug_is_not_at_level_info(cluster, collect):
    handler = collect("last")
    forward_worker_logging(logging.INFO)

    def log_three():
        _log(logging.DEBUG, "debug")
        _log(logging.INFO, "info")
        _log(logging.WARNING, "last")
    remotecall_fetch(log_three, cluster[1])
    # One worker's records arrive in order, so "debug" would have come before "last".
    assert [r.levelname for r in handler.wait()] == ["INFO", "WARNING"]


def test_records_keep_their_order(cluster, collect):
    handler = collect("record 199")
    forward_worker_logging(prefix="")
    remotecall_fetch(lambda: [logging.getLogger("x").warning("record %d", i) for i in range(200)] and None,
                     cluster[0])
    assert [r.getMessage() for r in handler.wait()] == [f"record {i}" for i in range(200)]


def test_an_exception_travels_as_traceback_text(cluster, collect):
    handler = collect("failed")

    def fail():
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("x").exception("failed")
    forward_worker_logging(prefix="[{worker_id}] ")
    remotecall_fetch(fail, cluster[0])
    [record] = handler.wait()
    assert record.getMessage() == f"[{cluster[0]}] failed"
    assert "ZeroDivisionError" in record.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(record)


def test_unpicklable_extra_attributes_travel_as_repr(cluster, collect):
    handler = collect("with lock")
    forward_worker_logging()
    remotecall_fetch(lambda: logging.getLogger("x").warning("with lock", extra={"lock": threading.Lock()}),
                     cluster[0])
    [record] = handler.wait()
    assert "lock" in record.lock


def test_workers_added_later_forward_too(cluster, collect):
    handler = collect("newcomer")
    forward_worker_logging()
    [new] = addprocs(1)
    try:
        remotecall_fetch(lambda: logging.getLogger("x").warning("newcomer"), new)
        [record] = handler.wait()
        assert record.worker_id == new
    finally:
        rmprocs(new, waitfor=30)


def test_after_stopping_workers_no_longer_forward(cluster, collect):
    handler = collect("again")
    forward_worker_logging()
    stop_forwarding_worker_logging()
    remotecall_fetch(lambda: logging.getLogger("x").warning("not forwarded"), cluster[0])
    forward_worker_logging()
    remotecall_fetch(lambda: logging.getLogger("x").warning("again"), cluster[0])
    assert [r.getMessage() for r in handler.wait()] == [f"From worker {cluster[0]}: again"]


def test_worker_id_filter_marks_local_records_with_the_master_id():
    record = logging.makeLogRecord({"msg": "local"})
    assert WorkerIdFilter().filter(record) and record.worker_id == 1


def test_forwarding_is_refused_on_a_worker(cluster):
    with pytest.raises(Exception, match="only be called on the master"):
        remotecall_fetch(forward_worker_logging, cluster[0])
