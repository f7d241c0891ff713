"""Pure test doubles (no I/O): a virtual clock and an in-memory pipelined transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Self

from device_sdk import (
    ConnectionLostError,
    DeviceSdkError,
    Message,
    NegativeAckError,
    QoS,
    TransportStatistics,
)
from device_sdk.transport._base import MessageBuffer, UserProperties


class FakeClock:
    """A clock whose ``sleep`` advances virtual time instantly."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = start
        self.wall_t = wall
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall_t

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall_t += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class FakePipelinedTransport:
    """An in-memory :class:`~device_sdk.transport.PipelinedTransport` driven by the test.

    No network: ``start_publish`` records the publish and returns a future the test resolves
    (``ack``, ``nack``) or the transport fails (``drop_link``). ``auto_ack`` resolves every
    QoS 1 publish on the next loop iteration. Counts the peak number of unresolved futures.
    """

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.nack_topics: dict[str, int] = {}
        self.sent: list[tuple[str, bytes, str | None]] = []
        self.pending: dict[asyncio.Future[None], tuple[str, bytes]] = {}
        self.peak_pending = 0
        self.connections = 0
        self._connected = asyncio.Event()
        self._down: asyncio.Future[DeviceSdkError | None] | None = None
        self._buffer = MessageBuffer(100)
        self._published = self._acked = self._nacked = 0

    @property
    def client_id(self) -> str:
        return "fake"

    @property
    def connected(self) -> asyncio.Event:
        return self._connected

    async def __aenter__(self) -> Self:
        self._down = asyncio.get_running_loop().create_future()
        self._buffer.open()
        self._connected.set()
        self.connections += 1
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._end(None)

    def _end(self, cause: DeviceSdkError | None) -> None:
        self._connected.clear()
        if self._down is not None and not self._down.done():
            self._down.set_result(cause)
        self._buffer.close(cause)
        pending, self.pending = self.pending, {}
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionLostError("link dropped"))

    def drop_link(self) -> None:
        """The connection ends: pending publishes fail with ConnectionLostError."""
        self._end(ConnectionLostError("link dropped"))

    def start_publish(
        self, topic: str, payload: bytes, qos: QoS, *, user_properties: UserProperties = ()
    ) -> asyncio.Future[None]:
        if not self._connected.is_set():
            raise ConnectionLostError("not connected")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._published += 1
        self.sent.append((topic, payload, dict(user_properties).get("msg-id")))
        if qos == 0:
            fut.set_result(None)
            return fut
        self.pending[fut] = (topic, payload)
        self.peak_pending = max(self.peak_pending, sum(not f.done() for f in self.pending))
        if topic in self.nack_topics:
            asyncio.get_running_loop().call_soon(self.nack, fut, self.nack_topics[topic])
        elif self.auto_ack:
            asyncio.get_running_loop().call_soon(self.ack, fut)
        return fut

    def ack(self, fut: asyncio.Future[None]) -> None:
        self.pending.pop(fut, None)
        if not fut.done():
            self._acked += 1
            fut.set_result(None)

    def nack(self, fut: asyncio.Future[None], code: int = 0x87) -> None:
        self.pending.pop(fut, None)
        if not fut.done():
            self._nacked += 1
            fut.set_exception(
                NegativeAckError("refused", packet="PUBACK", reason_code=code, reason_string=None)
            )

    def ack_all(self) -> None:
        for fut in list(self.pending):
            self.ack(fut)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: UserProperties = (),
    ) -> None:
        del retain
        await self.start_publish(topic, payload, qos, user_properties=user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        return [q for _, q in filters]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        del filters

    def messages(self) -> AsyncIterator[Message]:
        return aiter(self._buffer)

    async def disconnected(self) -> DeviceSdkError | None:
        if self._down is None:
            return None
        return await asyncio.shield(self._down)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            connects=self.connections,
            connect_failures=0,
            disconnects=0,
            published=self._published,
            acked=self._acked,
            nacked=self._nacked,
            received=0,
            dropped=0,
            buffered=0,
            buffer_size=100,
            in_flight=len(self.pending),
        )
