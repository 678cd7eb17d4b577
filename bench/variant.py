"""A peer variant's child run: ``python -m bench --child`` with the variant's environment.

pydist reads its settings (shared memory on or off, its threshold) once, when it is
imported, so a variant cannot run in this process: it runs in a child invocation of the
harness, which measures, checks results and leftovers as any run does and writes its JSON
to a temporary file that the parent files under the variant's name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile


def run_child(repo: str, variant, cases: list[str], cfg) -> tuple[dict | None, int, str | None]:
    """(the child's results document or None, its exit status, why there is no document)."""
    limit = (len(cases) + 1) * cfg.case_timeout_s + cfg.stop_timeout_s
    with tempfile.TemporaryDirectory(prefix="bench-variant-") as tmp:
        out = os.path.join(tmp, "results.json")
        cmd = [sys.executable, "-m", "bench", "--child", "--json", out, "--peers", variant.peer,
               "--cases", ",".join(cases)] + (["--quick"] if cfg.quick else [])
        # its own session: a child that hangs is killed with everything it started
        child = subprocess.Popen(cmd, cwd=repo, env={**os.environ, **variant.env},
                                 start_new_session=True)
        why = None
        try:
            child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            why = f"the child run was killed after {limit:.0f} s"
        finally:  # timed out, or Ctrl-C here (the child's own session does not get it)
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        try:
            with open(out) as f:
                return json.load(f), child.returncode, None
        except (OSError, ValueError):
            return None, child.returncode, why or (
                f"the child run exited with status {child.returncode} and wrote no results")
