"""Heartbeats: the thread `pydist-heartbeat` pings links that have been quiet for
HEARTBEAT_INTERVAL and closes those whose peer said nothing for HEARTBEAT_TIMEOUT, so nothing
waits forever on a frozen or cut-off process (closing a link fails its calls with
ProcessExitedException).  The master starts it with its first worker, a worker when it joins
(with the master's settings).
"""

from __future__ import annotations

import logging
import threading
import time

from . import settings
from .errors import ProcessExitedException
from .messages import Kind
from .process import STATE

log = logging.getLogger("pydist")

_heartbeat_wake = threading.Event()      # set to make the heartbeat thread re-read its settings
_heartbeat_since = 0.0                   # silence counts from here at most (configure_heartbeat)


def configure_heartbeat(timeout: float, interval: float | None = None) -> None:
    """Declare a peer dead after `timeout` seconds of silence; ping quiet links every
    `interval` (default timeout / 4). 0 disables heartbeats."""
    global _heartbeat_since
    settings.HEARTBEAT_TIMEOUT = float(timeout)
    settings.HEARTBEAT_INTERVAL = float(timeout) / 4 if interval is None else float(interval)
    _heartbeat_since = time.monotonic()     # silence before now was under the old settings
    _heartbeat_wake.set()
    start_heartbeat()


def start_heartbeat() -> None:
    if STATE._heartbeat is not None or settings.HEARTBEAT_TIMEOUT <= 0:
        return
    with STATE.cond:
        if STATE._heartbeat is not None:
            return
        STATE._heartbeat = threading.Thread(target=_heartbeat_loop, name="pydist-heartbeat", daemon=True)
    STATE._heartbeat.start()


def _heartbeat_loop() -> None:
    while True:
        timeout, interval = settings.HEARTBEAT_TIMEOUT, settings.HEARTBEAT_INTERVAL
        if _heartbeat_wake.wait(min(interval, timeout / 3) if timeout > 0 else None):
            _heartbeat_wake.clear()
            continue
        now = time.monotonic()
        with STATE.cond:
            links = list(STATE.links.values())
        for link in links:
            quiet = now - max(link.last_heard, _heartbeat_since)
            if quiet > timeout:
                log.warning("pydist: process %s did not answer for %.1f s: declaring it dead",
                            link.peer, quiet)
                link.close(f"no answer for {quiet:.1f} s (heartbeat timeout {timeout:g} s)")
            elif quiet > interval:
                try:
                    link.send(Kind.PING)
                except ProcessExitedException:
                    pass
