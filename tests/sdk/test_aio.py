"""LazyEvent: asyncio.Event semantics without an eagerly allocated waiter deque."""

from __future__ import annotations

import asyncio
import collections
import sys

import pytest

from device_sdk._aio import LazyEvent


def test_no_waiter_queue_until_someone_waits() -> None:
    ev = LazyEvent()
    assert isinstance(ev, asyncio.Event)
    waiters: object = ev._waiters
    assert not isinstance(waiters, collections.deque)
    assert sys.getsizeof(waiters) < sys.getsizeof(collections.deque())
    ev.set()  # iterating no waiters is fine
    ev.clear()
    assert not ev.is_set()


async def test_set_wakes_every_waiter_and_clear_resets() -> None:
    ev = LazyEvent()
    waiters = [asyncio.create_task(ev.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert isinstance(ev._waiters, collections.deque)
    assert len(ev._waiters) == 3
    assert not any(w.done() for w in waiters)
    ev.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert len(ev._waiters) == 0
    assert await ev.wait() is True  # already set: returns at once
    ev.clear()
    late = asyncio.create_task(ev.wait())
    await asyncio.sleep(0)
    assert not late.done()
    ev.set()
    assert await asyncio.wait_for(late, 1) is True


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    ev = LazyEvent()
    waiter = asyncio.create_task(ev.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(ev._waiters) == 0
    ev.set()
    assert ev.is_set()


async def test_wait_for_timeout_like_an_event() -> None:
    ev = LazyEvent()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ev.wait(), 0.01)
    asyncio.get_running_loop().call_later(0.01, ev.set)
    assert await asyncio.wait_for(ev.wait(), 1) is True
