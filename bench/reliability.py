"""Reliability report: every fault and bad input we try, at full size, as a table.

    python -m bench.reliability            # full sizes (about 15 minutes), writes docs/reliability.md
    python -m bench.reliability --quick    # the CI sizes, a smoke run of the same rows

Each row runs real tests (tests/) with sizes set through environment variables, in a pytest
process of its own, and records how many inputs were tried, the outcome and the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (what was tried, pytest node ids, how many at full size, environment at full size)
ROWS = [
    ("Pickle payload before authentication (would write a file)",
     ["tests/test_security.py::test_pickle_sent_before_authentication_is_never_unpickled"], "2", {}),
    ("Garbage on a worker port (empty, HTTP, random, zeros)",
     ["tests/test_security.py::test_garbage_on_a_worker_port_is_refused"], "4", {}),
    ("Wrong cookie", ["tests/test_security.py::test_wrong_cookie_is_refused_and_the_worker_keeps_serving"], "1", {}),
    ("Other protocol / Python version at the handshake",
     ["tests/test_security.py::test_version_mismatch_is_refused_naming_both_versions",
      "tests/test_reliability.py::test_worker_on_another_python_minor_version_is_refused_naming_both"], "2", {}),
    ("Oversized, truncated, unknown-kind and unpicklable frames after authentication",
     ["tests/test_security.py::test_bad_frames_from_an_authenticated_peer_close_that_link_only"], "5", {}),
    ("Fuzzed handshakes (hypothesis)", ["tests/test_fuzz.py::test_handshake_fuzz"], "10,000",
     {"PYDIST_FUZZ_EXAMPLES": "10000"}),
    ("Fuzzed frames after authentication (hypothesis)",
     ["tests/test_fuzz.py::test_frame_parser_fuzz_after_authentication"], "10,000",
     {"PYDIST_FUZZ_EXAMPLES": "10000"}),
    ("Certificate from another CA (TLS)",
     ["tests/test_reliability.py::test_tls_refuses_a_worker_with_a_certificate_from_another_ca"], "1", {}),
    ("Worker frozen with SIGSTOP (heartbeat 1 s)",
     ["tests/test_reliability.py::test_frozen_worker_is_declared_dead_after_the_heartbeat_timeout"], "1", {}),
    ("Worker container cut off its Docker network (heartbeat 2 s)",
     ["tests/managers/test_docker.py::test_container_cut_off_its_network_is_declared_dead_by_the_heartbeat"],
     "1", {}),
    ("Worker container SIGKILLed mid-call",
     ["tests/managers/test_docker.py::test_container_killed_mid_call_raises_process_exited"], "1", {}),
    ("Worker SIGKILLed mid-call: pending call, fetch and take",
     ["tests/test_faults.py::test_sigkilled_worker_fails_pending_calls_fetches_and_takes"], "1", {}),
    ("Master SIGKILLed: workers exit by themselves",
     ["tests/test_faults.py::test_workers_exit_when_the_master_is_sigkilled"], "2 workers", {}),
    ("Unpicklable argument / result, unloadable argument / result",
     ["tests/test_calls.py::test_unpicklable_argument_fails_that_call_and_the_link_survives",
      "tests/test_calls.py::test_unpicklable_result_raises_remote_exception_and_the_link_survives",
      "tests/test_calls.py::test_argument_that_cannot_be_unpickled_on_the_callee_raises_remote_exception",
      "tests/test_calls.py::test_result_that_cannot_be_unpickled_on_the_caller_raises_remote_exception"], "4", {}),
    ("Message over the frame limit; too many pending calls",
     ["tests/test_limits_and_load.py::test_a_message_over_the_frame_limit_is_a_clear_error_and_the_link_survives",
      "tests/test_limits_and_load.py::test_too_many_pending_calls_is_a_clear_error"], "2", {}),
    ("pmap with retries while workers are SIGKILLed and added",
     ["tests/test_limits_and_load.py::test_pmap_with_retries_survives_workers_killed_and_added"],
     "10,000 tasks, 2 kills, 2 adds", {"PYDIST_LOAD_TASKS": "10000"}),
    ("Soak: remote calls and data through Futures and RemoteChannels",
     ["tests/test_limits_and_load.py::test_many_calls_and_channel_traffic_leave_the_reference_tables_empty"],
     "1,000,000 calls, 10 GB", {"PYDIST_SOAK_CALLS": "1000000", "PYDIST_SOAK_MB": "10240"}),
]


def run_row(nodes: list[str], env: dict, quick: bool, report_dir: str) -> tuple[str, float]:
    environ = {**os.environ, "PYDIST_REPORT_DIR": report_dir, **({} if quick else env)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodes],
                          cwd=ROOT, env=environ, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    last = (done.stdout.strip().splitlines() or ["?"])[-1]
    outcome = "passed" if done.returncode == 0 else f"FAILED ({last})"
    if "skipped" in last and done.returncode == 0:
        outcome = f"skipped ({last})"
    return outcome, seconds


def _head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI sizes, and do not write the docs page")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as report_dir:
        for what, nodes, count, env in ROWS:
            outcome, seconds = run_row(nodes, env, args.quick, report_dir)
            rows.append((what, "CI size" if args.quick else count, outcome, seconds))
            print(f"{outcome:>8}  {seconds:6.1f} s  {what}", flush=True)
        soak_path = Path(report_dir) / "soak.json"
        soak = json.loads(soak_path.read_text()) if soak_path.exists() else None
    if args.quick:
        return
    lines = [
        "# Reliability report", "",
        "Every fault and bad input tried against real worker processes, how many, and the outcome.",
        f"Produced by `python -m bench.reliability` on {time.strftime('%Y-%m-%d')} at commit "
        f"{_head()} ({platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "`.ci/run` runs the same tests at the smaller CI sizes on every submission.", "",
        "| fault or bad input | tried | outcome | time |", "|---|---|---|---|",
    ]
    lines += [f"| {what} | {count} | {outcome} | {seconds:.0f} s |" for what, count, outcome, seconds in rows]
    if soak:
        lines += ["", "## Soak: resident memory (MB) of master, worker A, worker B", "",
                  f"{soak['calls']:,} calls and {soak['megabytes']:,} MB through a RemoteChannel:", "",
                  "| | master | worker A | worker B |", "|---|---|---|---|",
                  "| before | " + " | ".join(f"{x:.0f}" for x in soak["rss_before_mb"]) + " |",
                  "| after | " + " | ".join(f"{x:.0f}" for x in soak["rss_after_mb"]) + " |"]
    lines += ["", "The owner-side reference tables returned to their size before the soak on every",
              "process (the soak test waits for it and fails otherwise).", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
