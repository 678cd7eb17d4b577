"""Jupyter's rich display (`_repr_html_`) of Futures, pools and the cluster: small HTML
tables with every value escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def fields(title: str, rows: Iterable[tuple[str, object]]) -> str:
    """A titled two-column table: one (name, value) per row."""
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
                   f"<td style='text-align:left'>{html.escape(str(value))}</td></tr>" for name, value in rows)
    return f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>{body}</table>"


def grid(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A titled table with a header row."""
    head = "".join(f"<th style='text-align:left'>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(value))}</td>"
                                    for value in row) + "</tr>" for row in rows)
    return (f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
            f"<tr>{head}</tr>{body}</table>")
