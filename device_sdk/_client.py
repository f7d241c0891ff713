"""``DeviceClient``: one device's MQTT session with a durable outbox and reconnection.

``async with DeviceClient(identity, endpoint) as device:`` opens the outbox, connects, and
runs its background work in one ``asyncio.TaskGroup``:

* ``device_sdk[<thing>].connection_loop`` — connect, then per connection: resubscribe once per
  filter, run the receive loop and the sender, wait for the link to drop (or the client to
  stop), requeue what was in flight, back off with full jitter
  (:class:`~device_sdk.ReconnectPolicy`), repeat; stops on
  :class:`~device_sdk.AuthorizationError`.
* ``device_sdk[<thing>].receive_loop`` — routes inbound messages to subscriptions.
* ``device_sdk[<thing>].link_watch`` — awaits the transport's ``disconnected()``.
* the sender — drains the outbox in order with a bounded in-flight window, respecting the
  100 publishes/s limit; deletes each message on its PUBACK. With a
  :class:`~device_sdk.transport.PipelinedTransport` (CRT, native) it is the task-less,
  callback-driven ``_PipelinedSender`` (``start_publish`` futures, one ack-timeout timer per
  client); otherwise the ``device_sdk[<thing>].sender`` task awaits ``publish`` in one task
  per message.

So an idle connected client holds three tasks (four without ``start_publish``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import TYPE_CHECKING, Any, Literal, Self, cast, overload

from device_sdk._aio import LazyEvent
from device_sdk._backoff import ReconnectPolicy
from device_sdk._clock import Clock, SystemClock
from device_sdk._exceptions import (
    AuthorizationError,
    ClosedError,
    ConnectionLostError,
    DeviceSdkError,
    NegativeAckError,
    RequestTimeoutError,
)
from device_sdk._limits import IOT_CORE_LIMITS, Limits
from device_sdk._metrics import ClientMetrics, LatencyHistogram
from device_sdk._outbox import Outbox, OutboxConfig, OutboxStatistics, new_msg_id
from device_sdk._subscription import Subscription, topic_matches
from device_sdk.transport._base import (
    ConnectionOptions,
    CorkableTransport,
    Message,
    PipelinedTransport,
    QoS,
    Transport,
    TransportStatistics,
    UserProperties,
)
from device_sdk.transport._factory import TransportKind, create_transport

if TYPE_CHECKING:
    from types import TracebackType

    from device_sdk._identity import DeviceIdentity, Endpoint
    from device_sdk._outbox import OutboxRecord

__all__ = ["ClientState", "DeviceClient", "Payload"]

Payload = bytes | str | dict[str, Any]
"""``bytes`` are sent as is, ``str`` as UTF-8, ``dict`` as compact JSON."""

_COUNTERS = (
    "published",
    "published_qos0",
    "acked",
    "nacked",
    "ack_timeouts",
    "received",
    "dropped_inbound",
    "connects",
    "connect_failures",
    "disconnects",
)


class ClientState(enum.StrEnum):
    """Lifecycle of a :class:`DeviceClient`."""

    CREATED = "created"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"
    """Stopped retrying (authorization failure or ``max_attempts``); see ``failure``."""


class _WillExit(Exception):  # noqa: N818 - internal control flow, never escapes
    """Raised inside the transport block to make it disconnect with the Will."""


def encode_payload(
    payload: Payload, *, msg_id: str | None = None, field: str | None = None
) -> bytes:
    """Encode a payload; with ``field``, a dict payload gets ``msg_id`` under that key."""
    if isinstance(payload, bytes):
        if field is not None:
            raise TypeError("msg_id_field needs a dict payload")
        return payload
    if isinstance(payload, str):
        if field is not None:
            raise TypeError("msg_id_field needs a dict payload")
        return payload.encode()
    if isinstance(payload, dict):
        if field is not None:
            payload = {**payload, field: msg_id}
        return json.dumps(payload, separators=(",", ":")).encode()
    raise TypeError(f"payload must be bytes, str or dict, not {type(payload).__name__}")


class DeviceClient:
    """An AWS IoT Core device connection with a durable QoS 1 outbox.

    Reusable (``async with`` it again after it closed) but not reentrant.

    Args:
        identity: The device's certificate, key and thing name.
        endpoint: Broker host, port and CA.
        transport: ``"auto"``, ``"crt"``, ``"paho"``, or a ready :class:`Transport`.
        outbox: Outbox settings (opened and closed with the client), or an open
            :class:`~device_sdk.Outbox` from a shared :class:`~device_sdk.OutboxDatabase`
            (left open). ``None``: an in-memory outbox (not durable).
        options: Connection options (keep-alive, Will, session, buffers).
        reconnect: Reconnect policy.
        limits: Client-side limits (IoT Core's by default).
        inflight_window: QoS 1 messages sent but not yet acknowledged, at most.
        require_initial_connection: If true (default), entering raises when the first
            connection attempt fails; if false, the client starts offline and keeps trying
            while ``publish`` fills the outbox.
        clock: Time source.
        logger: Logger (defaults to this module's).
        metrics: Where the client records its counters and latency histograms. Give several
            clients the same :class:`~device_sdk.ClientMetrics` to aggregate them without
            reading each one (a gateway's devices, a simulated fleet); missing counters are
            added. Default: the client's own. :meth:`metrics` returns a copy either way.
    """

    _pipelined = True
    """Use ``start_publish`` when the transport has it (private switch for benchmarks/tests)."""

    def __init__(
        self,
        identity: DeviceIdentity,
        endpoint: Endpoint,
        *,
        transport: TransportKind | Transport = "auto",
        outbox: OutboxConfig | Outbox | None = None,
        options: ConnectionOptions | None = None,
        reconnect: ReconnectPolicy | None = None,
        limits: Limits = IOT_CORE_LIMITS,
        inflight_window: int = 20,
        require_initial_connection: bool = True,
        clock: Clock | None = None,
        logger: logging.Logger | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if inflight_window < 1:
            raise ValueError("inflight_window must be positive")
        self.identity = identity
        self.endpoint = endpoint
        self._transport_spec = transport
        self._outbox_spec = outbox
        self._options = options or ConnectionOptions()
        self._policy = reconnect or ReconnectPolicy()
        self._limits = limits
        self._window_size = inflight_window
        self._require_initial = require_initial_connection
        self._clock = clock or SystemClock()
        self._logger = logger or logging.getLogger(__name__)
        self._name = f"device_sdk[{identity.thing_name}]"

        self._state = ClientState.CREATED
        self._failure: DeviceSdkError | None = None
        self._lock = asyncio.Lock()
        self._transport: Transport | None = transport if not isinstance(transport, str) else None
        self._outbox: Outbox | None = None
        self._owns_outbox = False
        self._tg: asyncio.TaskGroup | None = None
        self._conn_task: asyncio.Task[None] | None = None
        # Resolved when the client stops: waited on directly (no watcher task per connection).
        self._stop_fut: asyncio.Future[None] | None = None
        self._will_on_stop = False
        self._first_attempt: asyncio.Future[None] | None = None
        self._connected = LazyEvent()
        self._state_changed = LazyEvent()
        self._generation = 0
        self._resubscribed = False
        self._subs: dict[str, list[Subscription]] = {}
        self._bucket = limits.new_publish_bucket(self._clock)
        if metrics is None:
            metrics = ClientMetrics(
                dict.fromkeys(_COUNTERS, 0), LatencyHistogram(), LatencyHistogram()
            )
        for key in _COUNTERS:
            metrics.counters.setdefault(key, 0)
        self._counters = metrics.counters
        self._puback_latency = metrics.puback_latency
        self._e2e_latency = metrics.end_to_end_latency

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Current lifecycle state."""
        return self._state

    @property
    def failure(self) -> DeviceSdkError | None:
        """Why the client stopped retrying (state ``FAILED``), else ``None``."""
        return self._failure

    @property
    def thing_name(self) -> str:
        """The identity's thing name."""
        return self.identity.thing_name

    @property
    def transport(self) -> Transport:
        """The transport (available once entered).

        Raises:
            RuntimeError: The client has not been entered yet.
        """
        if self._transport is None:
            raise RuntimeError("the transport is created when the client is entered")
        return self._transport

    @property
    def outbox(self) -> Outbox:
        """The outbox (available while entered).

        Raises:
            RuntimeError: The client is not entered.
        """
        if self._outbox is None:
            raise RuntimeError("the outbox is open only while the client is entered")
        return self._outbox

    def _set_state(self, state: ClientState) -> None:
        if state is not self._state:
            self._logger.debug("%s: %s -> %s", self._name, self._state, state)
            self._state = state
            self._notify_change()

    def _notify_change(self) -> None:
        self._state_changed.set()
        self._state_changed = LazyEvent()

    @property
    def connection_generation(self) -> int:
        """How many connections have been established and resubscribed (0 before the first)."""
        return self._generation

    async def wait_resubscribed(self, after: int = 0) -> int:
        """Wait for a connection newer than generation ``after``, with its subscriptions restored.

        Returns the generation of the current connection once it is greater than ``after``
        and every filter has been resubscribed, so a request published next gets its answer.
        Services resync on each new generation (shadow ``get``, jobs ``start-next``)::

            generation = 0
            while True:
                generation = await device.wait_resubscribed(after=generation)
                await resync()

        Raises:
            DeviceSdkError: The client failed for good (``failure``).
            ClosedError: The client closed while waiting.
        """
        while self._generation <= after or not self._resubscribed:
            self._raise_if_unusable()
            await self._state_changed.wait()
        return self._generation

    async def wait_connected(self) -> None:
        """Wait until the client is connected.

        Raises:
            DeviceSdkError: The client failed for good (``failure``).
            ClosedError: The client closed while waiting.
        """
        while self._state is not ClientState.CONNECTED:
            self._raise_if_unusable()
            await self._state_changed.wait()

    def _raise_if_unusable(self) -> None:
        if self._state is ClientState.FAILED and self._failure is not None:
            raise self._failure
        if self._state in (ClientState.CREATED, ClientState.CLOSING, ClientState.CLOSED):
            raise ClosedError(f"{self._name} is {self._state}: use 'async with DeviceClient(...)'")

    # -- context manager ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the outbox, start the background tasks and (by default) wait for CONNACK."""
        if self._lock.locked():
            raise RuntimeError("DeviceClient is reusable but not reentrant: it is already entered")
        await self._lock.acquire()
        try:
            await self._open()
        except BaseException:
            self._set_state(ClientState.CLOSED)
            self._lock.release()
            raise
        return self

    async def _open(self) -> None:
        self._failure = None
        self._stop_fut = asyncio.get_running_loop().create_future()
        self._will_on_stop = False
        self._set_state(ClientState.CONNECTING)
        if self._transport is None:
            self._transport = create_transport(
                self.identity,
                self.endpoint,
                self._transport_spec if isinstance(self._transport_spec, str) else "auto",
                self._options,
                logger=self._logger.getChild("transport"),
            )
        spec = self._outbox_spec
        if isinstance(spec, Outbox):
            self._outbox, self._owns_outbox = spec, False
        else:
            config = spec or OutboxConfig()
            device_id = config.device_id or self.identity.thing_name
            self._outbox = await Outbox.open(config, device_id, clock=self._clock)
            self._owns_outbox = True
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._conn_task = tg.create_task(
            self._connection_loop(), name=f"{self._name}.connection_loop"
        )
        if not self._require_initial:
            return
        try:
            await asyncio.shield(self._first_attempt)
        except BaseException as exc:
            await self._shutdown(exc_type=None)
            self._set_state(ClientState.CLOSED)
            if isinstance(exc, DeviceSdkError):
                self._failure = exc
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the background tasks, disconnect (with the Will if leaving with an error)."""
        try:
            self._set_state(ClientState.CLOSING)
            await self._shutdown(exc_type=exc_type)
        finally:
            self._set_state(ClientState.CLOSED)
            if self._lock.locked():
                self._lock.release()

    async def _shutdown(self, *, exc_type: type[BaseException] | None) -> None:
        self._will_on_stop = exc_type is not None and issubclass(exc_type, Exception)
        if self._stop_fut is not None and not self._stop_fut.done():
            self._stop_fut.set_result(None)
        task = self._conn_task
        if task is not None and not task.done() and not self._connected.is_set():
            task.cancel()
        tg, self._tg, self._conn_task = self._tg, None, None
        try:
            if tg is not None:
                await tg.__aexit__(None, None, None)
        finally:
            for subs in self._subs.values():
                for sub in subs:
                    sub._close(None)  # noqa: SLF001 - companion class
            if self._first_attempt is not None and not self._first_attempt.done():
                self._first_attempt.cancel()
            outbox, self._outbox = self._outbox, None
            if outbox is not None:
                outbox.requeue_in_flight()
                if self._owns_outbox:
                    await outbox.aclose()

    # -- connection loop ----------------------------------------------------------------

    async def _connection_loop(self) -> None:
        transport = self.transport
        attempt = 0
        last_connect = -self._policy.min_interval_s
        while not self._is_stopping():
            wait = last_connect + self._policy.min_interval_s - self._clock.now()
            if wait > 0 and await self._sleep_or_stop(wait):
                return
            last_connect = self._clock.now()
            error: DeviceSdkError
            connected_at: float | None = None
            try:
                async with transport:
                    connected_at = self._clock.now()
                    self._on_connected()
                    cause = await self._run_connection(transport)
                    if self._is_stopping() and self._will_on_stop:
                        raise _WillExit  # noqa: TRY301 - makes the transport send the Will
                error = cause or ConnectionLostError("connection closed")
            except _WillExit:
                return
            except DeviceSdkError as exc:
                error = exc
            finally:
                self._on_disconnected(connected=connected_at is not None)
            if self._is_stopping():
                return
            if connected_at is None:
                self._counters["connect_failures"] += 1
                self._logger.warning("%s: connect failed: %s", self._name, error)
            elif self._clock.now() - connected_at >= self._policy.reset_after_s:
                attempt = 0
            first = self._first_attempt
            if first is not None and not first.done() and self._require_initial:
                first.set_exception(error)
                return
            if not self._policy.should_retry(error, attempt):
                self._fail(error)
                return
            delay = self._policy.delay(attempt)
            attempt += 1
            self._set_state(ClientState.RECONNECTING)
            self._logger.info(
                "%s: reconnecting in %.2fs (attempt %d): %s", self._name, delay, attempt, error
            )
            if await self._sleep_or_stop(delay):
                return

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep on the injected clock; return True if the client is stopping."""
        if self._stop_fut is None or self._stop_fut.done():
            return True
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({sleeper, self._stop_fut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return self._is_stopping()

    def _is_stopping(self) -> bool:
        return self._stop_fut is None or self._stop_fut.done()

    def _on_connected(self) -> None:
        self._counters["connects"] += 1
        self._connected.set()
        self._set_state(ClientState.CONNECTED)
        self._logger.info("%s: connected to %s", self._name, self.endpoint.host)
        first = self._first_attempt
        if first is not None and not first.done():
            first.set_result(None)

    def _on_disconnected(self, *, connected: bool) -> None:
        self._connected.clear()
        self._resubscribed = False
        if connected:
            self._counters["disconnects"] += 1
        if self._outbox is not None:
            replay = self._outbox.requeue_in_flight()
            if replay:
                self._logger.info(
                    "%s: %d unacknowledged messages will be replayed", self._name, replay
                )

    def _fail(self, error: DeviceSdkError) -> None:
        self._failure = error
        self._set_state(ClientState.FAILED)
        self._logger.error("%s: giving up: %s", self._name, error)
        for subs in self._subs.values():
            for sub in subs:
                sub._close(error)  # noqa: SLF001

    async def _run_connection(self, transport: Transport) -> DeviceSdkError | None:
        """Run one connection: resubscribe, then send; return the cause when it ends.

        Tasks while connected: the receive loop, the link watch (``disconnected()``) and, for
        transports without ``start_publish``, the sender. The pipelined sender is driven by
        callbacks (no task); stopping is awaited as a plain future; resubscribing needs a
        task only when there are filters.
        """
        name = self._name
        stop = self._stop_fut
        if stop is None:  # never: _open creates it before the connection loop starts
            raise ClosedError(f"{name} is not open")
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self._receive_loop(transport), name=f"{name}.receive_loop")
            down = tg.create_task(transport.disconnected(), name=f"{name}.link_watch")
            resubscribe: asyncio.Task[None] | None = None
            if any(self._subs.values()):
                resubscribe = tg.create_task(
                    self._resubscribe(transport), name=f"{name}.resubscribe"
                )
                # Resubscribe first (a request published next may expect its answer on one
                # of the filters), but never wait for SUBACKs on a link that is already gone.
                first: set[asyncio.Future[Any]] = {resubscribe, down, stop}
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not down.done() and not stop.done():
                self._generation += 1
                self._resubscribed = True
                self._notify_change()
                sender: asyncio.Task[None] | _PipelinedSender
                if self._pipelined and isinstance(transport, PipelinedTransport):
                    sender = _PipelinedSender(self, transport, self.outbox)
                    sender.start()
                else:
                    sender = tg.create_task(
                        self._awaited_send_loop(transport), name=f"{name}.sender"
                    )
                ending: set[asyncio.Future[Any]] = {down, stop}
                try:
                    await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sender.cancel()
            if resubscribe is not None:
                resubscribe.cancel()
            if not down.done():  # stopping: the link is still up; drop what is buffered
                down.cancel()
                receiver.cancel()
        return None if down.cancelled() else down.result()

    async def _resubscribe(self, transport: Transport) -> None:
        """Subscribe once per filter (highest QoS wins) after (re)connecting."""
        filters = [(f, max(s.qos for s in subs)) for f, subs in self._subs.items() if subs]
        if not filters:
            return
        results = await asyncio.gather(
            *(transport.subscribe([(f, q)]) for f, q in filters), return_exceptions=True
        )
        for (flt, _), result in zip(filters, results, strict=True):
            if isinstance(result, AuthorizationError | NegativeAckError):
                self._logger.warning("%s: resubscribe to %r refused: %s", self._name, flt, result)
                for sub in self._subs.get(flt, ()):
                    sub._fail(result)  # noqa: SLF001
            elif isinstance(result, BaseException):
                self._logger.warning("%s: resubscribe to %r failed: %s", self._name, flt, result)

    async def _receive_loop(self, transport: Transport) -> None:
        try:
            async for message in transport.messages():
                self._counters["received"] += 1
                self._route(message)
        except ConnectionLostError:
            return

    def _route(self, message: Message) -> None:
        for flt, subs in self._subs.items():
            if topic_matches(flt, message.topic):
                for sub in subs:
                    if not sub._deliver(message):  # noqa: SLF001
                        self._counters["dropped_inbound"] += 1
                        self._logger.warning(
                            "%s: subscription %r is full: dropped a message", self._name, flt
                        )

    async def _awaited_send_loop(self, transport: Transport) -> None:
        """The sender for transports without ``start_publish``: one task per message."""
        outbox = self.outbox
        window = asyncio.Semaphore(self._window_size)
        async with asyncio.TaskGroup() as tg:
            while True:
                await window.acquire()
                try:
                    record = await outbox.take()
                except ClosedError:
                    window.release()
                    return
                await self._bucket.acquire()
                tg.create_task(
                    self._send_one(transport, outbox, record, window),
                    name=f"{self._name}.publish[{record.id}]",
                )

    async def _send_one(
        self,
        transport: Transport,
        outbox: Outbox,
        record: OutboxRecord,
        window: asyncio.Semaphore,
    ) -> None:
        started = self._clock.now()
        try:
            async with asyncio.timeout(self._options.ack_timeout_s):
                await transport.publish(
                    record.topic, record.payload, 1, user_properties=record.user_properties
                )
        except NegativeAckError as exc:
            self._on_nack(outbox, record, exc)
        except (TimeoutError, RequestTimeoutError):
            self._counters["ack_timeouts"] += 1
            outbox.requeue(record.id)
        except (ConnectionLostError, ClosedError):
            pass  # stays in flight; requeued in order when the connection ends
        else:
            self._on_ack(outbox, record, started)
        finally:
            window.release()

    def _on_ack(self, outbox: Outbox, record: OutboxRecord, started: float) -> None:
        counters = self._counters
        counters["acked"] += 1
        clock = self._clock
        self._puback_latency.record(clock.now() - started)
        self._e2e_latency.record(clock.wall() - record.created_at)
        outbox.ack(record.id)

    def _on_nack(self, outbox: Outbox, record: OutboxRecord, exc: NegativeAckError) -> None:
        self._counters["nacked"] += 1
        self._logger.warning(
            "%s: message %s on %r refused (%#04x); removed from the outbox",
            self._name,
            record.msg_id,
            record.topic,
            exc.reason_code,
        )
        outbox.fail(record.id, exc)

    # -- publishing ---------------------------------------------------------------------

    @overload
    async def publish(
        self,
        topic: str,
        payload: Payload,
        qos: Literal[1] = 1,
        *,
        retain: bool = False,
        wait_ack: bool = False,
        user_properties: UserProperties = (),
        msg_id_field: str | None = None,
    ) -> str: ...

    @overload
    async def publish(
        self,
        topic: str,
        payload: Payload,
        qos: Literal[0],
        *,
        retain: bool = False,
        wait_ack: Literal[False] = False,
        user_properties: UserProperties = (),
        msg_id_field: str | None = None,
    ) -> None: ...

    async def publish(
        self,
        topic: str,
        payload: Payload,
        qos: QoS = 1,
        *,
        retain: bool = False,
        wait_ack: bool = False,
        user_properties: UserProperties = (),
        msg_id_field: str | None = None,
    ) -> str | None:
        """Publish a message.

        QoS 1 goes through the durable outbox: this returns the message's ``msg-id`` once it
        is persisted (or, with ``wait_ack=True``, once the broker acknowledged it), and the
        sender delivers it at least once, in order, across reconnects and restarts.
        QoS 0 is sent immediately if connected and never queued.

        Args:
            topic: Topic name (no wildcards).
            payload: ``bytes``, ``str`` (UTF-8) or ``dict`` (JSON).
            qos: 0 or 1.
            retain: Ask the broker to retain it (QoS 0 only through this method).
            wait_ack: Wait for the PUBACK (QoS 1).
            user_properties: Extra MQTT 5 user properties (``msg-id`` is added).
            msg_id_field: For dict payloads, also put the ``msg-id`` under this JSON key.

        Raises:
            LimitExceededError: Topic or payload breaks an IoT Core limit; nothing is stored.
            OutboxFullError: The outbox is full (policy ``"reject"``).
            NegativeAckError: With ``wait_ack``, the broker refused the message.
            ConnectionLostError: QoS 0 while not connected.
            ClosedError: The client is not open.
        """
        self._raise_if_unusable()
        msg_id = new_msg_id()
        data = encode_payload(payload, msg_id=msg_id, field=msg_id_field)
        self._limits.validate_publish_topic(topic)
        self._limits.validate_payload(data)
        if qos == 0:
            await self._publish_qos0(topic, data, retain=retain, user_properties=user_properties)
            return None
        if retain:
            raise ValueError("retained QoS 1 messages are not supported through the outbox")
        record = await self.outbox.enqueue(
            topic, data, user_properties=user_properties, msg_id=msg_id, track_ack=wait_ack
        )
        self._counters["published"] += 1
        if wait_ack:
            await self.outbox.wait_acked(record.id)
        return record.msg_id

    def publish_nowait(
        self,
        topic: str,
        payload: Payload,
        *,
        user_properties: UserProperties = (),
        msg_id_field: str | None = None,
    ) -> str:
        """Queue a QoS 1 message through the durable outbox without waiting; return its msg-id.

        For producers that must never block on storage (high-rate sensor loops, simulators):
        the message is committed to the outbox in the background, together with the other
        messages queued in the same event-loop iteration, before it can be sent, and then
        delivered at least once, in order, like :meth:`publish`. Await
        :meth:`Outbox.flush <device_sdk.Outbox.flush>` (``client.outbox.flush()``) to know
        that everything queued so far is on disk. If that commit fails, the message is
        dropped, logged and counted in the outbox's ``failed`` statistic. Call it on the
        event-loop thread.

        Raises:
            LimitExceededError: Topic or payload breaks an IoT Core limit; nothing is stored.
            OutboxFullError: The outbox is full (policy ``"reject"``).
            ClosedError: The client is not open.
        """
        self._raise_if_unusable()
        msg_id = new_msg_id()
        data = encode_payload(payload, msg_id=msg_id, field=msg_id_field)
        self._limits.validate_publish_topic(topic)
        self._limits.validate_payload(data)
        record = self.outbox.enqueue_nowait(
            topic, data, user_properties=user_properties, msg_id=msg_id
        )
        self._counters["published"] += 1
        return record.msg_id

    async def _publish_qos0(
        self, topic: str, data: bytes, *, retain: bool, user_properties: UserProperties
    ) -> None:
        transport = self.transport
        if not self._connected.is_set():
            raise ConnectionLostError(f"{self._name} is not connected; QoS 0 is not queued")
        await self._bucket.acquire()
        await transport.publish(topic, data, 0, retain=retain, user_properties=user_properties)
        self._counters["published_qos0"] += 1

    async def send_now(
        self, topic: str, payload: Payload, qos: QoS = 1, *, wait_s: float = 10.0
    ) -> None:
        """Publish without the outbox once connected (waits for the connection first).

        For requests that must not be replayed after a restart or a long outage, such as
        shadow, jobs and provisioning requests: the caller retries on failure instead.
        After a reconnect it also waits until the subscriptions are restored, so the answer
        to a request cannot arrive before its response filter is back.

        Raises:
            LimitExceededError: Topic or payload breaks an IoT Core limit.
            ConnectionLostError: The connection dropped before the PUBACK.
            NegativeAckError: The broker refused the message.
            TimeoutError: No connection within ``wait_s``.
        """
        data = encode_payload(payload)
        self._limits.validate_publish_topic(topic)
        self._limits.validate_payload(data)
        async with asyncio.timeout(wait_s):
            await self.wait_resubscribed(after=self._generation - int(self._resubscribed))
        await self._bucket.acquire()
        await self.transport.publish(topic, data, qos)

    async def drain(self) -> None:
        """Wait until every QoS 1 message in the outbox has been acknowledged."""
        await self.outbox.wait_empty()

    # -- subscribing --------------------------------------------------------------------

    def subscribe(self, topic_filter: str, *, qos: QoS = 1, max_buffer: int = 1000) -> Subscription:
        """A subscription to ``topic_filter``; enter it with ``async with``.

        It is re-established after every reconnect. Several subscriptions may share a filter;
        the broker sees one subscription per filter.
        """
        return Subscription(self, topic_filter, qos, max_buffer)

    async def _add_subscription(self, sub: Subscription) -> None:
        self._raise_if_unusable()
        flt = sub.topic_filter
        self._limits.validate_topic_filter(flt)
        existing = self._subs.get(flt)
        if not existing:
            self._limits.validate_subscription_count(len(self._subs) + 1)
        need_broker = not existing or sub.qos > max(s.qos for s in existing)
        self._subs.setdefault(flt, []).append(sub)
        if need_broker and self._connected.is_set():
            try:
                await self.transport.subscribe([(flt, sub.qos)])
            except (ConnectionLostError, ClosedError):
                pass  # resubscribed on reconnect
            except BaseException:
                self._subs[flt].remove(sub)
                if not self._subs[flt]:
                    del self._subs[flt]
                raise

    async def _remove_subscription(self, sub: Subscription) -> None:
        flt = sub.topic_filter
        subs = self._subs.get(flt, [])
        if sub in subs:
            subs.remove(sub)
        if subs:
            return
        self._subs.pop(flt, None)
        if self._connected.is_set() and self._transport is not None:
            try:
                await self._transport.unsubscribe([flt])
            except DeviceSdkError as exc:
                self._logger.debug("%s: unsubscribe %r failed: %s", self._name, flt, exc)

    # -- introspection ------------------------------------------------------------------

    def metrics(self) -> ClientMetrics:
        """Counters and latency histograms (copies)."""
        return ClientMetrics(
            dict(self._counters), self._puback_latency.copy(), self._e2e_latency.copy()
        )

    def outbox_statistics(self) -> OutboxStatistics:
        """The outbox's counters."""
        return self.outbox.statistics()

    def transport_statistics(self) -> TransportStatistics:
        """The transport's counters."""
        return self.transport.statistics()


class _PipelinedSender:
    """The sender of one connection over a :class:`PipelinedTransport` (internal).

    No task at all, and no ``asyncio.timeout`` per message: :meth:`_pump` runs when messages
    become ready (the outbox calls it after a commit or a requeue), when a PUBACK frees room
    in the window, and when the rate limiter grants a token. It takes records from the outbox
    in batches, calls ``start_publish`` and attaches a done-callback. In-flight records live
    in an insertion-ordered dict (send order) with their send times; the window is the size
    of that dict. The ack timeout is enforced by ONE timer handle armed for the oldest
    in-flight record and re-armed lazily when it fires. Outcomes are those of the awaited
    path: PUBACK -> ``ack``; negative PUBACK -> ``fail``; timeout -> cancel the future and
    ``requeue``; connection lost -> the record stays in flight in the outbox and is requeued
    in order when the connection ends. :meth:`cancel` processes futures that already
    completed and cancels the others (their PUBACKs are then ignored).
    """

    __slots__ = (
        "_active",
        "_bucket",
        "_busy",
        "_client",
        "_cork",
        "_counters",
        "_inflight",
        "_link_lost",
        "_loop",
        "_on_done_cb",
        "_outbox",
        "_refill",
        "_timeout",
        "_timer",
        "_tokens",
        "_transport",
        "_window",
    )

    def __init__(self, client: DeviceClient, transport: PipelinedTransport, outbox: Outbox) -> None:
        self._client = client
        self._transport = transport
        self._outbox = outbox
        self._bucket = client._bucket  # noqa: SLF001 - companion class
        self._counters = client._counters  # noqa: SLF001
        self._window = client._window_size  # noqa: SLF001
        self._timeout = client._options.ack_timeout_s  # noqa: SLF001
        self._loop = asyncio.get_running_loop()
        # future -> (record, clock time sent, loop time sent), in send order
        self._inflight: dict[asyncio.Future[None], tuple[OutboxRecord, float, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._refill: asyncio.Task[None] | None = None
        self._tokens = 0
        self._busy = False
        self._active = False
        self._link_lost = False
        self._on_done_cb = self._on_done
        # Write each batch with one system call (transports that support it).
        self._cork: CorkableTransport | None = (
            cast("CorkableTransport", transport)
            if callable(getattr(transport, "cork", None))
            and callable(getattr(transport, "uncork", None))
            else None
        )

    def start(self) -> None:
        """Start sending: register with the outbox and send what is ready."""
        self._active = True
        self._outbox._set_listener(self._pump)  # noqa: SLF001 - companion class
        self._pump()

    def cancel(self) -> None:
        """Stop sending (idempotent); records in flight stay in flight in the outbox."""
        if not self._active:
            return
        self._active = False
        self._outbox._set_listener(None)  # noqa: SLF001
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        for fut in list(self._inflight):
            if fut.done():
                self._on_done(fut)  # a PUBACK whose callback has not run yet
            else:
                fut.cancel()
        self._inflight.clear()

    def _pump(self) -> None:
        """Send as many ready records as the window and the rate limit allow."""
        if self._busy or not self._active or self._link_lost:
            return
        self._busy = True
        try:
            self._send_ready()
        finally:
            self._busy = False

    def _send_ready(self) -> None:
        outbox = self._outbox
        inflight = self._inflight
        bucket = self._bucket
        start_publish = self._transport.start_publish
        on_done = self._on_done_cb
        clock_now = self._client._clock.now  # noqa: SLF001
        while True:
            wanted = min(self._window - len(inflight), outbox.ready)
            if wanted <= 0:
                return
            granted, self._tokens = self._tokens, 0
            while granted < wanted and bucket.try_acquire():
                granted += 1
            if granted == 0:
                self._wait_for_token()
                return
            started = clock_now()
            sent = self._loop.time()
            cork = self._cork
            if cork is not None:
                cork.cork()
            try:
                for record in outbox.take_batch(granted):
                    try:
                        fut = start_publish(
                            record.topic, record.payload, 1, user_properties=record.user_properties
                        )
                    except (ConnectionLostError, ClosedError):
                        # The link is gone: what was taken stays in flight in the outbox and
                        # is requeued in order when the connection ends (then cancel() runs).
                        self._link_lost = True
                        return
                    inflight[fut] = (record, started, sent)
                    fut.add_done_callback(on_done)
            finally:
                if cork is not None:
                    cork.uncork()
            if self._timer is None and inflight:
                self._timer = self._loop.call_at(sent + self._timeout, self._expire)
            if granted < wanted:
                self._wait_for_token()
                return

    def _wait_for_token(self) -> None:
        if self._refill is None:
            self._refill = self._loop.create_task(self._acquire_token())

    async def _acquire_token(self) -> None:
        await self._bucket.acquire()
        self._refill = None
        self._tokens += 1
        self._pump()

    def _on_done(self, fut: asyncio.Future[None]) -> None:
        entry = self._inflight.pop(fut, None)
        if entry is None:
            return  # timed out, or the sender stopped: already handled
        record, started, _ = entry
        client = self._client
        outbox = self._outbox
        if fut.cancelled():
            outbox.requeue(record.id)
        else:
            exc = fut.exception()
            if exc is None:
                client._on_ack(outbox, record, started)  # noqa: SLF001
            elif isinstance(exc, NegativeAckError):
                client._on_nack(outbox, record, exc)  # noqa: SLF001
            elif isinstance(exc, TimeoutError | RequestTimeoutError):
                self._counters["ack_timeouts"] += 1
                outbox.requeue(record.id)
            elif not isinstance(exc, ConnectionLostError | ClosedError):
                client._logger.warning(  # noqa: SLF001
                    "%s: publish of %s failed: %r; replayed after reconnecting",
                    client._name,  # noqa: SLF001
                    record.msg_id,
                    exc,
                )
            # Connection lost: stays in flight; requeued in order when the connection ends.
        if outbox.ready:
            self._pump()

    def _expire(self) -> None:
        """The oldest in-flight record's ack deadline passed: requeue what timed out."""
        self._timer = None
        inflight = self._inflight
        timeout = self._timeout
        now = self._loop.time()
        expired = 0
        busy, self._busy = self._busy, True  # requeue all before re-sending any
        try:
            while inflight:
                fut = next(iter(inflight))
                record, _, sent = inflight[fut]
                if sent + timeout > now:
                    self._timer = self._loop.call_at(sent + timeout, self._expire)
                    break
                del inflight[fut]
                fut.cancel()  # its PUBACK, if it still comes, is ignored
                self._outbox.requeue(record.id)
                expired += 1
        finally:
            self._busy = busy
        if expired:
            self._counters["ack_timeouts"] += expired
            self._pump()
