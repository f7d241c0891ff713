"""Run services as one privileged MQTT client of the broker.

A :class:`Service` declares the topic filters it serves and turns each request into the
messages to publish; the :class:`ServiceHost` owns the connection, subscribes, dispatches in
arrival order (so one thing's requests are handled in the order it sent them) and publishes the
results. The same code runs against mosquitto and the embedded broker, because it is just an
MQTT client.

Requester identity: where the broker can, it adds the MQTT 5 user property ``x-iot-client-id``
to each request (the mosquitto plugin does); a response carrying ``x-iot-deliver-to`` is then
delivered by the broker only to that client, as IoT Core does for Jobs updates and Fleet
Provisioning responses. Where the broker cannot, responses go to every authorized subscriber of
the response topic (documented in docs/cloud_stubs.md).

Throughput: given a :class:`~cloud_stubs._service_client.ServiceClient` (what the stub itself
uses), the host does not go through aiomqtt/paho but speaks MQTT itself over one asyncio TLS
connection (:class:`_Session`): requests are handled in batches (whatever arrived in one read,
at most :data:`_BATCH`), each service's optional ``persist()`` runs once per batch, and then the
batch's responses leave in one TLS write. QoS 1 responses are not awaited one by one: up to the
broker's Receive Maximum are in flight, the rest wait in order for PUBACKs. paho's per-packet
work (one task, event and PUBACK wait per publish, three TLS reads and one TLS write per packet)
cost several times more CPU than the shadow service itself. Any other ``aiomqtt.Client`` (tests
pass their own) is served through aiomqtt as before (:class:`_AiomqttLink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud_stubs._service_client import ConnectSettings

__all__ = [
    "CLIENT_ID_PROPERTY",
    "DELIVER_TO_PROPERTY",
    "Outgoing",
    "Request",
    "Service",
    "ServiceHost",
]

_log = logging.getLogger(__name__)

CLIENT_ID_PROPERTY = "x-iot-client-id"
DELIVER_TO_PROPERTY = "x-iot-deliver-to"

#: QoS 1 publishes in flight (awaiting PUBACK) at most; the broker's Receive Maximum caps it.
_MAX_IN_FLIGHT = 1000
#: Requests handled before their responses are written (one persist() and one write per batch).
_BATCH = 64
#: Responses waiting for a free in-flight slot before the host stops taking requests.
_MAX_QUEUED = 4000
#: Requests read but not handled yet before the host stops reading from the socket.
_MAX_PENDING = 4000
#: Seconds to wait for CONNACK, SUBACK and a clean close.
_TIMEOUT = 10.0
#: Seconds a stopping host may spend on requests it has already read.
_FINISH_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Request:
    """A message a device published to a service topic."""

    topic: str
    payload: bytes
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a service publishes (QoS 1 unless said otherwise; QoS 0 and 1 only)."""

    topic: str
    payload: bytes
    qos: int = 1
    deliver_to: str | None = None
    content_type: str | None = None
    """MQTT 5 Content Type property (dropped on MQTT 3.1.1)."""
    message_expiry_s: int | None = None
    """MQTT 5 Message Expiry Interval in seconds (dropped on MQTT 3.1.1)."""


class Service(Protocol):
    """A cloud service driven by the host.

    A service may also define ``persist() -> None``: the host calls it after each batch of
    requests and before publishing their responses, so state changes can be committed once per
    batch without a response ever announcing a change that is not stored yet.
    """

    name: str

    @property
    def filters(self) -> Sequence[str]:
        """Topic filters carrying this service's requests."""
        ...

    def accepts(self, topic: str) -> bool:
        """True when ``topic`` is one of this service's request topics."""
        ...

    async def handle(self, request: Request) -> list[Outgoing]:
        """Answer one request; must never raise for bad input (answer with a rejection)."""
        ...

    async def tick(self, now: float) -> list[Outgoing]:
        """Run timers; called about once a second."""
        ...


class _Link(Protocol):
    """One MQTT connection as the host uses it."""

    async def open(self, filters: Sequence[str]) -> None: ...

    async def close(self) -> None: ...

    async def next_batch(self, limit: int) -> list[Request]: ...

    def pending(self) -> list[Request]: ...

    def publish(self, messages: Iterable[Outgoing]) -> None: ...

    async def drain(self) -> None: ...


