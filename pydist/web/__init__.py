"""See the cluster work: the live dashboard and performance reports (Dask's `performance_report`).

    pydist.dashboard()                       # serve it; prints and returns the URL
    addprocs(4, dashboard=True)              # the same, once the workers are in
    pydist -p 4 --dashboard script.py        # the same, for a script

    with pydist.performance_report("report.html"):
        pmap(work, range(1000))              # report.html: task stream, per-function totals

Both show what `sampler.Sampler` gathers once a second (worker rows with CPU and
memory, the calls' timings recorded by each worker, errors, output, pmap progress), drawn as
SVG by the page's own script (`page.py`): no internet is needed to view either.

The dashboard (`server.py`, needs the `pydist[dashboard]` extra: Tornado) listens on
127.0.0.1 unless told otherwise and answers only requests that carry its token, an HMAC of
the cluster cookie printed in the URL, like Jupyter's. A report needs nothing extra.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import sys
import threading

from ..process import STATE, cluster_cookie, myid
from .report import performance_report

__all__ = ["dashboard", "stop_dashboard", "performance_report", "token", "DEFAULT_PORT"]

# Dask's dashboard port, which people's SSH tunnels and notebooks already know; when it is
# taken, dashboard() without a port picks a free one instead of failing.
DEFAULT_PORT = 8787

_server = None                       # the DashboardServer while serving
_server_lock = threading.Lock()      # guards _server


def token() -> str:
    """The dashboard's token: an HMAC of the cluster cookie (the cookie cannot be recovered)."""
    return hmac.new(cluster_cookie().encode(), b"pydist-dashboard", hashlib.sha256).hexdigest()[:32]


def dashboard(port: int | None = None, host: str = "127.0.0.1") -> str:
    """Serve the live dashboard of this cluster; returns its URL (with the token) and prints it.

    `port=None` tries DEFAULT_PORT, then any free port; `port=0` any free port. `host` is
    the address to listen on: 127.0.0.1 (default) lets only this machine in; reach it from
    elsewhere through an SSH tunnel rather than "0.0.0.0". Idempotent: a second call returns
    the running dashboard's URL. Master only. Raises ImportError without Tornado (install
    pydist[dashboard]) and OSError when the port cannot be had."""
    global _server
    if myid() != 1:
        raise RuntimeError("dashboard() runs on the master (process 1)")
    try:
        from .server import DashboardServer
    except ImportError as err:
        raise ImportError(f"the dashboard needs Tornado ({err}): pip install 'pydist[dashboard]'") from err
    with _server_lock:
        if _server is None:
            try:
                _server = DashboardServer(host, DEFAULT_PORT if port is None else port, token(),
                                          STATE.cluster_id)
            except OSError:
                if port is not None:
                    raise
                _server = DashboardServer(host, 0, token(), STATE.cluster_id)
            atexit.register(stop_dashboard)     # before the workers go (atexit runs last-in first)
            print(f"pydist dashboard: {_server.url}", file=sys.stderr, flush=True)
        return _server.url


def stop_dashboard() -> None:
    """Stop the dashboard (the master's exit does too)."""
    global _server
    with _server_lock:
        server, _server = _server, None
    if server is not None:
        server.close()
