"""Estimate pi by throwing darts, in parallel with pmap.

    python examples/monte_carlo.py                 # starts 2 local workers itself
    pydist -p 4 examples/monte_carlo.py -n 10000000

Each pmap element throws `per_task` darts at the unit square with its own seed and counts
those inside the quarter circle; pi is about 4 * hits / darts.
"""

import argparse
import math
import random

from pydist import addprocs, nprocs, nworkers, pmap


def darts(n: int, seed: int) -> int:
    """Throw n darts; count the hits inside the quarter circle (runs on a worker)."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--darts", type=int, default=400_000, help="darts in all")
    args = parser.parse_args()

    if nprocs() == 1:                      # run with plain python: add workers ourselves
        addprocs(2)
    tasks = 4 * nworkers()                 # a few tasks per worker balance the load
    per_task = args.darts // tasks
    hits = pmap(darts, [per_task] * tasks, range(tasks))
    pi = 4 * sum(hits) / (per_task * tasks)
    print(f"pi ~ {pi:.4f} from {per_task * tasks:,} darts on {nworkers()} workers "
          f"(error {abs(pi - math.pi):.4f})")


if __name__ == "__main__":
    main()
