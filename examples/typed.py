"""Typed use of pydist: mypy --strict checks remote calls like local ones.

    python examples/typed.py
    mypy --strict examples/typed.py

`remotecall_fetch(f, pid, *args)` has f's return type and checks the arguments against
f's parameters; `remotecall` returns a `Future[T]`, whose `fetch()` is a T; `pmap` returns
a `list[T]`.  (The tests run mypy on this file: tests/test_typing.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

from pydist import Future, RemoteChannel, addprocs, fetch, pmap, remotecall, remotecall_fetch, rmprocs, workers


@dataclass
class Stats:
    count: int
    mean: float


def stats(values: list[float]) -> Stats:
    """Runs on a worker."""
    return Stats(len(values), sum(values) / len(values))


def produce(channel: RemoteChannel, n: int) -> int:
    for i in range(n):
        channel.put(i * i)
    return n


def main() -> None:
    ids: list[int] = addprocs(2)
    result: Stats = remotecall_fetch(stats, ids[0], [1.0, 2.0, 4.0])
    print(f"{result.count} values, mean {result.mean:.2f}")

    future: Future[Stats] = remotecall(stats, ids[1], [3.0, 5.0])
    print("mean on worker", ids[1], "=", future.fetch().mean)

    squares: list[int] = pmap(lambda x: x * x, range(5))
    lengths: list[int] = pmap(len, ["a", "bb", "ccc"])
    print(squares, lengths)

    channel = RemoteChannel(ids[0], size=10)
    sent: Future[int] = remotecall(produce, ids[0], channel, 3)
    print("sent", fetch(sent), "items:", [channel.take() for _ in range(3)])
    rmprocs(*workers()).wait()


if __name__ == "__main__":
    main()
