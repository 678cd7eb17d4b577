"""A parameter sweep with a progress bar: pmap(..., progress=True).

    python examples/sweep.py
    pydist -p 4 examples/sweep.py --steps 2000

Fits y = a*x + b to noisy data by gradient descent for every (learning rate, epochs)
pair of a grid, on the workers, and reports the best pair.  The bar (tqdm, on stderr)
shows done/total, rate and time left; worker output is printed above it.
"""

import argparse
import itertools
import random

from pydist import addprocs, nprocs, pmap


def make_data(n: int = 200, seed: int = 1) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(x, 3.0 * x + 0.5 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(n))]


def fit(rate: float, epochs: int, data: list[tuple[float, float]]) -> float:
    """Runs on a worker: gradient descent on the mean squared error; returns the final loss."""
    a = b = 0.0
    n = len(data)
    for _ in range(epochs):
        grad_a = sum(2 * (a * x + b - y) * x for x, y in data) / n
        grad_b = sum(2 * (a * x + b - y) for x, y in data) / n
        a, b = a - rate * grad_a, b - rate * grad_b
    return sum((a * x + b - y) ** 2 for x, y in data) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="largest number of epochs")
    args = parser.parse_args()
    if nprocs() == 1:
        addprocs(2)

    data = make_data()
    rates = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    epochs = [args.steps // 8, args.steps // 4, args.steps // 2, args.steps]
    grid = list(itertools.product(rates, epochs))
    losses = pmap(fit, [r for r, _ in grid], [e for _, e in grid], [data] * len(grid),
                  progress=True)
    (rate, n_epochs), loss = min(zip(grid, losses), key=lambda pair: pair[1])
    print(f"{len(grid)} fits; best: rate={rate}, epochs={n_epochs}, loss={loss:.5f}")


if __name__ == "__main__":
    main()
