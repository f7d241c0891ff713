"""The :class:`Transport` protocol every MQTT implementation satisfies, and its value types.

Features (outbox sender, shadow, jobs, commands, provisioning) depend only on this protocol,
never on a concrete client. A transport is one MQTT 5 connection at a time: ``async with``
connects (and raises :class:`~device_sdk.ConnectError` if it cannot); the connection ends
when the block exits or the link drops, which :meth:`Transport.disconnected` reports.
A transport object is *reusable* (enter it again to reconnect) but *not reentrant*.
Reconnection policy lives above it, in :class:`~device_sdk.DeviceClient`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import TYPE_CHECKING, Literal, Protocol, Self, runtime_checkable

from device_sdk._exceptions import ConnectionLostError, DeviceSdkError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

__all__ = [
    "ConnectionOptions",
    "Message",
    "MessageBuffer",
    "PipelinedTransport",
    "QoS",
    "Transport",
    "TransportStatistics",
    "UserProperties",
    "Will",
]

QoS = Literal[0, 1]
"""IoT Core supports QoS 0 and 1 only."""

UserProperties = tuple[tuple[str, str], ...]
"""MQTT 5 user properties, in order (IoT Core preserves the order)."""

MSG_ID_PROPERTY = "msg-id"


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """An inbound PUBLISH.

    Attributes:
        topic: The topic name the message was published to.
        payload: Raw payload bytes.
        qos: The QoS it was delivered with.
        retain: Whether the broker delivered it as a retained message.
        user_properties: MQTT 5 user properties, in order.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    user_properties: UserProperties = ()

    def user_property(self, name: str) -> str | None:
        """The first user property called ``name``, or ``None``."""
        for key, value in self.user_properties:
            if key == name:
                return value
        return None

    @property
    def msg_id(self) -> str | None:
        """The SDK's de-duplication id (user property ``msg-id``), if the sender set one."""
        return self.user_property(MSG_ID_PROPERTY)


@dataclasses.dataclass(frozen=True, slots=True)
class Will:
    """The Last Will the broker publishes when the connection ends without a clean DISCONNECT.

    Attributes:
        topic: Will topic.
        payload: Will payload.
        qos: Will QoS (IoT Core refuses QoS 2).
        retain: Publish the will as retained.
        delay_s: MQTT 5 will delay interval.
    """

    topic: str
    payload: bytes
    qos: QoS = 1
    retain: bool = False
    delay_s: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to connect (grouped, immutable, shared by every transport).

    Attributes:
        keepalive_s: MQTT keep-alive. IoT Core accepts 30..1200 s and adjusts others. With the
            default 60 s and ``ping_timeout_s`` 30 s a half-open link is detected within about
            90 s (CRT) or at most two keep-alive periods (paho).
        ping_timeout_s: How long to wait for PINGRESP before declaring the link dead (CRT,
            native).
        connect_timeout_s: TCP + TLS + CONNACK budget of one connection attempt.
        ack_timeout_s: Per-operation ack timeout for SUBSCRIBE/UNSUBSCRIBE.
        clean_start: MQTT 5 Clean Start flag.
        session_expiry_s: MQTT 5 Session Expiry Interval (0: session ends with the connection).
        will: Last Will, sent by the broker on an unclean disconnect.
        client_id: Override the identity's client id.
        receive_buffer: Capacity of the inbound message buffer; excess messages are dropped
            and counted (see :class:`TransportStatistics`).
        max_inflight: Outbound QoS 1 messages awaiting PUBACK at the transport (IoT Core: 100).
        mqtt_version: 5 (default) or 3 for MQTT 3.1.1 (paho and native transports; user
            properties, session expiry and will properties are not sent on 3.1.1).
    """

    keepalive_s: int = 60
    ping_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 30.0
    clean_start: bool = True
    session_expiry_s: int = 0
    will: Will | None = None
    client_id: str | None = None
    receive_buffer: int = 1000
    max_inflight: int = 100
    mqtt_version: Literal[3, 5] = 5

    def __post_init__(self) -> None:
        if not 1 <= self.keepalive_s <= 65535:  # noqa: PLR2004
            raise ValueError("keepalive_s must be within 1..65535 (IoT Core uses 30..1200)")
        if self.ping_timeout_s + 1 > self.keepalive_s:
            # awscrt requires keep-alive > ping timeout + 1 s.
            raise ValueError("keepalive_s must exceed ping_timeout_s by at least one second")
        if self.receive_buffer < 1 or self.max_inflight < 1:
            raise ValueError("receive_buffer and max_inflight must be positive")


@dataclasses.dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Counters of one transport object (over all its connections).

    Attributes:
        connects: Successful connections.
        connect_failures: Failed connection attempts.
        disconnects: Connections that ended (cleanly or not).
        published: PUBLISH packets handed to the network.
        acked: PUBACKs with a success code.
        nacked: PUBACKs with a failure code.
        received: Inbound messages accepted into the buffer.
        dropped: Inbound messages dropped because the buffer was full.
        buffered: Messages waiting in the buffer now.
        buffer_size: Buffer capacity.
        in_flight: QoS 1 publishes awaiting PUBACK now.
    """

    connects: int
    connect_failures: int
    disconnects: int
    published: int
    acked: int
    nacked: int
    received: int
    dropped: int
    buffered: int
    buffer_size: int
    in_flight: int


