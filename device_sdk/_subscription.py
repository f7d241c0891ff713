"""Topic-filter matching and :class:`Subscription`, the async iterator a subscriber holds.

Inbound messages are routed by the client's receive loop into each matching subscription's
bounded buffer. A full buffer drops the new message and counts it (the receive loop must
never block on one slow consumer).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import TYPE_CHECKING, Protocol, Self

from device_sdk._exceptions import ClosedError
from device_sdk._limits import counted_topic

if TYPE_CHECKING:
    from types import TracebackType

    from device_sdk.transport._base import Message, QoS

__all__ = ["Subscription", "SubscriptionStatistics", "topic_matches"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` under MQTT rules.

    ``$share/<name>/`` is ignored, ``+`` matches one level, ``#`` the rest (including the
    parent level, as in the MQTT spec), and wildcards at the first level do not match topics
    starting with ``$``.
    """
    flt = counted_topic(topic_filter) if topic_filter.startswith("$share/") else topic_filter
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level not in ("+", t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """Counters of one subscription.

    Attributes:
        received: Messages delivered into the buffer.
        dropped: Messages dropped because the buffer was full.
        buffered: Messages waiting in the buffer now.
        max_buffer: Buffer capacity.
    """

    received: int
    dropped: int
    buffered: int
    max_buffer: int


class _Registry(Protocol):
    async def _add_subscription(self, sub: Subscription) -> None: ...

    async def _remove_subscription(self, sub: Subscription) -> None: ...


class Subscription:
    """Messages matching one topic filter, as an ``async with`` / ``async for`` object.

    Created by :meth:`DeviceClient.subscribe <device_sdk.DeviceClient.subscribe>`; entering it
    subscribes (and it stays subscribed across reconnects), leaving it unsubscribes::

        async with device.subscribe("cmd/robot-1/#") as sub:
            async for message in sub:
                ...

    Iteration ends when the client closes, and raises if the broker refused the filter.
    """

    def __init__(self, registry: _Registry, topic_filter: str, qos: QoS, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be positive")
        self._registry = registry
        self.topic_filter = topic_filter
        self.qos: QoS = qos
        self._max = max_buffer
        self._items: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._entered = False
        self._received = 0
        self._dropped = 0

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"subscription to {self.topic_filter!r} is already active")
        await self._registry._add_subscription(self)  # noqa: SLF001 - companion protocol
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            await self._registry._remove_subscription(self)  # noqa: SLF001
        self._close(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._closed:
                raise StopAsyncIteration
            if not self._entered:
                raise ClosedError(f"subscription to {self.topic_filter!r} is not active")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _deliver(self, message: Message) -> bool:
        if len(self._items) >= self._max:
            self._dropped += 1
            return False
        self._items.append(message)
        self._received += 1
        self._wake()
        return True

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _close(self, error: BaseException | None) -> None:
        self._closed = True
        if error is not None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def statistics(self) -> SubscriptionStatistics:
        """Counter snapshot."""
        return SubscriptionStatistics(self._received, self._dropped, len(self._items), self._max)
