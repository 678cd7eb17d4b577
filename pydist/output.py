"""Workers' print output on the master, whole lines prefixed `From worker N:` (as Julia).

Worker side.  `capture_output(send)` replaces the worker's `sys.stdout` and `sys.stderr` by
`LineWriter`s: each thread's text is kept until its newline, then the whole line goes out
at once under `_emit_lock`, so lines printed by two threads never mix mid-line.  A worker
whose stdout and stderr are one pipe (LocalManager's, which the master reads; it also carries
the address line) writes both to it, a stderr line marked by a leading STDERR_MARK; with two
pipes (Docker's attach stream, a worker run by hand) each stream keeps its own, and the
reader tells them apart (docker.py marks the container's stderr lines).  An SSH session's
stderr arrives merged by the session, unmarked: on the master's stdout.  A worker that
dialed the master sends its lines over the link (`relay_lines`) and still prints them.

Master side.  `OutputRelay` is one thread per worker (`pydist-output-<what>`) that reads the
worker's lines: it finds the `pydist_worker:PORT#HOST` address line, then relays every line
with `relay_output`: a marked line to the master's stderr, others to its stdout.  Managers
that read output their own way (Docker's attach stream) hand their lines to an OutputRelay.

Text a worker writes to file descriptor 2 directly (C code, a child process, a fatal error
of the interpreter) bypasses sys.stderr: it arrives unmarked, on the master's stdout.
"""

from __future__ import annotations

import atexit
import collections
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from .calls import internal
from .process import STATE
from .worker import parse_address      # (worker.py imports this module only when it runs)

# Starts a relayed line that the worker wrote to its stderr. A control character no text
# output starts with, invisible where it does show up.
STDERR_MARK = "\x1e"
# A line longer than this is sent in pieces: a worker writing without newlines (a progress
# bar's carriage returns) must not grow a buffer without bound.
MAX_LINE = 1 << 16
# Lines kept from before the address line, for the error of a worker that never printed it.
TAIL_LINES = 20
# At the master's exit, how long in all it waits for workers' last lines (their pipes end as
# they exit): long enough for what a removed worker printed last, short enough that a stuck
# pipe barely delays the exit.
DRAIN_TIMEOUT = 2.0


# -- worker side ------------------------------------------------------------------------------------
class LineWriter(io.TextIOBase):
    """A text stream that passes on whole lines only: `emit(lines)` gets the lines a write
    completed, without newlines. Each thread has its own unfinished line."""

    def __init__(self, original: TextIO, emit: Callable[[list[str]], None]):
        self.original = original
        self._emit = emit
        self._partial: dict[int, str] = {}      # thread ident -> its unfinished line

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        me = threading.get_ident()
        buffered = self._partial.pop(me, "") + text     # only this thread touches its entry
        *lines, rest = buffered.split("\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[me] = rest
        if lines:
            self._emit(lines)
        return len(text)

    def drain(self) -> None:
        """Pass on every thread's unfinished line (at exit)."""
        pending = [self._partial.pop(ident, "") for ident in list(self._partial)]
        pending = [line for line in pending if line]
        if pending:
            self._emit(pending)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self):
        """The binary stream below (bytes written there are not joined into lines)."""
        return self.original.buffer

    @property
    def encoding(self) -> str:          # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


_emit_lock = threading.Lock()       # one line at a time on the worker's output


def capture_output(send: Callable[[list[str]], None] | None = None) -> None:
    """Make this worker's print output whole lines (see the module docstring).

    `send` None: the master reads our output; if stdout and stderr are one pipe, stderr
    lines are marked on it. Else `send(lines)` gets every line, stderr's marked, for the
    master, and the lines are printed here as well."""
    if isinstance(sys.stdout, LineWriter):
        return
    out, err = sys.stdout, sys.stderr
    merge = send is None and _one_pipe(out, err)

    def emitter(stream: TextIO, mark: str) -> Callable[[list[str]], None]:
        def emit(lines: list[str]) -> None:
            text = "".join(f"{mark if merge else ''}{line}\n" for line in lines)
            with _emit_lock:
                target = out if merge else stream
                target.write(text)
                target.flush()
            if send is not None:
                send([mark + line for line in lines])
        return emit

    sys.stdout = LineWriter(out, emitter(out, ""))
    sys.stderr = LineWriter(err, emitter(err, STDERR_MARK))
    atexit.register(drain_output)
    STATE.before_exit.append(drain_output)         # and when it leaves through exit_process


