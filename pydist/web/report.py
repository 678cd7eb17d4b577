"""`performance_report`: the calls made inside a `with` block, as one self-contained HTML file."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from ..process import STATE, myid
from .page import render
from .sampler import Sampler

# Calls a report keeps (~200 bytes each on the master, as many SVG bars in the browser), and
# samples (one a second: a day). Past that the oldest go, and the report says how many.
REPORT_TASKS = 200_000
REPORT_SAMPLES = 86_400


@contextlib.contextmanager
def performance_report(filename: str | os.PathLike = "pydist-report.html") -> Iterator[None]:
    """Write `filename`, an HTML page with the task stream, per-function totals and each
    worker's memory for the calls run inside the block (Dask: performance_report).

    Samples the cluster once a second meanwhile (pydist.web.sampler), so no call is lost to
    the workers' bounded timing buffers; the file is written when the block ends, also when it
    raises. It needs no server and nothing from the internet to view. Master only."""
    if myid() != 1:
        raise RuntimeError("performance_report() runs on the master (process 1)")
    sampler = Sampler(keep_tasks=REPORT_TASKS, keep_samples=REPORT_SAMPLES).start(skip_history=True)
    try:
        yield
    finally:
        sampler.stop()
        state = sampler.state()
        state["kind"] = "report"
        state["ended"] = time.time()
        with open(filename, "w", encoding="utf-8") as f:
            f.write(render(title=f"pydist performance report · cluster {STATE.cluster_id}", data=state))
