"""Typing: remote calls keep the types of the functions they run (mypy --strict)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 300

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e .[test]")


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """mypy --strict; pydist's own modules are read for their types, their errors not shown
    (as for any installed library). MYPYPATH finds the source tree also when pydist is an
    editable install, which mypy cannot follow through its import hook."""
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(cwd / ".mypy_cache"), *args], cwd=cwd,
                          env={**os.environ, "MYPYPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_the_typed_example_passes_mypy_strict(tmp_path):
    done = mypy(str(REPO / "examples" / "typed.py"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


CHECKS = '''
    from typing_extensions import assert_type
    from pydist import (Future, WorkerPool, fetch, fetchany, fetchfrom, pmap, remote, remotecall,
                        remotecall_fetch, remotecall_wait, remote_do, spawn, spawnat)

    def square(x: int) -> int:
        return x * x

    def greet(name: str, *, punct: str = "!") -> str:
        return name + punct

    assert_type(remotecall_fetch(square, 2, 3), int)
    assert_type(remotecall_fetch(greet, 2, "a", punct="?"), str)
    assert_type(remotecall_fetch(square, WorkerPool([2]), 3), int)
    assert_type(remotecall(square, 2, 3), Future[int])
    assert_type(remotecall(square, 2, 3).fetch(), int)
    assert_type(fetch(remotecall(greet, 2, "a")), str)
    assert_type(remotecall_wait(square, 2, 3).wait(), Future[int])
    assert_type(spawnat("any", square, 3), Future[int])
    assert_type(spawn(square, 3), Future[int])
    assert_type(fetchfrom(2, square, 3), int)
    assert_type(fetchany(square, 3), int)
    assert_type(pmap(square, range(4)), list[int])
    assert_type(remote(square)(3), int)
    assert_type(remotecall_fetch(square, 2, 3, timeout=5.0), int)
    assert_type(remotecall(square, 2, 3).fetch(timeout=1.0), int)
    remote_do(print, 2, "x")
    remotecall_fetch(square, 2, "three")                # wrong
    remotecall_fetch(greet, 2, "a", punctuation="?")    # wrong
'''


def test_remote_calls_have_their_functions_types_and_check_arguments(tmp_path):
    (tmp_path / "checks.py").write_text(textwrap.dedent(CHECKS))
    done = mypy("checks.py", cwd=tmp_path)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    wrong = [n for n, line in enumerate(textwrap.dedent(CHECKS).splitlines(), 1) if line.endswith("# wrong")]
    assert [int(e.split(":")[1]) for e in errors] == wrong, done.stdout + done.stderr
    assert all('"remotecall_fetch"' in e for e in errors)