def _one_pipe(out: TextIO, err: TextIO) -> bool:
    """stdout and stderr are the same pipe or file (not a terminal, where a person reads)."""
    try:
        if out.isatty():
            return False
        a, b = os.fstat(out.fileno()), os.fstat(err.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def drain_output() -> None:
    """Pass on the unfinished lines of stdout and stderr (before this worker exits)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, LineWriter):
            stream.drain()
            stream.flush()


def forward_over_link(send_lines: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """A `send` for capture_output that batches lines for the master on the thread
    `pydist-output`, so printing never waits on the network. `send_lines` raising ends it
    (the master is gone, and so will this process be)."""
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()

    def loop() -> None:
        while True:
            batch = [pending.get()]
            while not pending.empty():
                batch.append(pending.get())
            try:
                send_lines(batch)
            except Exception:
                return
    threading.Thread(target=loop, name="pydist-output", daemon=True).start()

    def send(lines: list[str]) -> None:
        for line in lines:
            pending.put(line)
    return send


# -- master side ------------------------------------------------------------------------------------
_print_lock = threading.Lock()      # one relayed line at a time on the master's stdout and stderr
relay_write: Callable[..., None] | None = None   # tqdm.write while pmap shows a progress bar
# The last lines relayed, (time, pid, line), for the dashboard; deque.append is atomic.
recent_output: collections.deque[tuple[float, int | None, str]] = collections.deque(maxlen=500)


def relay_output(pid: int | None, line: str) -> None:
    """Print one line of worker `pid`'s output on the master, prefixed `From worker N:`: on
    stderr if the worker wrote it to its stderr (STDERR_MARK), else on stdout."""
    to_stderr = line.startswith(STDERR_MARK)
    if to_stderr:
        line = line[len(STDERR_MARK):]
    text = f"      From worker {pid if pid is not None else '?'}:\t{line}"
    stream = sys.stderr if to_stderr else sys.stdout
    writer = relay_write
    with _print_lock:
        if writer is not None:
            writer(text, file=stream)
        else:
            stream.write(text + "\n")
            stream.flush()
        recent_output.append((time.time(), pid, line))     # after the write: a reader that
                                                           # sees it knows the line is out


@internal
def relay_lines(pid: int, lines: list[str]) -> None:
    """Workers that dialed the master send their output here (capture_output) to be relayed."""
    for line in lines:
        relay_output(pid, line)


def stream_lines(stream) -> Iterator[str]:
    """The lines of a binary or text stream, without line ends; closes it at the end."""
    try:
        while raw := stream.readline():
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            yield text.rstrip("\r\n")
    except (OSError, ValueError):
        return
    finally:
        try:
            stream.close()
        except Exception:
            pass


_relays: set[threading.Thread] = set()     # relay threads still reading
_relays_lock = threading.Lock()            # guards _relays


def _finish_relays() -> None:
    """At the master's exit (after cluster.py's shutdown, registered later, ends the workers):
    let every worker's last lines through."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    with _relays_lock:
        threads = list(_relays)
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))


atexit.register(_finish_relays)


class OutputRelay:
    """Reads a worker's output lines on a thread: finds the address line, relays every line."""

    def __init__(self, lines: Iterable[str], what: str, pid: int | None = None):
        self.pid = pid                       # set once the worker has an id
        self.what = what
        self.lines: list[str] = []           # seen before the address, for error messages
        self._source = lines
        self._address: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        thread = threading.Thread(target=self._run, name=f"pydist-output-{what}", daemon=True)
        with _relays_lock:
            _relays.add(thread)
        thread.start()

    def address(self, timeout: float) -> tuple[str, int]:
        """(host, port) of the address line. Raises TimeoutError, or ConnectionError if the
        output ended first, each with the worker's last lines."""
        try:
            found = self._address.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no address line within {timeout:.0f} s (PYDIST_WORKER_TIMEOUT)"
                               + self.tail()) from None
        if found is None:
            raise ConnectionError("the worker exited before printing its address" + self.tail())
        return found

    def tail(self) -> str:
        """'; its output was:' and the last lines seen before the address, for errors."""
        if not self.lines:
            return "; it printed nothing"
        return "; its output was:\n" + "\n".join(line.lstrip(STDERR_MARK) for line in self.lines)

    def _run(self) -> None:
        found = False
        try:
            for line in self._source:
                if not found:
                    try:
                        address = parse_address(line)
                    except ValueError:
                        address = None
                    if address is not None:
                        found = True
                        self._address.put(address)
                        continue
                    self.lines = [*self.lines[1 - TAIL_LINES:], line]
                relay_output(self.pid, line)
        except (OSError, ValueError):
            pass
        finally:
            if not found:
                self._address.put(None)
            with _relays_lock:
                _relays.discard(threading.current_thread())
