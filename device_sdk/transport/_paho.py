"""Pure-Python transport on aiomqtt 2.x (paho-mqtt 2.x underneath), MQTT 5 over mutual TLS.

For platforms without an awscrt wheel (armv7, musl). aiomqtt 2.x drops PUBACK reason codes,
so :class:`_AiomqttClient` is a deliberately narrow subclass that (1) reports each PUBACK's
reason code and (2) publishes through paho's public ``publish`` to learn the packet id. Both
touch aiomqtt internals (``_on_publish``, ``_client``); ``aiomqtt>=2.5,<3`` is pinned and
``tests/sdk/test_transport_mapping.py`` fails if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Self

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sdk._aio import LazyEvent
from device_sdk._exceptions import (
    AuthorizationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    DeviceSdkError,
    NegativeAckError,
    ProtocolError,
    RequestTimeoutError,
)
from device_sdk.transport._base import (
    ConnectionOptions,
    Message,
    MessageBuffer,
    QoS,
    TransportStatistics,
    UserProperties,
)
from device_sdk.transport._errors import (
    AUTH_SUBACK_CODES,
    NON_RETRYABLE_CONNACK_CODES,
    is_certificate_problem,
)
from device_sdk.transport._tls import TrackingSSLContext, ssl_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from types import TracebackType

    from device_sdk._identity import DeviceIdentity, Endpoint

__all__ = ["PahoTransport", "map_paho_error"]

_DISCONNECT_WITH_WILL = 0x04
_FAILURE = 0x80
_TIMED_OUT = "Operation timed out"


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call] # paho leaves it untyped


def _code(rc: object) -> int | None:
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    if isinstance(rc, int):
        return rc
    return None


def map_paho_error(exc: BaseException, *, connecting: bool) -> DeviceSdkError:
    """Translate an aiomqtt / paho / ssl / OS error into the SDK's exception tree.

    Args:
        exc: The lower-layer exception.
        connecting: Whether it happened while establishing the connection (``ConnectError``)
            or on an established one (``ConnectionLostError``).
    """
    if isinstance(exc, DeviceSdkError):
        return exc
    if isinstance(exc, aiomqtt.MqttReentrantError):
        return ProtocolError(f"aiomqtt client entered twice: {exc}")
    if isinstance(exc, MqttConnectError):
        code = _code(exc.rc)
        if code in NON_RETRYABLE_CONNACK_CODES:
            return AuthorizationError(f"connection refused: {exc}", reason_code=code)
        return ConnectError(f"connection refused: {exc}", reason_code=code)
    # aiomqtt raises MqttError(str(os_error)) from None: the original stays in __context__.
    root: BaseException = exc
    while isinstance(root, aiomqtt.MqttError) and (root.__cause__ or root.__context__):
        nxt = root.__cause__ or root.__context__
        if nxt is None:  # pragma: no cover - loop condition guarantees it
            break
        root = nxt
    if isinstance(root, ssl.SSLError | ssl.CertificateError) and is_certificate_problem(root):
        return AuthorizationError(f"TLS refused the certificate: {root}")
    if isinstance(exc, aiomqtt.MqttCodeError):
        code = _code(exc.rc)
        msg = f"MQTT error: {exc}"
        if connecting:
            return ConnectError(msg, reason_code=code)
        return ConnectionLostError(msg, reason_code=code)
    text = str(root)
    if connecting:
        if text == _TIMED_OUT or isinstance(root, TimeoutError):
            return ConnectError(f"connection attempt timed out: {text}")
        return ConnectError(f"cannot connect: {text or type(root).__name__}")
    return ConnectionLostError(f"connection lost: {text or type(root).__name__}")


class _AiomqttClient(aiomqtt.Client):
    """aiomqtt client that surfaces PUBACK reason codes and packet ids (see module doc)."""

    def __init__(self, *args: Any, on_puback: Callable[[int, int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_puback = on_puback

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._on_puback(mid, int(reason_code.value))
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None
    ) -> int:
        """Queue a PUBLISH in paho and return its packet id."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionLostError(f"cannot publish: {paho.error_string(info.rc)}")
        return int(info.mid)

    def disconnect_with_will(self) -> None:
        """Send DISCONNECT with reason 0x04 so the broker publishes the Will."""
        self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))


def _to_message(m: aiomqtt.Message) -> Message:
    props: UserProperties = ()
    if m.properties is not None and hasattr(m.properties, "UserProperty"):
        props = tuple((str(k), str(v)) for k, v in m.properties.UserProperty)
    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
    return Message(m.topic.value, payload, int(m.qos), bool(m.retain), props)


