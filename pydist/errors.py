"""Exceptions that cross process boundaries (Julia: RemoteException, ProcessExitedException).

A `RemoteException` travels as the remote traceback text plus, when possible, the pickled
original exception; the receiver rebuilds the original, or a `CapturedException` when the
original cannot be unpickled there (its class is unknown on this side), so an error is never
lost to a second error.
"""

from __future__ import annotations

import concurrent.futures
import traceback

import cloudpickle

# One name for "this state does not allow that": closed channel, Future set twice.
InvalidStateError = concurrent.futures.InvalidStateError


class CapturedException(Exception):
    """An exception from another process whose class could not be rebuilt here."""

    def __init__(self, type_name: str, message: str, traceback_text: str = ""):
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class RemoteException(Exception):
    """An exception raised by a call that ran on process `pid` (Julia: RemoteException).

    `.captured` is the original exception when it could be unpickled here, else a
    `CapturedException`; `str()` shows the remote traceback."""

    def __init__(self, pid: int, captured: BaseException, traceback_text: str | None = None):
        super().__init__(pid, captured)
        self.pid = pid
        self.captured = captured
        if traceback_text is None:
            traceback_text = getattr(captured, "traceback_text", "") or _format(captured)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        text = self.traceback_text.rstrip() or f"{type(self.captured).__name__}: {self.captured}"
        return f"On worker {self.pid}:\n{text}"

    def __reduce__(self):
        try:
            blob = cloudpickle.dumps(self.captured, protocol=5)
        except Exception:
            blob = None
        return (_rebuild_remote_exception,
                (type(self), self.pid, blob, _type_name(self.captured), _message(self.captured),
                 self.traceback_text))


class RemoteInvalidStateError(RemoteException, InvalidStateError):
    """A channel or Future operation refused by its owner process for its state.

    It is both a RemoteException (the refusal happened elsewhere) and an InvalidStateError
    (what went wrong), so either `except` clause catches it."""


class ProcessExitedException(Exception):
    """The call, fetch or take depended on process `worker_id`, which has exited."""

    def __init__(self, worker_id: int, detail: str = ""):
        super().__init__(worker_id, detail)
        self.worker_id = worker_id
        self.detail = detail

    def __str__(self) -> str:
        extra = f": {self.detail}" if self.detail else ""
        return f"process {self.worker_id} has exited{extra}"


class LaunchError(Exception):
    """Some workers could not be started by `addprocs`.

    `.failures` lists (what, reason) pairs — host, container, pod or job, and why;
    `.added` holds the ids of the workers that did start and remain usable."""

    def __init__(self, failures: list[tuple[str, str]], added: list[int] | None = None):
        self.failures = list(failures)
        self.added = sorted(added or [])
        super().__init__(self.failures, self.added)

    def __str__(self) -> str:
        lines = [f"{len(self.failures)} worker(s) could not be started"
                 + (f"; workers {self.added} did start and remain usable" if self.added else "")]
        lines += [f"  {what}: {reason}" for what, reason in self.failures]
        return "\n".join(lines)


def remote_exception(pid: int, exc: BaseException) -> RemoteException:
    """Wrap `exc`, raised by a call on process `pid`, keeping its traceback text."""
    if isinstance(exc, InvalidStateError):
        return RemoteInvalidStateError(pid, exc, _format(exc))
    return RemoteException(pid, exc, _format(exc))


_DISPATCH_FILE = __file__.replace("errors.py", "calls.py")


def _format(exc: BaseException) -> str:
    """The traceback text, without pydist's own dispatch frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == _DISPATCH_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<unprintable>"


def _rebuild_remote_exception(cls, pid, blob, type_name, message, traceback_text):
    captured: BaseException | None = None
    if blob is not None:
        try:
            captured = cloudpickle.loads(blob)
        except Exception:
            captured = None
    if not isinstance(captured, BaseException):
        captured = CapturedException(type_name, message, traceback_text)
    return cls(pid, captured, traceback_text)
