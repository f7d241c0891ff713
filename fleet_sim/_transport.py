"""A :class:`~device_sdk.Transport` wrapper that measures what the real transport does.

The simulator hands each :class:`~device_sdk.DeviceClient` its real transport (native, CRT
or paho) wrapped in :class:`MeasuredTransport`. Every connection attempt (the first and the
client's own reconnects), every PUBACK of a message outside the outbox (shadow, commands)
and every error then lands in the shard's :class:`~fleet_sim._metrics.RunMetrics` directly.
The outbox's telemetry PUBACKs are measured by the clients themselves, which record into the
shard's shared ``RunMetrics.client_metrics`` (``DeviceClient(metrics=...)``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

from device_sdk import (
    ConnectionLostError,
    DeviceSdkError,
    Message,
    NegativeAckError,
    QoS,
    RequestTimeoutError,
    Transport,
    TransportStatistics,
)
from device_sdk.transport._base import PipelinedTransport
from fleet_sim._metrics import RunMetrics

__all__ = ["MeasuredPipelinedTransport", "MeasuredTransport", "error_kind", "measured"]

_perf = time.perf_counter


def error_kind(exc: BaseException) -> str:
    """A short, stable label for an exception: class name plus reason code when known."""
    code = getattr(exc, "reason_code", None)
    name = type(exc).__name__
    return f"{name}({code:#04x})" if isinstance(code, int) else name


def measured(inner: Transport, metrics: RunMetrics) -> MeasuredTransport:
    """Wrap ``inner`` for measurement, keeping its pipelined publish path if it has one."""
    if isinstance(inner, PipelinedTransport):
        return MeasuredPipelinedTransport(inner, metrics)
    return MeasuredTransport(inner, metrics)


def _is_data(topic: str) -> bool:
    """Device data, as opposed to shadow (``$aws/...``) and command (``cmd/...``) traffic."""
    return topic[0] != "$" and not topic.startswith("cmd/")


class MeasuredTransport:
    """Delegates to ``inner`` and records connects, PUBACK latency and errors."""

    __slots__ = ("_inner", "_metrics", "_up")

    def __init__(self, inner: Transport, metrics: RunMetrics) -> None:
        """Wrap ``inner``; results go to ``metrics``."""
        self._inner = inner
        self._metrics = metrics
        self._up = False

    @property
    def client_id(self) -> str:
        """The inner transport's client id."""
        return self._inner.client_id

    @property
    def connected(self) -> asyncio.Event:
        """The inner transport's ``connected`` event."""
        return self._inner.connected

    async def __aenter__(self) -> Self:
        """Connect, timing the attempt."""
        m = self._metrics
        m.connect_attempt()
        started = _perf()
        try:
            await self._inner.__aenter__()
        except DeviceSdkError as exc:
            m.connect_failed(error_kind(exc))
            raise
        except BaseException:
            m.connect_failed("cancelled")
            raise
        m.connect_ok(_perf() - started)
        self._up = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        try:
            await self._inner.__aexit__(exc_type, exc, tb)
        finally:
            if self._up:
                self._up = False
                self._metrics.disconnected(None if exc_type is None else exc_type.__name__)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Publish; a QoS 1 data publish's PUBACK latency is recorded.

        Shadow (``$aws/...``) and command (``cmd/...``) publishes are counted apart, so
        ``acked`` and the ``puback`` histogram are about the devices' data messages.
        """
        started = _perf()
        try:
            await self._inner.publish(
                topic, payload, qos, retain=retain, user_properties=user_properties
            )
        except NegativeAckError as exc:
            self._metrics.error(f"nack:{error_kind(exc)}")
            raise
        except (ConnectionLostError, RequestTimeoutError) as exc:
            self._metrics.error(f"publish:{error_kind(exc)}")
            raise
        if qos:
            if _is_data(topic):
                self._metrics.acked(_perf() - started)
            else:
                self._metrics.counters["control_acked"] += 1  # shadow / command traffic

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """Subscribe through the inner transport."""
        return await self._inner.subscribe(filters)

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe through the inner transport."""
        await self._inner.unsubscribe(filters)

    def messages(self) -> AsyncIterator[Message]:
        """The inner transport's inbound messages."""
        return self._inner.messages()

    async def disconnected(self) -> DeviceSdkError | None:
        """Wait for the end of the connection; count why it ended."""
        cause = await self._inner.disconnected()
        if cause is not None:
            self._metrics.error(f"link:{error_kind(cause)}")
        return cause

    def statistics(self) -> TransportStatistics:
        """The inner transport's counters."""
        return self._inner.statistics()


class MeasuredPipelinedTransport(MeasuredTransport):
    """:class:`MeasuredTransport` for an inner transport with ``start_publish``."""

    __slots__ = ("_corkable", "_pipelined")

    def __init__(self, inner: PipelinedTransport, metrics: RunMetrics) -> None:
        """Wrap ``inner``; results go to ``metrics``."""
        super().__init__(inner, metrics)
        self._pipelined = inner
        self._corkable = inner if callable(getattr(inner, "cork", None)) else None

    def cork(self) -> None:
        """Buffer the inner transport's writes (when it can)."""
        if self._corkable is not None:
            self._corkable.cork()  # type: ignore[attr-defined]

    def uncork(self) -> None:
        """Write what the inner transport buffered."""
        if self._corkable is not None:
            self._corkable.uncork()  # type: ignore[attr-defined]

    def start_publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH on the inner transport.

        Device data (the outbox's messages) is measured by the client itself, which records
        into the shard's shared :attr:`RunMetrics.client_metrics`: no callback per message
        here. Other QoS 1 publishes have their outcome recorded when they settle.
        """
        fut = self._pipelined.start_publish(topic, payload, qos, user_properties=user_properties)
        if qos and not _is_data(topic):
            fut.add_done_callback(functools.partial(self._settled, False, _perf()))  # noqa: FBT003
        return fut

    def _settled(self, data: bool, started: float, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return  # the caller's ack timeout; the client counts it
        exc = fut.exception()
        m = self._metrics
        if exc is None:
            if data:
                m.acked(_perf() - started)
            else:
                m.counters["control_acked"] += 1
        elif isinstance(exc, NegativeAckError):
            m.error(f"nack:{error_kind(exc)}")
        elif isinstance(exc, (ConnectionLostError, RequestTimeoutError)):
            m.error(f"publish:{error_kind(exc)}")
