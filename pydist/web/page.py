"""The one HTML page of the dashboard and of performance reports, assets inlined.

`page.html` is filled with `page.css`, `plots.js` (the SVG plots: task stream, lines over
time, bars) and `page.js` (live: reads /events; report: draws the data embedded in the page).
Inlining makes a report one self-contained file, and the live page needs no second request
and nothing from the internet.
"""

from __future__ import annotations

import html
import json

ASSETS = ("page.css", "plots.js", "page.js")


def _asset(name: str) -> str:
    from importlib import resources  # here: it costs every worker ~20 ms at start
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render(title: str, data: dict | None) -> str:
    """The page; `data` (a Sampler state) makes it a static report, None the live dashboard."""
    # "</" inside a <script> would end it early: JSON allows "<\/" for it.
    embedded = json.dumps(data).replace("</", "<\\/")
    css, plots, script = (_asset(name) for name in ASSETS)
    page = _asset("page.html").replace("{{css}}", css).replace("{{plots}}", plots)
    page = page.replace("{{script}}", script).replace("{{title}}", html.escape(title))
    return page.replace("{{data}}", embedded)          # last: the data is not searched again