@runtime_checkable
class Transport(Protocol):
    """One MQTT 5 connection with mutual TLS, as an async context manager.

    ``publish`` (QoS 1 returns once the PUBACK arrived and raises
    :class:`~device_sdk.NegativeAckError` on a failure reason code), ``subscribe`` (returns
    the granted QoS per filter), ``unsubscribe``, ``messages()`` over a bounded buffer,
    ``connected`` / ``disconnected()`` for the link state, and ``statistics()``.
    """

    @property
    def client_id(self) -> str:
        """The MQTT client id this transport connects with."""
        ...

    @property
    def connected(self) -> asyncio.Event:
        """Set while the connection is up; cleared when it ends."""
        ...

    async def __aenter__(self) -> Self:
        """Connect; raises ConnectError (or AuthorizationError) on failure."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; leaving with an exception disconnects *with* the Will."""
        ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: UserProperties = (),
    ) -> None:
        """Send a PUBLISH; for QoS 1 return when the PUBACK arrived."""
        ...

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """Subscribe; return the granted QoS per filter, raise on failure codes."""
        ...

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe from ``filters``."""
        ...

    def messages(self) -> AsyncIterator[Message]:
        """Inbound messages of the current connection, from a bounded buffer."""
        ...

    async def disconnected(self) -> DeviceSdkError | None:
        """Wait until the connection ends; return the cause (``None`` for a clean close)."""
        ...

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        ...


@runtime_checkable
class PipelinedTransport(Transport, Protocol):
    """A :class:`Transport` that can queue a PUBLISH without awaiting it (internal, optional).

    :class:`~device_sdk.DeviceClient` uses :meth:`start_publish` when a transport implements it
    (an ``isinstance`` check) and falls back to ``await transport.publish(...)`` otherwise.
    """

    def start_publish(
        self, topic: str, payload: bytes, qos: QoS, *, user_properties: UserProperties = ()
    ) -> asyncio.Future[None]:
        """Queue one PUBLISH without awaiting anything (call on the event-loop thread).

        The returned future resolves when the PUBACK arrives (QoS 1) or once the packet is handed to
        the network (QoS 0); it fails with NegativeAckError on a failure reason code and with
        ConnectionLostError if the connection ends first. Raises ConnectionLostError at once if not
        connected. No timeout: the caller owns timeouts (it may cancel the future; a cancelled
        future's PUBACK is then ignored). Counters in statistics() are updated as for publish().
        """
        ...


class CorkableTransport(Protocol):
    """A transport that can hold its writes while a batch is queued (internal, optional).

    Between :meth:`cork` and :meth:`uncork`, packets queued with ``start_publish`` are only
    buffered; :meth:`uncork` writes them at once with one system call. Without it, the
    native transport writes at the end of the event-loop iteration (one more callback).
    """

    def cork(self) -> None:
        """Buffer writes until :meth:`uncork`."""
        ...

    def uncork(self) -> None:
        """Write what was buffered, now."""
        ...


class MessageBuffer:
    """Bounded FIFO of inbound messages with one async consumer.

    ``put_nowait`` never blocks (it runs in protocol callbacks); when the buffer is full the
    new message is dropped and counted. ``close`` ends iteration once the buffer is drained,
    raising :class:`~device_sdk.ConnectionLostError` if the connection was lost.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = True
        self._cause: DeviceSdkError | None = None
        self.received = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def open(self) -> None:
        """Start a new connection's iteration (keeps undelivered messages)."""
        self._closed = False
        self._cause = None

    def close(self, cause: DeviceSdkError | None) -> None:
        """End iteration after the buffered messages; ``cause`` is raised if not ``None``."""
        self._closed = True
        self._cause = cause
        self._wake()

    def put_nowait(self, message: Message) -> bool:
        """Buffer ``message``; return ``False`` if it was dropped because the buffer is full."""
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.append(message)
        self.received += 1
        self._wake()
        return True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            if self._items:
                yield self._items.popleft()
                continue
            if self._closed:
                if self._cause is not None:
                    raise ConnectionLostError(str(self._cause)) from self._cause
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
