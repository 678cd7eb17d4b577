"""One small adapter module per peer, all with the same interface.

Each module defines ``NAME`` (the peer's name in tables), ``DISTRIBUTIONS``
(whose versions to print) and ``start(n) -> Handle`` (see ``base.Handle``), and
may define ``CASES`` (the only cases that mean something for it; default all).
Importing the module imports the peer's library at top level, so a peer that
is not installed raises ImportError there and is reported as skipped.

A *variant* is a peer measured again with other environment settings.  pydist
reads its settings once, when it is imported, so a variant runs in a child
``python -m bench`` with that environment; its rows appear under the variant's
name in the same report.
"""

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    peer: str             # the peer it is a variant of
    env: dict             # environment variables set for the child run
    cases: tuple          # the cases where the setting matters
    description: str


VARIANTS = {
    "pydist_noshm": Variant("pydist", {"PYDIST_SHM": "0"}, ("bigdata", "w2w"),
                            "pydist with shared memory off: every byte through the socket"),
    "pydist_shmall": Variant("pydist", {"PYDIST_SHM_BYTES": "1"}, ("bigdata", "w2w"),
                             "pydist with shared memory for every array, however small"),
}

# Order of the run: the floors first, then pydist and its variants, then the peers from the
# lightest to the heaviest runtime (each one is stopped before the next starts).
ORDER = ["memcpy", "bare_socket", "pydist", *VARIANTS, "multiprocessing", "loky", "dask", "ray",
         "ipyparallel"]

_MODULES = {
    "memcpy": "bench.peers.memcpy",
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