class ServiceHost:
    """Connects once and serves every registered service until cancelled."""

    def __init__(
        self,
        client_factory: Callable[[], aiomqtt.Client],
        services: Sequence[Service],
        *,
        mqtt5: bool,
        tick_interval: float = 1.0,
    ) -> None:
        """Remember the services; nothing connects until :meth:`run`."""
        self._factory = client_factory
        self._services = list(services)
        hooks = (getattr(service, "persist", None) for service in self._services)
        self._persists: list[Callable[[], object]] = [h for h in hooks if callable(h)]
        self._mqtt5 = mqtt5
        self._tick_interval = tick_interval
        self.handled = 0
        self.errors = 0
        self._link: _Link | None = None

    async def run(self, ready: asyncio.Event) -> None:
        """Serve until cancelled; set ``ready`` once every subscription is acknowledged."""
        client = self._factory()
        settings = getattr(client, "settings", None)
        link: _Link
        if isinstance(settings, ConnectSettings) and settings.mqtt5 == self._mqtt5:
            link = _Session(settings)
        else:
            link = _AiomqttLink(client, mqtt5=self._mqtt5)
        await link.open([flt for service in self._services for flt in service.filters])
        ticker = asyncio.create_task(self._ticker(link), name="cloud_stubs.services.tick")
        try:
            self._link = link
            ready.set()
            await self._serve(link)
        finally:
            self._link = None
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await ticker
            # Requests already read were acknowledged to the broker: apply (and persist) them,
            # and answer while the connection lasts, before disconnecting.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_FINISH_TIMEOUT):
                    await self._handle_batch(link, link.pending())
            await link.close()

    async def emit(self, messages: Sequence[Outgoing]) -> None:
        """Publish messages produced outside a request (control plane), in order."""
        if self._link is None:
            raise RuntimeError("the service host is not running")
        self._link.publish(messages)
        await self._link.drain()

    async def _serve(self, link: _Link) -> None:
        while True:
            await self._handle_batch(link, await link.next_batch(_BATCH))
            await link.drain()

    async def _handle_batch(self, link: _Link, batch: list[Request]) -> None:
        """Handle ``batch`` in order, persist, then publish all the responses."""
        if not batch:
            return
        out: list[Outgoing] = []
        for request in batch:
            service: Service | None = None
            try:
                for service in self._services:
                    if service.accepts(request.topic):
                        out += await service.handle(request)
                        self.handled += 1
                        break
            except Exception:  # noqa: BLE001 - a service bug must not stop the others
                self.errors += 1
                name = service.name if service is not None else "?"
                _log.exception("%s failed on %s; request dropped", name, request.topic)
        for persist in self._persists:
            try:
                persist()
            except Exception:  # noqa: BLE001 - answer anyway; the next batch retries
                _log.exception("persisting service state failed")
        if out:
            link.publish(out)

    async def _ticker(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            for service in self._services:
                try:
                    out = await service.tick(time.time())
                except Exception:  # noqa: BLE001 - keep the other timers running
                    _log.exception("%s timer failed", service.name)
                    continue
                if out:
                    link.publish(out)
                    await link.drain()


# ------------------------------------------------------------------------------------------
# The host's own MQTT 3.1.1 / 5 session: just what a service needs, no per-message tasks.

_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 1, 2, 3, 4
_SUBSCRIBE, _SUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 8, 9, 12, 13, 14

# MQTT 5 property identifiers by value type (spec 2.2.2.2).
_PROP_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_PROP_U16 = frozenset({0x13, 0x21, 0x22, 0x23})
_PROP_U32 = frozenset({0x02, 0x11, 0x18, 0x27})
_PROP_VARINT = frozenset({0x0B})
_PROP_STRING = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_PROP_BINARY = frozenset({0x09, 0x16})
_PROP_USER = 0x26
_PROP_SERVER_KEEP_ALIVE = 0x13
_PROP_RECEIVE_MAXIMUM = 0x21
_PROP_MAXIMUM_PACKET_SIZE = 0x27
_PROP_REASON_STRING = 0x1F
_PROP_MESSAGE_EXPIRY = 0x02
_PROP_CONTENT_TYPE = 0x03

_DELIVER_TO_KEY = DELIVER_TO_PROPERTY.encode()
_DELIVER_TO_HEAD = bytes((_PROP_USER,)) + len(_DELIVER_TO_KEY).to_bytes(2, "big") + _DELIVER_TO_KEY


def _varint(value: int) -> bytes:
    if value < 0x80:  # noqa: PLR2004
        return bytes((value,))
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytearray, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:  # noqa: PLR2004
            return value, i
        shift += 7
        if shift > 21:  # noqa: PLR2004
            raise ValueError("malformed variable byte integer")


def _string(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def _read_string(buf: bytearray, i: int) -> tuple[bytes, int]:
    n = (buf[i] << 8) | buf[i + 1]
    return bytes(buf[i + 2 : i + 2 + n]), i + 2 + n


def _properties(buf: bytearray, i: int, end: int) -> list[tuple[int, Any]]:
    """Decode the MQTT 5 properties in ``buf[i:end]``."""
    out: list[tuple[int, Any]] = []
    while i < end:
        ident = buf[i]
        i += 1
        value: Any
        if ident == _PROP_USER:
            key, i = _read_string(buf, i)
            val, i = _read_string(buf, i)
            value = (key.decode(), val.decode())
        elif ident in _PROP_BYTE:
            value, i = buf[i], i + 1
        elif ident in _PROP_U16:
            value, i = (buf[i] << 8) | buf[i + 1], i + 2
        elif ident in _PROP_U32:
            value, i = int.from_bytes(buf[i : i + 4], "big"), i + 4
        elif ident in _PROP_VARINT:
            value, i = _read_varint(buf, i)
        elif ident in _PROP_STRING:
            raw, i = _read_string(buf, i)
            value = raw.decode()
        elif ident in _PROP_BINARY:
            value, i = _read_string(buf, i)
        else:
            raise ValueError(f"unknown MQTT property {ident:#x}")
        out.append((ident, value))
    if i != end:
        raise ValueError("malformed properties")
    return out


class _ProtocolError(Exception):
    """The broker sent something this client cannot accept."""


class _Session(asyncio.Protocol):
    """A lean MQTT client session over asyncio's TLS transport (the host's fast path).

    Reads are parsed in bulk (no per-packet recv), incoming QoS 1 requests are acknowledged
    at once (as paho does), and everything written during a batch goes out in one TLS write.
    Outgoing QoS 1 publishes get packet ids in order; at most the broker's Receive Maximum (and
    :data:`_MAX_IN_FLIGHT`) are unacknowledged, later ones wait in order.
    """

    def __init__(self, settings: ConnectSettings) -> None:
        self._settings = settings
        self._v5 = settings.mqtt5
        self._keepalive = settings.keepalive
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._requests: deque[Request] = deque()
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._settled: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._connack: asyncio.Future[None] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._in_flight: dict[int, str] = {}
        self._queued: deque[Outgoing] = deque()
        self._window = _MAX_IN_FLIGHT
        self._max_packet = 0
        self._last_pid = 0
        self._last_in = self._last_out = self._loop.time()
        self._ping: asyncio.TimerHandle | None = None
        self.rejected_publishes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - stream transport
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc if exc is not None else ConnectionResetError("connection closed")
        self._transport = None
        if self._ping is not None:
            self._ping.cancel()
        error = aiomqtt.MqttError(f"connection to the broker lost: {self._lost}")
        futures: list[asyncio.Future[Any]] = [self._connack, *self._subacks.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: whoever awaits sees it, nobody else warns
        self._wake()
        self._wake_drain()
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        self._last_in = self._loop.time()
        n = len(buf)
        pos = 0
        queued_before = len(self._queued)
        try:
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
                    if shift > 21:  # noqa: PLR2004
                        raise _ProtocolError("malformed remaining length")  # noqa: TRY301
                else:
                    break  # remaining length incomplete
                end = i + length
                if end > n:
                    break
                first = buf[pos]
                if first >> 4 == _PUBLISH:
                    self._on_publish(first, buf, i, end)
                else:
                    self._on_control(first >> 4, buf, i, end)
                pos = end
        except (_ProtocolError, ValueError, IndexError, UnicodeDecodeError) as exc:
            _log.error("service connection: malformed packet from the broker (%s)", exc)
            self._abort()
            return
        if pos:
            del buf[:pos]
        if self._requests:
            self._wake()
            if len(self._requests) > _MAX_PENDING and not self._reading_paused:
                assert self._transport is not None  # noqa: S101 - we are receiving
                self._transport.pause_reading()
                self._reading_paused = True
        if self._out:
            # PUBACKs (so the broker keeps sending while we work: mosquitto has only 100
            # messages in flight to us) and publishes the in-flight window let go. Responses
            # never wait here: the host writes them itself after persist().
            self._write()
        if len(self._queued) < queued_before:
            self._wake_drain()

    # -- packets in -----------------------------------------------------------------------

    def _on_publish(self, first: int, buf: bytearray, i: int, end: int) -> None:
        n = (buf[i] << 8) | buf[i + 1]
        topic = buf[i + 2 : i + 2 + n].decode()
        i += 2 + n
        qos = (first >> 1) & 3
        if qos == 1:
            self._out += b"\x40\x02"
            self._out += buf[i : i + 2]
            i += 2
        elif qos:
            raise _ProtocolError("QoS 2 publish on a QoS 1 subscription")
        client_id = None
        if self._v5:
            size, i = _read_varint(buf, i)
            if size:
                for ident, value in _properties(buf, i, i + size):
                    if ident == _PROP_USER and value[0] == CLIENT_ID_PROPERTY:
                        client_id = value[1]
                        break
                i += size
        self._requests.append(Request(topic, bytes(buf[i:end]), client_id))

    def _on_control(self, kind: int, buf: bytearray, i: int, end: int) -> None:
        if kind == _PUBACK:
            pid = (buf[i] << 8) | buf[i + 1]
            topic = self._in_flight.pop(pid, None)
            if end - i > 2 and buf[i + 2] >= 0x80:  # noqa: PLR2004
                self.rejected_publishes += 1
                _log.warning("publish to %s refused by the broker: reason %#x", topic, buf[i + 2])
            queued = self._queued
            while queued and len(self._in_flight) < self._window:
                self._send_publish(queued.popleft())
            if not self._in_flight and self._settled is not None and not self._settled.done():
                self._settled.set_result(None)
        elif kind == _PINGRESP:
            pass
        elif kind == _SUBACK:
            pid = (buf[i] << 8) | buf[i + 1]
            i += 2
            if self._v5:
                size, i = _read_varint(buf, i)
                i += size
            fut = self._subacks.pop(pid, None)
            if fut is not None and not fut.done():
                fut.set_result(bytes(buf[i:end]))
        elif kind == _CONNACK:
            self._on_connack(buf, i, end)
        elif kind == _DISCONNECT:
            reason = buf[i] if end > i else 0
            _log.warning("the broker closed the service connection: reason %#x", reason)
            self._abort()
        else:
            raise _ProtocolError(f"unexpected packet type {kind}")

    def _on_connack(self, buf: bytearray, i: int, end: int) -> None:
        code = buf[i + 1]
        if self._v5 and end > i + 2:
            size, j = _read_varint(buf, i + 2)
            for ident, value in _properties(buf, j, j + size):
                if ident == _PROP_RECEIVE_MAXIMUM:
                    self._window = min(self._window, value)
                elif ident == _PROP_SERVER_KEEP_ALIVE:
                    self._keepalive = value
                elif ident == _PROP_MAXIMUM_PACKET_SIZE:
                    self._max_packet = value
        if self._connack.done():
            return
        if code:
            self._connack.set_exception(aiomqtt.MqttError(f"connection refused: code {code:#x}"))
        else:
            self._connack.set_result(None)

    # -- packets out ----------------------------------------------------------------------

    def _send_publish(self, msg: Outgoing) -> None:
        topic = msg.topic.encode()
        payload = msg.payload
        props = b""
        if self._v5:
            if msg.deliver_to is None and msg.content_type is None and msg.message_expiry_s is None:
                props = b"\x00"
            else:
                body = b""
                if msg.message_expiry_s is not None:
                    body += bytes((_PROP_MESSAGE_EXPIRY,)) + msg.message_expiry_s.to_bytes(4, "big")
                if msg.content_type is not None:
                    body += bytes((_PROP_CONTENT_TYPE,)) + _string(msg.content_type)
                if msg.deliver_to is not None:
                    to = msg.deliver_to.encode()
                    body += _DELIVER_TO_HEAD + len(to).to_bytes(2, "big") + to
                props = _varint(len(body)) + body
        size = 2 + len(topic) + len(props) + len(payload)
        qos = msg.qos
        if qos:
            size += 2
        if self._max_packet and size + 5 > self._max_packet:
            self.rejected_publishes += 1
            _log.warning("publish to %s dropped: larger than the broker accepts", msg.topic)
            return
        out = self._out
        out += b"\x32" if qos else b"\x30"
        out += _varint(size)
        out += len(topic).to_bytes(2, "big")
        out += topic
        if qos:
            pid = self._last_pid
            while True:
                pid = pid + 1 if pid < 0xFFFF else 1  # noqa: PLR2004
                if pid not in self._in_flight:
                    break
            self._last_pid = pid
            self._in_flight[pid] = msg.topic
            out += pid.to_bytes(2, "big")
        out += props
        out += payload

    def publish(self, messages: Iterable[Outgoing]) -> None:
        """Queue ``messages`` in order and write what the in-flight window allows now."""
        if self._lost is not None:
            raise aiomqtt.MqttError(f"connection to the broker lost: {self._lost}")
        queued = self._queued
        for msg in messages:
            if msg.qos not in (0, 1):
                raise ValueError(f"QoS {msg.qos} is not supported")
            if msg.qos == 0 or (not queued and len(self._in_flight) < self._window):
                self._send_publish(msg)
            else:
                queued.append(msg)
        self._write()

    def _write(self) -> None:
        if self._out and self._transport is not None:
            data, self._out = self._out, bytearray()
            self._transport.write(data)
            self._last_out = self._loop.time()

    # -- the host's side ------------------------------------------------------------------

    async def open(self, filters: Sequence[str]) -> None:
        """Connect (TLS, CONNECT/CONNACK) and subscribe to ``filters`` at QoS 1."""
        s = self._settings
        try:
            async with asyncio.timeout(_TIMEOUT):
                await self._loop.create_connection(
                    lambda: self, s.host, s.port, ssl=s.tls, server_hostname=s.host
                )
                flags = 0x02  # clean start / clean session
                head = b"\x00\x04MQTT" + bytes((5 if self._v5 else 4, flags))
                head += self._keepalive.to_bytes(2, "big") + (b"\x00" if self._v5 else b"")
                body = head + _string(s.client_id)
                self._out += b"\x10" + _varint(len(body)) + body
                self._write()
                await self._connack
                self._schedule_ping()
                subacks = []
                for flt in filters:
                    self._last_pid = pid = self._last_pid % 0xFFFF + 1
                    options = 0x05 if self._v5 else 0x01  # QoS 1 (+ no local on MQTT 5)
                    body = pid.to_bytes(2, "big") + (b"\x00" if self._v5 else b"")
                    body += _string(flt) + bytes((options,))
                    self._out += b"\x82" + _varint(len(body)) + body
                    fut = self._subacks[pid] = self._loop.create_future()
                    subacks.append((flt, fut))
                self._write()
                for flt, fut in subacks:
                    codes = await fut
                    if any(code >= 0x80 for code in codes):  # noqa: PLR2004
                        _log.error("subscription to %s refused: %s", flt, codes.hex())
        except (OSError, TimeoutError) as exc:
            self._abort()
            raise aiomqtt.MqttError(f"service connection failed: {exc!r}") from None
        except BaseException:
            self._abort()
            raise

    async def next_batch(self, limit: int) -> list[Request]:
        """The next requests in arrival order (at most ``limit``); wait for one if none."""
        requests = self._requests
        while not requests:
            if self._lost is not None:
                raise aiomqtt.MqttError(f"connection to the broker lost: {self._lost}")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(requests) <= limit:
            batch = list(requests)
            requests.clear()
        else:
            batch = [requests.popleft() for _ in range(limit)]
        if self._reading_paused and len(requests) < _MAX_PENDING // 2 and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()
        return batch

    def pending(self) -> list[Request]:
        """Every request read and not handed out yet (without waiting)."""
        batch = list(self._requests)
        self._requests.clear()
        return batch

    async def drain(self) -> None:
        """Wait while the socket or the in-flight queue is too full to take more."""
        while self._writing_paused or len(self._queued) > _MAX_QUEUED:
            if self._lost is not None:
                raise aiomqtt.MqttError(f"connection to the broker lost: {self._lost}")
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._requests:
            await asyncio.sleep(0)  # let the loop read before the next batch

    async def close(self) -> None:
        """Wait (briefly) until the broker acknowledged every publish, DISCONNECT, close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FINISH_TIMEOUT):
                while (self._in_flight or self._queued) and self._lost is None:
                    self._settled = self._loop.create_future()
                    await self._settled
        transport = self._transport
        if transport is None or transport.is_closing():
            self._abort()
            return
        self._out += b"\xe0\x00"
        self._write()
        transport.close()
        try:
            async with asyncio.timeout(_TIMEOUT):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self._abort()

    # -- helpers --------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            return
        if self._lost is not None or (
            not self._writing_paused and len(self._queued) <= _MAX_QUEUED
        ):
            waiter.set_result(None)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _schedule_ping(self) -> None:
        if self._keepalive:
            self._ping = self._loop.call_later(self._keepalive / 4, self._check_alive)

    def _check_alive(self) -> None:
        now = self._loop.time()
        if now - self._last_in > 1.5 * self._keepalive:
            _log.error("the broker stopped answering; closing the service connection")
            self._abort()
            return
        if now - self._last_out >= self._keepalive / 2:
            self._out += b"\xc0\x00"
            self._write()
        self._schedule_ping()


class _AiomqttLink:
    """Serve through any ``aiomqtt.Client`` (one request per batch, one task per publish)."""

    def __init__(self, client: aiomqtt.Client, *, mqtt5: bool) -> None:
        self._client = client
        self._mqtt5 = mqtt5
        self._stack = contextlib.AsyncExitStack()
        self._tasks: set[asyncio.Task[None]] = set()
        self._messages: Any = None

    async def open(self, filters: Sequence[str]) -> None:
        client = await self._stack.enter_async_context(self._client)
        try:
            for flt in filters:
                if self._mqtt5:
                    await client.subscribe(flt, options=SubscribeOptions(qos=1, noLocal=True))
                else:
                    await client.subscribe(flt, qos=1)
        except BaseException:
            await self._stack.aclose()
            raise
        self._messages = client.messages.__aiter__()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()

    async def next_batch(self, limit: int) -> list[Request]:  # noqa: ARG002 - one at a time
        msg = await self._messages.__anext__()
        payload = msg.payload if isinstance(msg.payload, bytes) else b""
        return [Request(str(msg.topic), payload, _client_id(msg.properties))]

    def pending(self) -> list[Request]:
        return []  # aiomqtt keeps what it read; it is not handed out without waiting

    def publish(self, messages: Iterable[Outgoing]) -> None:
        # Each task's first step hands its message to paho synchronously, and tasks start in
        # the order they were created, so publishes leave in order.
        for msg in messages:
            task = asyncio.get_running_loop().create_task(self._send(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while len(self._tasks) > _MAX_IN_FLIGHT:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)

    async def _send(self, msg: Outgoing) -> None:
        props = None
        extras = (msg.deliver_to, msg.content_type, msg.message_expiry_s)
        if self._mqtt5 and any(x is not None for x in extras):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if msg.deliver_to is not None:
                props.UserProperty = [(DELIVER_TO_PROPERTY, msg.deliver_to)]
            if msg.content_type is not None:
                props.ContentType = msg.content_type
            if msg.message_expiry_s is not None:
                props.MessageExpiryInterval = msg.message_expiry_s
        try:
            await self._client.publish(msg.topic, msg.payload, qos=msg.qos, properties=props)
        except aiomqtt.MqttError as exc:
            _log.warning("publish to %s failed: %s", msg.topic, exc)


def _client_id(props: Properties | None) -> str | None:
    if props is None:
        return None
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        for key, value in getattr(props, "UserProperty", ()):
            if key == CLIENT_ID_PROPERTY:
                return str(value)
    return None
