"""One small adapter module per peer, all with the same interface.

Each module defines ``NAME`` (the peer's name in tables), ``DISTRIBUTIONS``
(whose versions to print) and ``start(n) -> Handle`` (see ``base.Handle``).
Importing the module imports the peer's library at top level, so a peer that
is not installed raises ImportError there and is reported as skipped.
"""

import importlib

# Order of the run: the floor first, then pydist, then the peers from the
# lightest to the heaviest runtime (each one is stopped before the next starts).
ORDER = ["bare_socket", "pydist", "multiprocessing", "loky", "dask", "ray", "ipyparallel"]

_MODULES = {
    "bare_socket": "bench.peers.bare_socket",
    "pydist": "bench.peers.pydist_",
    "multiprocessing": "bench.peers.multiprocessing_",
    "loky": "bench.peers.loky_",
    "dask": "bench.peers.dask_",
    "ray": "bench.peers.ray_",
    "ipyparallel": "bench.peers.ipyparallel_",
}


def load(name: str):
    """Import the adapter of peer ``name``; ImportError means 'not installed'."""
    return importlib.import_module(_MODULES[name])
