"""One module per case.

Session cases (``latency``, ``throughput``, ``bigdata``, ``w2w``, ``fanout``) get a
running Handle with ``run(handle, cfg) -> list[row]``; ``startup`` and
``scale`` start and stop the peer themselves with ``run(peer_module, cfg,
tracker_factory) -> list[row]``.  A row is a dict with ``key`` (what it is
compared with: the same key of pydist's rows), ``label`` (the peer's API
used) and the measured numbers.
"""

SESSION = ["latency", "throughput", "bigdata", "w2w", "fanout"]
STANDALONE = ["startup", "scale"]
ALL = ["latency", "throughput", "bigdata", "w2w", "startup", "fanout", "scale"]
