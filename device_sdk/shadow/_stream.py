"""Typed async streams (shared by the shadow and jobs layers).

:class:`EventStream` — parsed events from one subscription: ``async with stream: async for
event in stream:``; entering subscribes, leaving unsubscribes. Each message is parsed once at
the edge; a payload that does not parse is logged (truncated) and counted in
:meth:`EventStream.statistics`, never delivered as ``None``.

:class:`Fanout` / :class:`BufferedStream` — in-process events (shadow changes, job outcomes)
copied to every open stream, each with a bounded buffer that drops its oldest item when full.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Self, TypeVar

import pydantic

from device_sdk._aio import LazyEvent

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._subscription import Subscription
    from device_sdk.transport._base import Message

__all__ = ["BufferedStream", "EventStream", "EventStreamStatistics", "Fanout"]

T = TypeVar("T")

_LOG_PAYLOAD_BYTES = 200


@dataclasses.dataclass(frozen=True, slots=True)
class EventStreamStatistics:
    """Counters of one event stream.

    Attributes:
        received: Messages that arrived on the subscription.
        malformed: Messages that did not parse and were skipped.
        dropped: Messages dropped because the buffer was full.
        buffered: Messages waiting now.
        max_buffer: Buffer capacity.
    """

    received: int
    malformed: int
    dropped: int
    buffered: int
    max_buffer: int


class EventStream(Generic[T]):
    """Parsed events from one topic filter, as an ``async with`` / ``async for`` object.

    Iteration ends when the device client closes.
    """

    def __init__(
        self,
        device: DeviceClient,
        topic_filter: str,
        parse: Callable[[bytes], T],
        *,
        max_buffer: int = 100,
        logger: logging.Logger | None = None,
    ) -> None:
        self._device = device
        self.topic_filter = topic_filter
        self._parse = parse
        self._max_buffer = max_buffer
        self._log = logger or logging.getLogger(__name__)
        self._sub: Subscription | None = None
        self._malformed = 0

    async def __aenter__(self) -> Self:
        if self._sub is not None:
            raise RuntimeError(f"stream on {self.topic_filter!r} is already active")
        sub = self._device.subscribe(self.topic_filter, max_buffer=self._max_buffer)
        await sub.__aenter__()
        self._sub = sub
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._sub is None:
            raise RuntimeError(f"enter the stream first: 'async with' ... {self.topic_filter!r}")
        while True:
            message: Message = await anext(self._sub)
            try:
                return self._parse(message.payload)
            except ValueError as exc:  # includes JSON, UTF-8 and pydantic validation errors
                self._malformed += 1
                self._log.warning(
                    "ignoring malformed message on %s (%s): %r",
                    message.topic,
                    _short_error(exc),
                    message.payload[:_LOG_PAYLOAD_BYTES],
                )

    def statistics(self) -> EventStreamStatistics:
        """Counter snapshot (zeros before the stream is entered)."""
        malformed = self._malformed
        if self._sub is None:
            return EventStreamStatistics(0, malformed, 0, 0, self._max_buffer)
        s = self._sub.statistics()
        return EventStreamStatistics(s.received, malformed, s.dropped, s.buffered, s.max_buffer)


def _short_error(exc: ValueError) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return f"{exc.error_count()} validation error(s): {exc.errors()[0]['msg']}"
    return str(exc)[:_LOG_PAYLOAD_BYTES]


class Fanout(Generic[T]):
    """The producer side: :meth:`publish` copies an item into every open stream."""

    def __init__(self) -> None:
        self._streams: set[BufferedStream[T]] = set()
        self._closed = False

    def stream(self, max_buffer: int) -> BufferedStream[T]:
        """A new consumer stream (receives items published while it is entered)."""
        return BufferedStream(self, max_buffer)

    def publish(self, item: T) -> None:
        """Deliver ``item`` to every open stream (never blocks)."""
        for stream in list(self._streams):
            stream._put(item)  # noqa: SLF001 - companion class

    def close(self) -> None:
        """End iteration of every open stream once it is drained."""
        self._closed = True
        for stream in list(self._streams):
            stream._close()  # noqa: SLF001

    def reopen(self) -> None:
        """Accept streams again (the producer was restarted)."""
        self._closed = False

    @property
    def dropped(self) -> int:
        """Items dropped so far by the streams open now."""
        return sum(s.dropped for s in self._streams)


class BufferedStream(Generic[T]):
    """Items as an ``async with`` / ``async for`` object with a bounded buffer.

    When the buffer is full the oldest item is dropped and counted in :attr:`dropped`.
    Iteration ends when the producer stops.
    """

    def __init__(self, source: Fanout[T], max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be positive")
        self._source = source
        self._items: collections.deque[T] = collections.deque()
        self._max = max_buffer
        self._ready = LazyEvent()
        self._closed = False
        self.dropped = 0

    async def __aenter__(self) -> Self:
        self._source._streams.add(self)  # noqa: SLF001 - companion class
        self._closed = self._source._closed  # noqa: SLF001
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._source._streams.discard(self)  # noqa: SLF001
        self._close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def _put(self, item: T) -> None:
        if len(self._items) >= self._max:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()
