"""Exceptions that cross process boundaries (Julia: RemoteException, ProcessExitedException).

A `RemoteException` travels as the remote traceback text plus, when possible, the pickled
original exception; the receiver rebuilds the original, or a `CapturedException` when the
original cannot be unpickled there (its class is unknown on this side), so an error is never
lost to a second error.

The traceback is written for the user: pydist's own frames are left out (PYDIST_DEBUG=1
keeps them), so it starts at the user's function; functions sent by value keep their file
name (serialize.py), and a frame whose source line the remote process lacks gets it from
the receiver's copy of the file when there is one.
"""

from __future__ import annotations

import concurrent.futures
import linecache
import os
import re
import reprlib
import traceback

import cloudpickle

from . import settings

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
        self.context = ""           # what the call was for, e.g. "pmap element 3 (7)"

    def __str__(self) -> str:
        text = self.traceback_text.rstrip() or f"{type(self.captured).__name__}: {self.captured}"
        where = f"On worker {self.pid}, {self.context}" if self.context else f"On worker {self.pid}"
        return f"{where}:\n{text}"

    def __reduce__(self):
        try:
            blob = cloudpickle.dumps(self.captured, protocol=5)
        except Exception:
            blob = None
        return (_rebuild_remote_exception,
                (type(self), self.pid, blob, _type_name(self.captured), _message(self.captured),
                 self.traceback_text, self.context))


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


# pydist's own code: the core, and the managers (inside it when installed from a wheel, next
# to it in an editable install). Its frames are hidden from remote tracebacks.
_HERE = os.path.dirname(os.path.abspath(__file__))
_OWN_DIRS = (_HERE + os.sep, os.path.normpath(os.path.join(_HERE, os.pardir, "managers")) + os.sep)


def _format(exc: BaseException) -> str:
    """The traceback text, without pydist's own frames unless PYDIST_DEBUG is set."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    if not settings.DEBUG:
        _hide_own_frames(report)
    return "".join(report.format())


def _hide_own_frames(report: traceback.TracebackException) -> None:
    seen: set[int] = set()
    pending = [report]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        frames = [frame for frame in current.stack if not frame.filename.startswith(_OWN_DIRS)]
        if len(frames) != len(current.stack):
            current.stack = traceback.StackSummary.from_list(frames)
        pending += [current.__cause__, current.__context__, *(getattr(current, "exceptions", None) or ())]


_FRAME_LINE = re.compile(r'^(\s*)File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def with_source_lines(text: str) -> str:
    """`text` (a traceback) with the source line of each frame that lacks one, where this
    process has the file (a remote process may not: a script sent by value, another host)."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        match = _FRAME_LINE.match(line)
        if match is None:
            continue
        indent = match.group(1)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith(indent + "  ") and not _FRAME_LINE.match(following):
            continue                    # it has its source line already
        source = linecache.getline(match.group("file"), int(match.group("line"))).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out)


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = 4


def element_context(what: str, index: int, columns: tuple) -> str:
    """`"pmap element 3 ('some value')"`: which element of a map failed, its value truncated;
    `columns` holds one one-item slice per iterable."""
    return f"{what} element {index} ({', '.join(_short.repr(column[0]) for column in columns)})"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<unprintable>"


def _rebuild_remote_exception(cls, pid, blob, type_name, message, traceback_text, context=""):
    traceback_text = with_source_lines(traceback_text)
    captured: BaseException | None = None
    if blob is not None:
        try:
            captured = cloudpickle.loads(blob)
        except Exception:
            captured = None
    if not isinstance(captured, BaseException):
        captured = CapturedException(type_name, message, traceback_text)
    rebuilt = cls(pid, captured, traceback_text)
    rebuilt.context = context
    return rebuilt
