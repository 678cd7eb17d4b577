"""A worker's memory limit (`addprocs(..., memory_limit="2GB")`), as Dask's nanny keeps one.

The thread `pydist-memory` (started at JOIN when a limit is set) reads the worker's resident
anonymous memory (its heap: not the shared-memory arenas whose pages another process's
arrays may keep alive, nor mapped files) every CHECK_SECONDS.  Past the limit the worker
tells the master why, prints it on stderr and exits: its calls fail with
ProcessExitedException naming the limit, and with `restart=True` a fresh worker replaces
it.  The worker watches itself, so the limit works the same for every manager (local, SSH,
containers, pods, batch jobs).
"""

from __future__ import annotations

import os
import sys
import threading

from ..messages import Mode
from ..process import STATE, exit_process, note_exit, send_call

# Between two reads a growing worker can overshoot by what it allocates in this time; a read
# of /proc/self/status costs ~20 µs, so checking ten times a second costs nothing measurable.
CHECK_SECONDS = 0.1
EXIT_CODE = 3           # the worker's exit status when it leaves over its limit


def watch(limit: int) -> None:
    """Start watching this process's resident memory against `limit` bytes (Linux only)."""
    if not os.path.exists("/proc/self/status"):
        print(f"pydist worker {STATE.myid}: memory_limit needs /proc (Linux); not enforced",
              file=sys.stderr, flush=True)
        return
    threading.Thread(target=_watch, args=(limit,), name="pydist-memory", daemon=True).start()


def resident_bytes() -> int:
    """This process's resident anonymous memory (RssAnon), in bytes."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _watch(limit: int) -> None:
    tick = threading.Event()          # never set: a wait that a patched time.sleep cannot cut
    while not tick.wait(CHECK_SECONDS):
        used = resident_bytes()
        if used > limit:
            _leave(f"its resident memory ({used / 2**20:.0f} MiB) went over its memory_limit "
                   f"({limit / 2**20:.0f} MiB)")


def _leave(reason: str) -> None:
    print(f"pydist worker {STATE.myid} exits: {reason}", file=sys.stderr, flush=True)
    try:
        send_call(1, Mode.DO, note_exit, (STATE.myid, reason))
        STATE.links[1].flush()          # out before the process is
    except Exception:
        pass                # the master is gone: nobody to tell
    exit_process(EXIT_CODE)