class PahoTransport:
    """MQTT 5 over mutual TLS with aiomqtt 2.x; see :class:`~device_sdk.transport.Transport`.

    Args:
        identity: Certificate and key (files or PEM; PKCS#11 is not supported here).
        endpoint: Broker host, port and CA.
        options: Connection options.
        logger: Logger for this transport (defaults to this module's logger).
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        endpoint: Endpoint,
        options: ConnectionOptions | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        from device_sdk._identity import Pkcs11Credentials  # noqa: PLC0415 - avoid cycle

        if isinstance(identity.credentials, Pkcs11Credentials):
            raise TypeError("PKCS#11 identities need the 'crt' transport (awscrt)")
        self._identity = identity
        self._endpoint = endpoint
        self._options = options or ConnectionOptions()
        self._logger = logger or logging.getLogger(__name__)
        self._client_id = self._options.client_id or identity.client_id
        self._ssl: TrackingSSLContext | None = None
        self._ssl_lock = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._client: _AiomqttClient | None = None
        self._connected = LazyEvent()
        self._down: asyncio.Future[DeviceSdkError | None] | None = None
        self._last_cause: DeviceSdkError | None = None
        # QoS 1 packet id -> (future, topic), until the PUBACK or the end of the connection
        self._pending: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._buffer = MessageBuffer(self._options.receive_buffer)
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self._counts = dict.fromkeys(
            ("connects", "connect_failures", "disconnects", "published", "acked", "nacked"), 0
        )

    @property
    def client_id(self) -> str:
        """The MQTT client id."""
        return self._client_id

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected."""
        return self._connected

    async def _tls(self) -> TrackingSSLContext:
        async with self._ssl_lock:
            if self._ssl is None:
                self._ssl = await ssl_context(self._identity, self._endpoint)
            return self._ssl

    def _new_client(self, tls: ssl.SSLContext) -> _AiomqttClient:
        opts = self._options
        v5 = opts.mqtt_version == 5  # noqa: PLR2004
        props: Properties | None = _properties(PacketTypes.CONNECT) if v5 else None
        if props is not None and opts.session_expiry_s:
            props.SessionExpiryInterval = opts.session_expiry_s
        will = None
        if opts.will is not None:
            will_props = _properties(PacketTypes.WILLMESSAGE) if v5 else None
            if will_props is not None and opts.will.delay_s is not None:
                will_props.WillDelayInterval = opts.will.delay_s
            will = aiomqtt.Will(
                opts.will.topic, opts.will.payload, opts.will.qos, opts.will.retain, will_props
            )
        session: dict[str, Any] = (
            {"clean_start": opts.clean_start} if v5 else {"clean_session": opts.clean_start}
        )
        return _AiomqttClient(
            self._endpoint.host,
            self._endpoint.port,
            on_puback=self._on_puback,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            logger=self._logger,
            will=will,
            timeout=opts.connect_timeout_s,
            keepalive=opts.keepalive_s,
            properties=props,
            tls_context=tls,
            max_inflight_messages=opts.max_inflight,
            # paho leaves Nagle on; with delayed ACKs that adds ~40 ms per QoS 1 exchange.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            **session,
        )

    async def __aenter__(self) -> Self:
        """Connect (TLS handshake and CONNACK)."""
        if self._lock.locked():
            raise RuntimeError("PahoTransport is reusable but not reentrant: already connected")
        await self._lock.acquire()
        try:
            tls = await self._tls()
            client = self._new_client(tls)
            try:
                await client.__aenter__()
            except (aiomqtt.MqttError, OSError) as exc:
                tls.close_failed_socket()
                raise map_paho_error(exc, connecting=True) from exc
            except BaseException:
                tls.close_failed_socket()
                raise
            tls.forget_socket()
        except BaseException:
            self._counts["connect_failures"] += 1
            self._lock.release()
            raise
        self._client = client
        self._closing = False
        self._down = asyncio.get_running_loop().create_future()
        self._buffer.open()
        self._connected.set()
        self._counts["connects"] += 1
        self._pump = asyncio.get_running_loop().create_task(
            self._pump_messages(client), name=f"device_sdk[{self._client_id}].paho_receive"
        )
        self._logger.debug("connected to %s:%d", self._endpoint.host, self._endpoint.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; with an exception, disconnect with the Will (reason 0x04)."""
        client, pump = self._client, self._pump
        if client is None:
            return
        try:
            self._closing = True
            if (
                pump is not None
                and not pump.done()
                and exc_type is not None
                and self._options.will is not None
            ):
                client.disconnect_with_will()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump), timeout=5)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            self._link_down(None)
        finally:
            self._client = None
            self._pump = None
            if self._lock.locked():
                self._lock.release()

    async def _pump_messages(self, client: _AiomqttClient) -> None:
        cause: DeviceSdkError | None = None
        try:
            async for m in client.messages:
                if not self._buffer.put_nowait(_to_message(m)):
                    self._logger.warning(
                        "inbound buffer full (%d): dropped message on %s",
                        self._buffer.maxsize,
                        m.topic.value,
                    )
        except aiomqtt.MqttError as exc:
            if not self._closing:
                cause = map_paho_error(exc, connecting=False)
                self._logger.info("connection lost: %s", cause)
        self._link_down(cause)

    def _link_down(self, cause: DeviceSdkError | None) -> None:
        if self._down is None or self._down.done():
            return
        self._connected.clear()
        self._counts["disconnects"] += 1
        self._last_cause = cause
        self._down.set_result(cause)
        self._buffer.close(cause)
        pending, self._pending = self._pending, {}
        code = cause.reason_code if isinstance(cause, ConnectionLostError) else None
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(
                    ConnectionLostError(
                        f"connection ended before the PUBACK: {cause or 'closed'}",
                        reason_code=code,
                    )
                )

    def _on_puback(self, mid: int, code: int) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        fut, topic = entry
        if fut.done():
            return  # cancelled by its owner: the PUBACK is ignored
        if code >= _FAILURE:
            self._counts["nacked"] += 1
            fut.set_exception(
                NegativeAckError(
                    f"PUBACK {code:#04x} for {topic!r}", packet="PUBACK", reason_code=code
                )
            )
        else:
            self._counts["acked"] += 1
            fut.set_result(None)

    def _require(self) -> _AiomqttClient:
        if self._client is None or not self._connected.is_set():
            raise ClosedError("transport is not connected") from self._last_cause
        return self._client

    def start_publish(
        self, topic: str, payload: bytes, qos: QoS, *, user_properties: UserProperties = ()
    ) -> asyncio.Future[None]:
        """Queue one PUBLISH without awaiting anything (call on the event-loop thread).

        See :class:`~device_sdk.transport.PipelinedTransport`: the future resolves on the
        PUBACK (QoS 1) or at once (QoS 0, handed to paho), fails with
        :class:`~device_sdk.NegativeAckError` on a failure reason code and with
        :class:`~device_sdk.ConnectionLostError` when the connection ends first; cancelling
        it makes the PUBACK be ignored.

        Raises:
            ConnectionLostError: Not connected.
        """
        if self._client is None or not self._connected.is_set():
            raise ConnectionLostError("transport is not connected") from self._last_cause
        return self._start(self._client, topic, payload, qos, False, user_properties)  # noqa: FBT003

    def _start(
        self,
        client: _AiomqttClient,
        topic: str,
        payload: bytes,
        qos: QoS,
        retain: bool,
        user_properties: UserProperties,
    ) -> asyncio.Future[None]:
        props = None
        if user_properties and self._options.mqtt_version == 5:  # noqa: PLR2004
            props = _properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user_properties)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mid = client.publish_nowait(topic, payload, qos, retain, props)
        self._counts["published"] += 1
        if qos == 0:
            fut.set_result(None)
        else:
            self._pending[mid] = (fut, topic)
        return fut

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: UserProperties = (),
    ) -> None:
        """Publish; for QoS 1 wait for the PUBACK.

        Raises:
            NegativeAckError: The PUBACK carried a failure reason code (e.g. 0x87).
            ConnectionLostError: The connection dropped before the PUBACK arrived.
            ClosedError: Not connected.
        """
        client = self._require()
        await self._start(client, topic, payload, qos, retain, user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """Subscribe and return the granted QoS per filter.

        Raises:
            AuthorizationError: A filter was refused with 0x80 or 0x87.
            NegativeAckError: A filter was refused with another failure code.
            RequestTimeoutError: No SUBACK within ``ack_timeout_s``.
        """
        client = self._require()
        topics: list[tuple[str, Any]] = (
            [(f, SubscribeOptions(qos=q)) for f, q in filters]
            if self._options.mqtt_version == 5  # noqa: PLR2004
            else [(f, q) for f, q in filters]  # paho wants plain QoS on 3.1.1
        )
        try:
            codes = await client.subscribe(topics, timeout=self._options.ack_timeout_s)
        except aiomqtt.MqttError as exc:
            raise self._op_error(exc, "SUBSCRIBE") from exc
        result = [_code(c) or 0 for c in codes]
        for (flt, _), code in zip(filters, result, strict=False):
            if code in AUTH_SUBACK_CODES:
                raise AuthorizationError(
                    f"subscription to {flt!r} refused ({code:#04x})", reason_code=code
                )
            if code >= _FAILURE:
                raise NegativeAckError(
                    f"subscription to {flt!r} refused ({code:#04x})",
                    packet="SUBACK",
                    reason_code=code,
                )
        return result

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe from ``filters``."""
        client = self._require()
        try:
            await client.unsubscribe(list(filters), timeout=self._options.ack_timeout_s)
        except aiomqtt.MqttError as exc:
            raise self._op_error(exc, "UNSUBSCRIBE") from exc

    def _op_error(self, exc: aiomqtt.MqttError, what: str) -> DeviceSdkError:
        if str(exc) == _TIMED_OUT:
            return RequestTimeoutError(
                f"no ack for {what} within {self._options.ack_timeout_s}s",
                timeout=self._options.ack_timeout_s,
            )
        return map_paho_error(exc, connecting=False)

    def messages(self) -> AsyncIterator[Message]:
        """Inbound messages; ends when the connection closes (raises if it was lost)."""
        return aiter(self._buffer)

    async def disconnected(self) -> DeviceSdkError | None:
        """Wait for the end of the current connection and return its cause."""
        if self._down is None:
            return self._last_cause
        return await asyncio.shield(self._down)

    def statistics(self) -> TransportStatistics:
        """Counter snapshot."""
        return TransportStatistics(
            **self._counts,
            received=self._buffer.received,
            dropped=self._buffer.dropped,
            buffered=len(self._buffer),
            buffer_size=self._buffer.maxsize,
            in_flight=len(self._pending),
        )
