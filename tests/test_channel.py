"""Channel: the local bounded, closable queue."""

import math
import threading

import pytest

from pydist import Channel, InvalidStateError


def test_take_returns_items_first_in_first_out():
    ch = Channel(size=3)
    for x in (1, 2, 3):
        ch.put(x)
    assert [ch.take(), ch.take(), ch.take()] == [1, 2, 3]


def test_take_on_closed_empty_channel_raises_invalid_state():
    ch = Channel(size=1)
    ch.close()
    with pytest.raises(InvalidStateError):
        ch.take()


def test_put_on_closed_channel_raises_invalid_state():
    ch = Channel()
    ch.close()
    with pytest.raises(InvalidStateError):
        ch.put(1)


def test_items_put_before_close_can_still_be_taken():
    ch = Channel(size=2)
    ch.put("a")
    ch.close()
    assert ch.take() == "a"


def test_fetch_does_not_remove_the_item():
    ch = Channel()
    ch.put(5)
    assert ch.fetch() == 5
    assert ch.isready()
    assert ch.take() == 5
    assert not ch.isready()


def test_put_blocks_while_full_until_a_take():
    ch = Channel(size=1)
    ch.put(1)
    done = threading.Event()

    def producer():
        ch.put(2)
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.1)
    assert ch.take() == 1
    assert done.wait(5)
    assert ch.take() == 2


def test_close_wakes_a_blocked_taker():
    ch = Channel()
    errors = []

    def taker():
        try:
            ch.take()
        except InvalidStateError as err:
            errors.append(err)

    t = threading.Thread(target=taker, daemon=True)
    t.start()
    ch.close()
    t.join(5)
    assert len(errors) == 1


def test_iteration_ends_when_closed_and_empty():
    ch = Channel(size=math.inf)
    for x in range(5):
        ch.put(x)
    ch.close()
    assert list(ch) == [0, 1, 2, 3, 4]


def test_unbuffered_put_waits_for_its_taker():
    ch = Channel(size=0)
    got = []
    t = threading.Thread(target=lambda: got.append(ch.take()), daemon=True)
    t.start()
    ch.put("x")
    t.join(5)
    assert got == ["x"]


def test_wait_with_timeout_returns_false_when_nothing_arrives():
    assert Channel().wait(timeout=0.05) is False


def test_negative_size_is_refused():
    with pytest.raises(ValueError):
        Channel(size=-1)
