"""Transport on the AWS Common Runtime MQTT 5 client (awsiotsdk ``mqtt5_client_builder``).

CRT invokes callbacks on its own event-loop threads. Every callback only appends its event to
a thread-safe deque shared by all CRT transports of the same asyncio loop (a
:class:`_LoopMailbox`); ONE ``loop.call_soon_threadsafe`` drain is scheduled per batch of
events (only when none is pending), and the drain runs them on that loop in arrival order. So
all state lives on the loop, and a burst of PUBACKs or inbound messages, across all the
connections of a simulated fleet, costs one cross-thread wake-up instead of one each.
:meth:`CrtTransport.start_publish` (the :class:`~device_sdk.transport.PipelinedTransport` fast
path; :meth:`CrtTransport.publish` is built on it) completes an asyncio future from that
drain; futures still pending when the connection ends fail with
:class:`~device_sdk.ConnectionLostError`, so a publish never hangs on a dead link.
Subscribe/unsubscribe futures are wrapped with ``asyncio.wrap_future`` and raced against the
end of the connection.

The CRT client would reconnect on its own. Reconnection is the
:class:`~device_sdk.DeviceClient`'s job (one written policy for both transports), so on the
first connection failure or disconnection this transport stops the CRT client, and CRT's
reconnect delay is set far beyond the time that takes. CRT's lifecycle events map onto the
same model as the paho transport: ``__aenter__`` succeeds on *connection success* and raises
on *connection failure*; *disconnection* resolves :meth:`CrtTransport.disconnected`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import weakref
from typing import TYPE_CHECKING, Any, Self

from awscrt import exceptions as crt_exceptions
from awscrt import io as crt_io
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from device_sdk._aio import LazyEvent
from device_sdk._exceptions import (
    AuthorizationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    DeviceSdkError,
    NegativeAckError,
    RequestTimeoutError,
)
from device_sdk._identity import FileCredentials, PemCredentials, Pkcs11Credentials
from device_sdk.transport._base import (
    ConnectionOptions,
    Message,
    MessageBuffer,
    QoS,
    TransportStatistics,
    UserProperties,
)
from device_sdk.transport._errors import AUTH_SUBACK_CODES, NON_RETRYABLE_CONNACK_CODES

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import AsyncIterator, Callable, Sequence
    from types import TracebackType

    from device_sdk._identity import DeviceIdentity, Endpoint

__all__ = ["CrtTransport", "map_crt_error"]

_FAILURE = 0x80
# CRT's own reconnect must never fire before we stop it after a failure/disconnection.
_CRT_RECONNECT_DELAY_MS = 3_600_000
_STOP_TIMEOUT_S = 10.0
_CERT_ERROR_MARKERS = ("CERT", "PKCS11", "PRIVATE_KEY", "X509", "PEM")
_TIMEOUT_ERRORS = frozenset({"AWS_ERROR_MQTT_TIMEOUT", "AWS_ERROR_MQTT5_OPERATION_TIMEOUT"})


def map_crt_error(
    exc: BaseException, *, connecting: bool, reason_code: int | None = None
) -> DeviceSdkError:
    """Translate an ``awscrt`` error into the SDK's exception tree.

    Args:
        exc: The awscrt exception (usually ``AwsCrtError``).
        connecting: Whether it happened while establishing the connection.
        reason_code: CONNACK or DISCONNECT reason code, when a packet was received.
    """
    if isinstance(exc, DeviceSdkError):
        return exc
    name = getattr(exc, "name", type(exc).__name__)
    text = f"{name}: {getattr(exc, 'message', exc)}"
    if reason_code is not None and connecting and reason_code in NON_RETRYABLE_CONNACK_CODES:
        return AuthorizationError(
            f"connection refused ({reason_code:#04x}): {text}", reason_code=reason_code
        )
    if any(marker in name for marker in _CERT_ERROR_MARKERS):
        return AuthorizationError(f"TLS credentials refused or unusable: {text}")
    if name in _TIMEOUT_ERRORS:
        return RequestTimeoutError(f"operation timed out: {text}")
    if connecting:
        return ConnectError(f"cannot connect: {text}", reason_code=reason_code)
    return ConnectionLostError(f"connection lost: {text}", reason_code=reason_code)


class _LoopMailbox:
    """Events from CRT threads for one asyncio loop, drained in batches on that loop.

    Under the GIL the flag cannot lose a wake-up: the drain clears it *before* emptying the
    deque, and a poster appends *before* reading it. A rare double schedule is harmless (the
    second drain finds nothing).
    """

    __slots__ = ("__weakref__", "_events", "_logger", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._scheduled = False
        self._logger = logging.getLogger(__name__)

    def post(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Queue ``fn(*args)`` for the loop (any thread); schedule a drain if none is pending."""
        self._events.append((fn, args))
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._events.clear()

    def _drain(self) -> None:
        self._scheduled = False
        events = self._events
        while events:
            fn, args = events.popleft()
            try:
                fn(*args)
            except Exception:  # one bad event must not starve the others
                self._logger.exception("CRT event handler failed")


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopMailbox] = (
    weakref.WeakKeyDictionary()
)


