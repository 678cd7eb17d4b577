"""The install extras: `pydist[all]` brings every optional runtime feature."""

from __future__ import annotations

import re
from importlib.metadata import metadata

# Extras that are for developing pydist, not features of it.
NOT_FEATURES = {"test", "bench", "all"}


def test_all_brings_every_optional_runtime_feature():
    meta = metadata("pydist")
    extras = set(meta.get_all("Provides-Extra") or ())
    assert {"ssh", "docker", "kubernetes", "joblib", "jupyter"} <= extras
    [all_line] = [r for r in meta.get_all("Requires-Dist") if r.endswith('extra == "all"')]
    listed = set(re.search(r"\[(.*)\]", all_line).group(1).split(","))
    assert listed == extras - NOT_FEATURES
