"""A small MQTT 3.1.1 client for the cloud side of a simulation (sink and operator).

The sink must keep up with the whole fleet's telemetry in one process, so it does not go
through paho: it reads packets in bulk from one asyncio TLS connection, acknowledges QoS 1
deliveries at once and hands every read's messages to a callback as one batch. Publishing is
fire-and-forget with PUBACK accounting. Only what the simulator needs is implemented: QoS 0
and 1, SUBSCRIBE, PINGREQ, DISCONNECT; MQTT 3.1.1 so the same code runs on both brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["LiteClient", "LiteError"]

_log = logging.getLogger(__name__)

_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 1, 2, 3, 4
_SUBSCRIBE, _SUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 8, 9, 12, 13, 14
_TIMEOUT_S = 10.0
_MAX_IN_FLIGHT = 100

OnMessages = Callable[[list[tuple[str, bytes]]], None]


class LiteError(Exception):
    """The connection failed or was refused."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


class LiteClient(asyncio.Protocol):
    """MQTT 3.1.1 over TLS (see the module documentation).

    Args:
        client_id: MQTT client id.
        on_messages: Called with ``[(topic, payload), ...]`` for every read with messages.
        keepalive_s: Keep-alive interval.
    """

    def __init__(self, client_id: str, on_messages: OnMessages, *, keepalive_s: int = 60) -> None:
        self.client_id = client_id
        self._on_messages = on_messages
        self._keepalive = keepalive_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._pid = 0
        self._in_flight: set[int] = set()
        self._queued: list[tuple[str, bytes]] = []
        self._ping: asyncio.TimerHandle | None = None
        self._settled: asyncio.Event | None = None
        self.published = 0
        self.acked = 0
        self.received = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - stream transport
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ping is not None:
            self._ping.cancel()
        error = LiteError(f"connection lost: {exc or 'closed'}")
        futures: list[asyncio.Future[Any]] = [self._connack, *self._subacks.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._settled is not None:
            self._settled.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        batch: list[tuple[str, bytes]] = []
        while n - pos >= 2:  # noqa: PLR2004
            i = pos + 1
            length = shift = 0
            while i < n:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:  # noqa: PLR2004
                    break
                shift += 7
            else:
                break
            end = i + length
            if end > n:
                break
            first = buf[pos]
            kind = first >> 4
            if kind == _PUBLISH:
                tlen = (buf[i] << 8) | buf[i + 1]
                topic = buf[i + 2 : i + 2 + tlen].decode()
                i += 2 + tlen
                if first & 0x06:
                    self._out += b"\x40\x02"
                    self._out += buf[i : i + 2]
                    i += 2
                batch.append((topic, bytes(buf[i:end])))
            elif kind == _PUBACK:
                self._in_flight.discard((buf[i] << 8) | buf[i + 1])
                self.acked += 1
            elif kind == _SUBACK:
                fut = self._subacks.pop((buf[i] << 8) | buf[i + 1], None)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(buf[i + 2 : end]))
            elif kind == _CONNACK and not self._connack.done():
                self._connack.set_result(buf[i + 1])
            pos = end
        if pos:
            del buf[:pos]
        if self._queued and len(self._in_flight) < _MAX_IN_FLIGHT:
            queued, self._queued = self._queued, []
            for topic, payload in queued:
                self.publish(topic, payload)
        self._flush()
        if self._settled is not None and not self.unacked:
            self._settled.set()
        if batch:
            self.received += len(batch)
            self._on_messages(batch)

    # -- API ---------------------------------------------------------------------------------

    async def connect(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        """Open TLS, send CONNECT (clean session), wait for CONNACK.

        Raises:
            LiteError: Refused, unreachable or too slow.
        """
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                await self._loop.create_connection(
                    lambda: self, host, port, ssl=tls, server_hostname=host
                )
                body = b"\x00\x04MQTT\x04\x02" + self._keepalive.to_bytes(2, "big")
                body += _string(self.client_id)
                self._out += b"\x10" + _varint(len(body)) + body
                self._flush()
                code = await self._connack
        except (OSError, TimeoutError) as exc:
            self.abort()
            raise LiteError(f"cannot connect to {host}:{port}: {exc!r}") from None
        if code:
            self.abort()
            raise LiteError(f"connection refused: CONNACK code {code}")
        self._schedule_ping()

    def _next_pid(self) -> int:
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    async def subscribe(self, filters: list[str]) -> None:
        """Subscribe to ``filters`` at QoS 1.

        Raises:
            LiteError: A filter was refused.
        """
        pending = []
        for flt in filters:
            pid = self._next_pid()
            body = pid.to_bytes(2, "big") + _string(flt) + b"\x01"
            self._out += b"\x82" + _varint(len(body)) + body
            fut = self._subacks[pid] = self._loop.create_future()
            pending.append((flt, fut))
        self._flush()
        async with asyncio.timeout(_TIMEOUT_S):
            for flt, fut in pending:
                codes = await fut
                if any(c >= 0x80 for c in codes):  # noqa: PLR2004
                    raise LiteError(f"subscription to {flt!r} refused")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publish (QoS 1 waits for a free in-flight slot, in order)."""
        if qos and (self._queued or len(self._in_flight) >= _MAX_IN_FLIGHT):
            self._queued.append((topic, payload))
            return
        raw = topic.encode()
        size = 2 + len(raw) + len(payload) + (2 if qos else 0)
        self._out += (b"\x32" if qos else b"\x30") + _varint(size) + len(raw).to_bytes(2, "big")
        self._out += raw
        if qos:
            pid = self._next_pid()
            self._in_flight.add(pid)
            self._out += pid.to_bytes(2, "big")
        self._out += payload
        self.published += 1
        self._flush()

    @property
    def unacked(self) -> int:
        """Publishes not acknowledged yet (queued or in flight)."""
        return len(self._in_flight) + len(self._queued)

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            data, self._out = self._out, bytearray()
            self._transport.write(data)

    def _schedule_ping(self) -> None:
        self._ping = self._loop.call_later(self._keepalive / 2, self._send_ping)

    def _send_ping(self) -> None:
        self._out += b"\xc0\x00"
        self._flush()
        self._schedule_ping()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        """Wait briefly for PUBACKs, send DISCONNECT and close."""
        if self.unacked and self._transport is not None:
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._settled.wait()
        if self._transport is None:
            return
        self._out += b"\xe0\x00"
        self._flush()
        self._transport.close()
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self.abort()
