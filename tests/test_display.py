"""How Futures, pools and the cluster show themselves: repr, and Jupyter's HTML display."""

from __future__ import annotations

import os

import pytest

from conftest import wait_until
from pydist import Future, WorkerPool, default_worker_pool, remotecall, rmprocs
from pydist.summary import cluster_summary

TIMEOUT = 120


def test_repr_of_a_finished_call_says_ready_then_fetched_never_unset(cluster):
    fut = remotecall(sum, cluster[0], [1, 2, 3])
    wait_until(lambda: "ready" in repr(fut), what="the small result to be pushed to the caller")
    assert repr(fut) == f"Future(where={cluster[0]}, whence=1, id={fut.id}, ready)"
    fut.fetch()
    assert repr(fut).endswith(", fetched)")


def test_repr_names_a_failed_call_and_an_unset_local_future(cluster):
    failed = remotecall(lambda: 1 / 0, cluster[0])
    wait_until(lambda: "failed" in repr(failed), what="the failure to be pushed to the caller")
    assert repr(Future()).endswith(", pending)")


def test_repr_never_asks_a_remote_owner_but_html_does(cluster):
    big = remotecall(lambda: b"x" * 1_000_000, cluster[0])    # too big to be pushed ahead
    big.wait()
    assert repr(big).endswith(", not fetched)")
    page = big._repr_html_()
    assert "<td style='text-align:left'>ready</td>" in page
    assert "not fetched yet" in page


def test_future_html_shows_state_where_and_result_type(cluster):
    fut = remotecall(lambda: {"a": 1}, cluster[1])
    fut.fetch()
    page = fut._repr_html_()
    for name, value in [("state", "fetched"), ("where", f"worker {cluster[1]}"),
                        ("id", f"1/{fut.id}"), ("result", "dict")]:
        assert f"<th style='text-align:left'>{name}</th><td style='text-align:left'>{value}</td>" in page


def test_future_html_names_the_exception_of_a_failed_call(cluster):
    fut = remotecall(lambda: {}["missing"], cluster[0])
    wait_until(lambda: "failed" in repr(fut), what="the failure to be pushed")
    assert "raised KeyError" in fut._repr_html_()


def test_pool_html_lists_its_workers(cluster):
    page = WorkerPool(cluster)._repr_html_()
    assert "<b>WorkerPool</b>" in page and f"{cluster[0]}, {cluster[1]}" in page
    assert "a worker is free</th><td style='text-align:left'>yes" in page
    assert "<td style='text-align:left'>none</td>" in WorkerPool([])._repr_html_()


def test_cluster_summary_has_a_row_per_process(cluster):
    summary = cluster_summary()
    assert [p.id for p in summary.processes] == [1, *cluster]
    assert summary.processes[0].ospid == os.getpid() and summary.processes[0].manager == "master"
    assert all(p.manager.startswith("LocalManager") and p.state == "running" for p in summary.processes[1:])
    text = repr(summary)
    assert text.splitlines()[0] == f"pydist cluster {summary.cluster_id}: 2 workers"
    assert text.splitlines()[1].split() == ["id", "host", "ospid", "started", "by", "state", "for"]
    page = summary._repr_html_()
    assert page.count("<tr>") == 1 + 3 and "<th style='text-align:left'>started by</th>" in page


def test_html_escapes_what_it_shows(no_workers):
    pool = default_worker_pool()
    assert "<b>WorkerPool</b>" in pool._repr_html_()
    from pydist import _html
    assert _html.fields("<x>", [("a&b", "<script>")]) == (
        "<table><caption style='text-align:left'><b>&lt;x&gt;</b></caption><tr><th style='text-align:left'>"
        "a&amp;b</th><td style='text-align:left'>&lt;script&gt;</td></tr></table>")


def test_a_notebook_shows_the_progress_bar_as_a_widget_and_futures_as_html(tmp_path):
    """Run a real notebook (nbclient, ipykernel): tqdm.auto's bar is an ipywidget there."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    cells = [
        "from pydist import addprocs, default_worker_pool, pmap, remotecall\n"
        "from pydist.summary import cluster_summary\nids = addprocs(2)",
        "squares = pmap(lambda x: x * x, range(20), progress=True)\nsum(squares)",
        "f = remotecall(sum, 2, [1, 2, 3])\nf.fetch()\nf",
        "default_worker_pool()",
        "cluster_summary()",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [[out.get("data", {}) for out in cell.outputs] for cell in notebook.cells]
    bar, total = outputs[1]
    assert "application/vnd.jupyter.widget-view+json" in bar       # a widget, not text
    assert total["text/plain"] == str(sum(x * x for x in range(20)))
    assert "<b>Future</b>" in outputs[2][0]["text/html"] and ">fetched<" in outputs[2][0]["text/html"]
    assert "<b>WorkerPool</b>" in outputs[3][0]["text/html"]
    assert "2 workers" in outputs[4][0]["text/html"]


def test_removed_workers_leave_the_summary(cluster):
    rmprocs(cluster[0]).wait()
    assert [p.id for p in cluster_summary().processes] == [1, cluster[1]]
