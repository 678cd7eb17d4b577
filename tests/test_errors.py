"""Remote errors a person can read: the user's frames with file, line and source; which
pmap element failed; which argument or captured variable cannot be pickled."""

from __future__ import annotations

import linecache
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from pydist import RemoteException, fetch, pmap, remotecall, remotecall_fetch
from pydist.errors import with_source_lines

TIMEOUT = 120
SCRIPT = """
    from pydist import RemoteException, addprocs, remotecall_fetch

    def helper(x):
        return 1 / x

    def compute(x):
        y = x + 1
        return helper(x)

    [pid] = addprocs(1)
    try:
        remotecall_fetch(compute, pid, 0)
    except RemoteException as err:
        print(err)
"""


def traceback_of_script(tmp_path, env=None) -> str:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_remote_traceback_starts_at_the_users_function_with_file_line_and_source(tmp_path):
    text = traceback_of_script(tmp_path, {"PYDIST_DEBUG": ""})
    script = str(tmp_path / "job.py")
    assert text.splitlines()[:4] == [
        "On worker 2:",
        "Traceback (most recent call last):",
        f'  File "{script}", line 9, in compute',
        "    return helper(x)",
    ]
    assert f'  File "{script}", line 5, in helper' in text and "    return 1 / x" in text
    assert "ZeroDivisionError: division by zero" in text
    assert "pydist" not in text and "<dynamic-code>" not in text


def test_pydist_debug_shows_pydists_own_frames(tmp_path):
    text = traceback_of_script(tmp_path, {"PYDIST_DEBUG": "1"})
    assert os.path.join("pydist", "calls.py") in text and "in compute" in text


def test_a_call_on_the_master_hides_pydists_frames_too(no_workers):
    def fails():
        raise ValueError("here")
    with pytest.raises(RemoteException) as info:
        fetch(remotecall(fails, 1))
    text = str(info.value)
    assert "in fails" in text and 'raise ValueError("here")' in text
    assert os.path.join("pydist", "") not in text


def test_source_lines_come_from_the_masters_copy_when_the_worker_has_none(cluster):
    """A function from a file only the master has (a notebook cell, a script on another host)."""
    filename = "<only on the master>"
    source = "def explode(x):\n    raise KeyError(x)\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    try:
        with pytest.raises(RemoteException) as info:
            remotecall_fetch(namespace["explode"], cluster[0], "k")
    finally:
        del linecache.cache[filename]
    lines = str(info.value).splitlines()
    at = lines.index(f'  File "{filename}", line 2, in explode')
    assert lines[at + 1] == "    raise KeyError(x)"


def test_with_source_lines_leaves_frames_that_have_their_line(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("a = 1\nb = 2\n")
    text = f'Traceback:\n  File "{path}", line 2, in f\n    b = 2\n  File "{path}", line 1, in g\nE: x'
    assert with_source_lines(text) == (f'Traceback:\n  File "{path}", line 2, in f\n    b = 2\n'
                                       f'  File "{path}", line 1, in g\n    a = 1\nE: x')


def test_a_pmap_error_names_the_element_index_and_value(cluster):
    with pytest.raises(RemoteException) as info:
        pmap(lambda x: 1 / (x - 30), range(40, 0, -1))
    assert str(info.value).startswith("On worker ")
    assert ", pmap element 10 (30):\n" in str(info.value)
    assert info.value.context == "pmap element 10 (30)"


def test_a_pmap_error_truncates_a_long_element(cluster):
    with pytest.raises(RemoteException) as info:
        pmap(lambda x, text: 1 / x, [1, 0], ["a" * 1000, "b" * 1000])
    first = str(info.value).splitlines()[0]
    assert "pmap element 1 (0, 'bbbb" in first and "..." in first and len(first) < 120


def test_an_unpicklable_captured_variable_is_named(cluster):
    def make():
        lock = threading.Lock()
        return lambda: lock.locked()
    with pytest.raises(TypeError, match=r"the function \S*make.<locals>.<lambda>'s captured variable 'lock' "
                                        r"cannot be pickled \(cannot pickle '_thread.lock' object\)"):
        remotecall_fetch(make(), cluster[0])


@pytest.mark.parametrize("args, kwargs, where", [
    ((1, [2, {"conn": threading.Lock()}]), {}, r"argument 2\[1\]\['conn'\]"),
    ((), {"lock": threading.Lock()}, "keyword argument 'lock'"),
])
def test_an_unpicklable_argument_is_named_with_its_path(cluster, args, kwargs, where):
    with pytest.raises(TypeError, match=f"cannot send the call to process {cluster[0]}: {where} cannot be pickled"):
        remotecall_fetch(print, cluster[0], *args, **kwargs)
