"""Tunables, each read once from its PYDIST_* environment variable (the one place they are read).

Workers inherit the master's environment where the manager passes it on, so a setting made
before `addprocs` applies to both ends of a link.
"""

from __future__ import annotations

import os


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return value not in ("0", "false", "no") if value else default


# A worker that has not printed its address, or a joining worker that has not been
# accepted, within this many seconds counts as failed (Julia: JULIA_WORKER_TIMEOUT).
WORKER_TIMEOUT = _float("PYDIST_WORKER_TIMEOUT", 60.0)

# A peer must finish the authentication handshake within this time; a silent or slow
# client cannot hold a listener thread longer than that.
HANDSHAKE_TIMEOUT = _float("PYDIST_HANDSHAKE_TIMEOUT", 10.0)

# Largest frame (body plus buffers) accepted from a peer. Bigger frames close the link
# instead of allocating memory an attacker or a bug asked for.
MAX_FRAME_BYTES = _int("PYDIST_MAX_FRAME_BYTES", 8 << 30)

# Most out-of-band buffers in one frame.
MAX_BUFFERS = _int("PYDIST_MAX_BUFFERS", 4096)

# Most calls a link may have waiting for an answer; past it a new call raises at once
# instead of queueing without bound.
MAX_PENDING_CALLS = _int("PYDIST_MAX_PENDING_CALLS", 1_000_000)

# Heartbeats: a link silent for HEARTBEAT_INTERVAL gets a PING; a peer silent for
# HEARTBEAT_TIMEOUT is declared dead (a frozen process, a cut network). Shorter detects
# faster but may give up on a peer whose interpreter is stuck in a long GIL-holding call.
# 0 disables. Change at run time with heartbeat.configure_heartbeat or addprocs(heartbeat_timeout=).
HEARTBEAT_INTERVAL = _float("PYDIST_HEARTBEAT_INTERVAL", 5.0)
HEARTBEAT_TIMEOUT = _float("PYDIST_HEARTBEAT_TIMEOUT", 30.0)

# How long `kill` waits for a worker to leave after asking it to, before SIGTERM, and
# after SIGTERM before SIGKILL.
EXIT_TIMEOUT = _float("PYDIST_EXIT_TIMEOUT", 5.0)
TERM_TIMEOUT = _float("PYDIST_TERM_TIMEOUT", 2.0)

# A link's reader whose peer answered within this many microseconds last time polls the socket
# that long before it sleeps in recv: waking a sleeping thread costs ~25 µs on a VM, as much
# as the rest of a round trip. The poll stops after one miss, so idle links cost nothing.
# 0 disables it (for example on a machine with fewer cores than busy processes).
SPIN_SECONDS = _float("PYDIST_SPIN_US", 100.0) / 1e6

# LocalManager forks workers from a warm fork server (pydist/worker/forkserver.py) instead of
# starting an interpreter per worker: 32 workers start in a fraction of the time. 0 turns it
# off (each worker is then its own `python -m pydist.worker`).
FORK_SERVER = _flag("PYDIST_FORK_SERVER", True)

# Remote tracebacks show pydist's own frames too (they are hidden so that a user's error
# starts at the user's code); for debugging pydist itself.
DEBUG = os.environ.get("PYDIST_DEBUG", "") not in ("", "0", "false", "no")

# Out-of-band buffers of at least SHM_BYTES go through shared memory between processes on one
# host (pydist/shm.py): one copy instead of two, and no socket wake-ups. Below it a socket is
# cheaper than creating and mapping a file (the crossover measured by bench/ is in
# docs/performance.md). PYDIST_SHM=0 turns it off; SHM_DIR is the file system used (tmpfs).
SHM = _flag("PYDIST_SHM", True)
SHM_BYTES = _int("PYDIST_SHM_BYTES", 512 << 10)
SHM_DIR = os.environ.get("PYDIST_SHM_DIR", "/dev/shm")

# Every master answers `pydist status` on a 0600 Unix socket in ~/.pydist from its first
# addprocs (pydist.status). 0 turns that off (serve_status() still works when called).
STATUS = _flag("PYDIST_STATUS", True)

# Each process keeps the timings of its last TIMINGS_KEPT calls (pydist.timings) for the
# dashboard and performance_report: ~150 bytes each. More keeps a longer history between
# two looks; 0 records nothing.
TIMINGS_KEPT = _int("PYDIST_TIMINGS_KEPT", 8192)