def _mailbox(loop: asyncio.AbstractEventLoop) -> _LoopMailbox:
    box = _MAILBOXES.get(loop)
    if box is None:
        box = _MAILBOXES[loop] = _LoopMailbox(loop)
    return box


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class CrtTransport:
    """MQTT 5 over mutual TLS with awscrt; see :class:`~device_sdk.transport.Transport`.

    Args:
        identity: Certificate and key (files, PEM or PKCS#11).
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
        self._identity = identity
        self._endpoint = endpoint
        self._options = options or ConnectionOptions()
        self._logger = logger or logging.getLogger(__name__)
        self._client_id = self._options.client_id or identity.client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt5.Client | None = None
        self._lock = asyncio.Lock()
        self._connected = LazyEvent()
        self._stopped = LazyEvent()
        self._stopped.set()
        self._connect_fut: asyncio.Future[None] | None = None
        self._down: asyncio.Future[DeviceSdkError | None] | None = None
        self._last_cause: DeviceSdkError | None = None
        self._closing = False
        # Publishes started and not yet completed (their futures), failed when the link ends.
        self._pending: set[asyncio.Future[None]] = set()
        self._mailbox: _LoopMailbox | None = None
        self._buffer = MessageBuffer(self._options.receive_buffer)
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

    # -- building (worker thread) -------------------------------------------------------

    def _build(self) -> mqtt5.Client:
        opts = self._options
        connect = mqtt5.ConnectPacket(
            keep_alive_interval_sec=opts.keepalive_s,
            client_id=self._client_id,
            session_expiry_interval_sec=opts.session_expiry_s or None,
        )
        if opts.will is not None:
            connect.will = mqtt5.PublishPacket(
                topic=opts.will.topic,
                payload=opts.will.payload,
                qos=mqtt5.QoS(opts.will.qos),
                retain=opts.will.retain,
            )
            connect.will_delay_interval_sec = opts.will.delay_s
        kwargs: dict[str, Any] = {
            "endpoint": self._endpoint.host,
            "port": self._endpoint.port,
            "connect_options": connect,
            "session_behavior": (
                mqtt5.ClientSessionBehaviorType.CLEAN
                if opts.clean_start
                else mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
            ),
            "offline_queue_behavior": mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            "min_reconnect_delay_ms": _CRT_RECONNECT_DELAY_MS,
            "max_reconnect_delay_ms": _CRT_RECONNECT_DELAY_MS,
            "ping_timeout_ms": int(opts.ping_timeout_s * 1000),
            "connack_timeout_ms": int(opts.connect_timeout_s * 1000),
            "ack_timeout_sec": max(1, int(opts.ack_timeout_s)),
            "receive_maximum": opts.max_inflight,
            "enable_metrics_collection": False,  # no hidden telemetry in the CONNECT username
            "on_publish_received": self._crt_publish_received,
            "on_lifecycle_connection_success": self._crt_success,
            "on_lifecycle_connection_failure": self._crt_failure,
            "on_lifecycle_disconnection": self._crt_disconnection,
            "on_lifecycle_stopped": self._crt_stopped,
        }
        creds = self._identity.credentials
        ca_file = self._endpoint.ca_file
        if ca_file is None and isinstance(creds, FileCredentials | Pkcs11Credentials):
            ca_file = getattr(creds, "ca_file", None)
        if ca_file is not None:
            kwargs["ca_filepath"] = str(ca_file)
        elif isinstance(creds, PemCredentials) and creds.ca_pem is not None:
            kwargs["ca_bytes"] = creds.ca_pem
        try:
            if isinstance(creds, FileCredentials):
                return mqtt5_client_builder.mtls_from_path(
                    cert_filepath=str(creds.cert_file),
                    pri_key_filepath=str(creds.key_file),
                    **kwargs,
                )
            if isinstance(creds, PemCredentials):
                return mqtt5_client_builder.mtls_from_bytes(
                    cert_bytes=creds.cert_pem, pri_key_bytes=creds.key_pem, **kwargs
                )
            return mqtt5_client_builder.mtls_with_pkcs11(
                pkcs11_lib=crt_io.Pkcs11Lib(file=str(creds.lib)),
                user_pin=creds.pin,
                slot_id=creds.slot,
                token_label=creds.token_label,
                private_key_label=creds.key_label,
                cert_filepath=str(creds.cert_file),
                **kwargs,
            )
        except (crt_exceptions.AwsCrtError, OSError, RuntimeError, ValueError, TypeError) as exc:
            msg = f"cannot build the TLS context of {self._identity.thing_name!r}: {exc}"
            raise AuthorizationError(msg) from exc

    # -- CRT threads -> loop ------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        box = self._mailbox
        if box is not None:
            box.post(fn, args)

    def _crt_publish_received(self, data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        props: UserProperties = tuple((u.name, u.value) for u in (p.user_properties or ()))
        payload = p.payload if isinstance(p.payload, bytes) else bytes(p.payload or b"")
        self._post(self._on_message, Message(p.topic, payload, int(p.qos), bool(p.retain), props))

    def _crt_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._post(self._on_success, data)

    def _crt_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        self._post(self._on_failure, data)

    def _crt_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._post(self._on_disconnection, data)

    def _crt_stopped(self, _data: mqtt5.LifecycleStoppedData) -> None:
        self._post(self._stopped.set)

    # -- loop-side handlers -------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if not self._buffer.put_nowait(message):
            self._logger.warning(
                "inbound buffer full (%d): dropped message on %s",
                self._buffer.maxsize,
                message.topic,
            )

    def _on_success(self, _data: mqtt5.LifecycleConnectSuccessData) -> None:
        fut = self._connect_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        code = None
        if data.connack_packet is not None and data.connack_packet.reason_code is not None:
            code = int(data.connack_packet.reason_code)
        err = map_crt_error(data.exception, connecting=True, reason_code=code)
        self._logger.debug("connection attempt failed: %s", err)
        self._stop_client(None)
        fut = self._connect_fut
        if fut is not None and not fut.done():
            fut.set_exception(err)

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        cause: DeviceSdkError | None = None
        if not self._closing:
            code = None
            if (
                data.disconnect_packet is not None
                and data.disconnect_packet.reason_code is not None
            ):
                code = int(data.disconnect_packet.reason_code)
            cause = map_crt_error(data.exception, connecting=False, reason_code=code)
            if not isinstance(cause, ConnectionLostError):
                cause = ConnectionLostError(str(cause), reason_code=code)
            self._logger.info("connection lost: %s", cause)
            self._stop_client(None)
        self._link_down(cause)

    def _stop_client(self, packet: mqtt5.DisconnectPacket | None) -> None:
        if self._client is not None and not self._stopped.is_set():
            self._client.stop(packet)

    def _link_down(self, cause: DeviceSdkError | None) -> None:
        if self._down is None or self._down.done():
            return
        self._connected.clear()
        self._counts["disconnects"] += 1
        self._last_cause = cause
        self._down.set_result(cause)
        self._buffer.close(cause)
        pending, self._pending = self._pending, set()
        code = cause.reason_code if isinstance(cause, ConnectionLostError) else None
        for fut in pending:
            if not fut.done():
                fut.set_exception(
                    ConnectionLostError(
                        f"connection ended before the PUBACK: {cause or 'closed'}",
                        reason_code=code,
                    )
                )

    # -- Transport API ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the CRT client and wait for CONNACK (or the first failure)."""
        if self._lock.locked():
            raise RuntimeError("CrtTransport is reusable but not reentrant: already connected")
        await self._lock.acquire()
        try:
            await self._connect()
        except BaseException:
            self._counts["connect_failures"] += 1
            self._lock.release()
            raise
        return self

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._mailbox = _mailbox(loop)
        if self._client is None:
            self._client = await asyncio.to_thread(self._build)
        client: mqtt5.Client = self._client
        await self._wait_stopped()
        self._closing = False
        self._connect_fut = loop.create_future()
        # Created before start(): a disconnection right after CONNACK must not be lost.
        down: asyncio.Future[DeviceSdkError | None] = loop.create_future()
        self._down = down
        self._buffer.open()
        self._stopped.clear()
        client.start()
        try:
            await self._await_connack(self._connect_fut, down)
        except BaseException:
            self._stop_client(None)
            await self._wait_stopped()
            self._down = None
            self._connected.clear()
            raise
        self._connected.set()
        self._counts["connects"] += 1
        self._logger.debug("connected to %s:%d", self._endpoint.host, self._endpoint.port)

    async def _await_connack(
        self, connack: asyncio.Future[None], down: asyncio.Future[DeviceSdkError | None]
    ) -> None:
        try:
            async with asyncio.timeout(self._options.connect_timeout_s):
                await asyncio.shield(connack)
        except TimeoutError as exc:
            raise ConnectError(
                f"no CONNACK within {self._options.connect_timeout_s}s from "
                f"{self._endpoint.host}:{self._endpoint.port}"
            ) from exc
        if down.done():
            raise ConnectError(f"connection dropped right after CONNACK: {down.result()}")

    async def _wait_stopped(self) -> None:
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await self._stopped.wait()
        except TimeoutError:
            self._logger.warning("CRT client did not report 'stopped' within %ss", _STOP_TIMEOUT_S)
            self._stopped.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the CRT client; with an exception, disconnect with the Will (reason 0x04)."""
        if self._down is None:
            return
        try:
            self._closing = True
            if exc_type is not None and self._options.will is not None:
                reason = mqtt5.DisconnectReasonCode.DISCONNECT_WITH_WILL_MESSAGE
                self._stop_client(mqtt5.DisconnectPacket(reason_code=reason))
            else:
                # An explicit DISCONNECT (reason 0): stop(None) would just close the socket,
                # and the broker would publish the Will.
                self._stop_client(mqtt5.DisconnectPacket())
            await self._wait_stopped()
            self._link_down(None)
        finally:
            self._down = None
            if self._lock.locked():
                self._lock.release()

    def _require(self) -> tuple[mqtt5.Client, asyncio.Future[DeviceSdkError | None]]:
        if self._client is None or self._down is None or self._down.done():
            raise ClosedError("transport is not connected") from self._last_cause
        return self._client, self._down

    async def _await_op(
        self, cf: concurrent.futures.Future[Any], down: asyncio.Future[DeviceSdkError | None]
    ) -> Any:
        fut = asyncio.wrap_future(cf)
        fut.add_done_callback(_consume)
        done, _ = await asyncio.wait({fut, down}, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            exc = fut.exception()
            if exc is not None:
                raise map_crt_error(exc, connecting=False) from exc
            return fut.result()
        cause = down.result()
        raise cause or ConnectionLostError("connection closed")

    def start_publish(
        self, topic: str, payload: bytes, qos: QoS, *, user_properties: UserProperties = ()
    ) -> asyncio.Future[None]:
        """Queue one PUBLISH without awaiting anything (call on the event-loop thread).

        See :class:`~device_sdk.transport.PipelinedTransport`. The future resolves on the
        PUBACK (QoS 1) or once CRT wrote the packet (QoS 0), fails with
        :class:`~device_sdk.NegativeAckError` on a failure reason code and with
        :class:`~device_sdk.ConnectionLostError` when the connection ends first. Cancelling
        it makes the PUBACK be ignored.

        Raises:
            ConnectionLostError: Not connected.
        """
        if self._client is None or self._down is None or self._down.done():
            raise ConnectionLostError("transport is not connected") from self._last_cause
        return self._start(self._client, topic, payload, qos, False, user_properties)  # noqa: FBT003

    def _start(
        self,
        client: mqtt5.Client,
        topic: str,
        payload: bytes,
        qos: QoS,
        retain: bool,
        user_properties: UserProperties,
    ) -> asyncio.Future[None]:
        packet = mqtt5.PublishPacket(
            topic=topic,
            payload=payload,
            qos=mqtt5.QoS(qos),
            retain=retain,
            user_properties=[mqtt5.UserProperty(k, v) for k, v in user_properties] or None,
        )
        loop = self._loop
        if loop is None:  # never: _connect sets it before a connection exists
            raise ConnectionLostError("transport is not connected")
        fut: asyncio.Future[None] = loop.create_future()
        cf = client.publish(packet)
        self._counts["published"] += 1
        self._pending.add(fut)
        cf.add_done_callback(functools.partial(self._crt_publish_done, fut, qos, topic))
        return fut

    def _crt_publish_done(
        self,
        fut: asyncio.Future[None],
        qos: QoS,
        topic: str,
        cf: concurrent.futures.Future[mqtt5.PublishCompletionData],
    ) -> None:
        self._post(self._publish_done, fut, qos, topic, cf)

    def _publish_done(
        self,
        fut: asyncio.Future[None],
        qos: QoS,
        topic: str,
        cf: concurrent.futures.Future[mqtt5.PublishCompletionData],
    ) -> None:
        self._pending.discard(fut)
        if fut.done():
            return  # cancelled by its owner, or failed when the connection ended
        exc = cf.exception()
        if exc is not None:
            fut.set_exception(map_crt_error(exc, connecting=False))
            return
        if qos == 0:
            fut.set_result(None)
            return
        puback = cf.result().puback
        rc = puback.reason_code if puback is not None else None
        code = int(rc) if rc is not None else _FAILURE
        if code >= _FAILURE:
            self._counts["nacked"] += 1
            fut.set_exception(
                NegativeAckError(
                    f"PUBACK {code:#04x} for {topic!r}",
                    packet="PUBACK",
                    reason_code=code,
                    reason_string=puback.reason_string if puback is not None else None,
                )
            )
            return
        self._counts["acked"] += 1
        fut.set_result(None)

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
        client, _ = self._require()
        await self._start(client, topic, payload, qos, retain, user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """Subscribe and return the granted QoS per filter.

        Raises:
            AuthorizationError: A filter was refused with 0x80 or 0x87.
            NegativeAckError: A filter was refused with another failure code.
        """
        client, down = self._require()
        packet = mqtt5.SubscribePacket([mqtt5.Subscription(f, mqtt5.QoS(q)) for f, q in filters])
        suback = await self._await_op(client.subscribe(packet), down)
        codes = [int(c) if c is not None else _FAILURE for c in suback.reason_codes or ()]
        for (flt, _), code in zip(filters, codes, strict=False):
            if code in AUTH_SUBACK_CODES:
                raise AuthorizationError(
                    f"subscription to {flt!r} refused ({code:#04x})", reason_code=code
                )
            if code >= _FAILURE:
                raise NegativeAckError(
                    f"subscription to {flt!r} refused ({code:#04x})",
                    packet="SUBACK",
                    reason_code=code,
                    reason_string=suback.reason_string,
                )
        return codes

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe from ``filters``."""
        client, down = self._require()
        await self._await_op(client.unsubscribe(mqtt5.UnsubscribePacket(list(filters))), down)

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
