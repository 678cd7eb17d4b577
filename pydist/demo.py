"""`pydist demo`: a small demo — start local workers, estimate pi in parallel, print it."""

from __future__ import annotations

import random
import time

from pydist._args import ArgumentParser
from pydist import addprocs, myid, nworkers, pmap, remotecall_fetch, rmprocs, workers


def darts(n: int, seed: int) -> int:
    """Throw n darts at the unit square; count those inside the quarter circle."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(n))


def main(argv: list[str] | None = None, prog: str = "pydist demo") -> int:
    """Run the demo; returns the exit status."""
    parser = ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("-p", "--procs", type=int, default=2, help="local workers to start (default 2)")
    parser.add_argument("-n", "--darts", type=int, default=2_000_000, help="darts in all (default 2e6)")
    args = parser.parse_args(argv)
    if args.procs < 1 or args.darts < 1:
        parser.error("-p and -n must be at least 1")

    started = time.perf_counter()
    ids = addprocs(args.procs)
    print(f"started workers {ids} in {time.perf_counter() - started:.2f} s")
    print("hello from", [remotecall_fetch(myid, pid) for pid in workers()])

    chunks = 8 * nworkers()
    per_chunk = args.darts // chunks
    started = time.perf_counter()
    hits = pmap(darts, [per_chunk] * chunks, range(chunks))
    pi = 4 * sum(hits) / (per_chunk * chunks)
    print(f"pi ~ {pi:.5f} from {per_chunk * chunks:,} darts on {nworkers()} workers "
          f"in {time.perf_counter() - started:.2f} s")
    rmprocs(*ids)
    return 0
