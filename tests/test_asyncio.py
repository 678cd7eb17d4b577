"""Awaiting pydist Futures, RemoteChannels and Executor futures keeps the event loop running.

Each test makes the awaited result depend on another coroutine: the remote call only
finishes once a second coroutine has run. If an await blocked the loop, that coroutine
could never run and the test would time out (asyncio.wait_for), so passing proves the loop
kept running; no timing is measured.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conftest import wait_until
from pydist import RemoteChannel, RemoteException, remotecall, remotecall_fetch
from pydist.executor import Executor

DEADLINE = 30.0


def _take(channel):
    return channel.take()


def _double_next(gate):
    return 2 * gate.take()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


def test_await_future_lets_another_coroutine_run_meanwhile(cluster):
    gate = RemoteChannel()
    fut = remotecall(_double_next, cluster[0], gate)
    ticks = []

    async def ticker():
        ticks.append("tick")
        await gate.put_async(21)           # only this lets the remote call finish

    async def main():
        value, _ = await asyncio.gather(fut, ticker())
        return value

    assert run(main()) == 42
    assert ticks == ["tick"]


def test_await_future_raises_remote_exception(cluster):
    async def main():
        return await remotecall(lambda: 1 / 0, cluster[0])

    with pytest.raises(RemoteException, match="ZeroDivisionError"):
        run(main())


def test_take_async_waits_without_blocking_the_loop(cluster):
    channel = RemoteChannel(cluster[0])
    order = []

    async def consumer():
        item = await channel.take_async()
        order.append(("took", item))
        return item

    async def producer():
        order.append("producing")
        await asyncio.get_running_loop().run_in_executor(
            None, remotecall_fetch, lambda ch: ch.put("item") and None, cluster[1], channel)

    async def main():
        return (await asyncio.gather(consumer(), producer()))[0]

    assert run(main()) == "item"
    assert order == ["producing", ("took", "item")]


def test_put_async_and_fetch_async_on_a_remote_channel(cluster):
    channel = RemoteChannel(cluster[1], 2)

    async def main():
        await channel.put_async("a")
        first = await channel.fetch_async()
        return first, await channel.take_async()

    assert run(main()) == ("a", "a")


def test_executor_futures_await_through_wrap_future(cluster):
    gate = RemoteChannel()

    async def main():
        with Executor() as ex:
            waiting = asyncio.wrap_future(ex.submit(_double_next, gate))
            await gate.put_async(5)
            return await waiting

    assert run(main()) == 10


def test_run_in_executor_accepts_a_pydist_executor(cluster):
    async def main():
        with Executor() as ex:
            loop = asyncio.get_running_loop()
            return await asyncio.gather(*(loop.run_in_executor(ex, os.getpid) for _ in range(4)))

    pids = set(run(main()))
    assert pids <= {remotecall_fetch(os.getpid, pid) for pid in cluster}
    assert os.getpid() not in pids


def test_many_pending_awaits_do_not_starve_the_loop(cluster):
    """12 awaits blocked in take() at once, released by a coroutine's put_async calls."""
    gate = RemoteChannel(size=100)
    n = 12
    futures = [remotecall(_take, cluster[i % 2], gate) for i in range(n)]

    async def release():
        for i in range(n):
            await gate.put_async(i)

    async def main():
        results = await asyncio.gather(*futures, release())
        return sorted(results[:-1])

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), 10)) == list(range(n))
    finally:
        for _ in range(n):                 # unblock the helper threads so the loop can close
            gate.put(-1)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_cancelling_the_awaiting_task_interrupts_the_call(cluster):
    from pydist.calls import wait_idle

    async def main():
        fut = remotecall(time.sleep, cluster[0], 60)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fut, 0.2)
        return fut

    fut = asyncio.run(main())
    wait_until(fut.cancelled, what="the Future to be cancelled")
    assert remotecall_fetch(wait_idle, cluster[0], 5), "the call still runs"
