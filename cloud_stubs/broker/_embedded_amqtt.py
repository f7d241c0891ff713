"""amqtt 0.12.1 made to behave like AWS IoT Core's message broker.

:class:`IotBroker` subclasses :class:`amqtt.broker.Broker` and :class:`_IotHandler` subclasses
its per-connection protocol handler. amqtt's packet codecs, protocol flows, will messages,
retained-message store and message loop are used as they are; the overrides are the places where
IoT Core behaves differently, each with a comment naming what it changes. amqtt is pinned
(``amqtt==0.12.1``) because these are private methods; ``tests/broker/test_embedded_upgrade.py``
fails when the overridden surface changes.

The one amqtt rule that had to go is its [MQTT-4.7.2-1] reading in
``Broker._handle_message_delivery``: it closes the connection of any client that publishes to a
topic starting with ``$``, which makes every ``$aws/...`` request (shadow, jobs, provisioning)
impossible. :meth:`IotBroker._handle_message_delivery` is that method without the check;
access to ``$aws/...`` is decided by the policies instead, as on IoT Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from cloud_stubs._policy import Action, Principal, Role
from cloud_stubs.broker._embedded_auth import Authority, PeerIdentity, peer_identity
from cloud_stubs.broker._embedded_iot import (
    KEEP_ALIVE_MAX,
    KEEP_ALIVE_MIN,
    MAX_CLIENT_ID_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SUBSCRIPTIONS_PER_CONNECTION,
    DisconnectReason,
    FilterTrie,
    clamp_keep_alive,
    connected_event,
    disconnected_event,
    filter_problem,
    has_lifecycle_events,
    keep_alive_deadline,
    presence_topic,
    topic_matches,
    topic_problem,
)

__all__ = ["LISTENER", "IotBroker", "broker_config"]

_log = logging.getLogger(__name__)

#: Name of the (external) amqtt listener the TLS server feeds connections into.
LISTENER = "default"
#: Keys in ``Session.attributes``: the connection record and the session's topic filters.
_CONNECTION = "cloud_stubs.connection"
_FILTERS = "cloud_stubs.filters"
_SUBACK_FAILURE = 0x80
#: Seconds a client gets to send CONNECT after the TLS handshake.
_CONNECT_TIMEOUT = 20.0
#: Seconds to wait for a taken-over or closed connection to finish its cleanup.
_CLOSE_WAIT = 5.0
#: Persistent sessions expire this long after their client disconnected (IoT default: 1 hour).
SESSION_EXPIRY = 3600
#: Keep-alive bounds applied to CONNECT (module-level so tests can shorten them).
KEEP_ALIVE_BOUNDS = (KEEP_ALIVE_MIN, KEEP_ALIVE_MAX)


def broker_config() -> BrokerConfig:
    """Configure amqtt: one external listener, no plugins, 1 h persistent sessions."""
    return BrokerConfig(
        listeners={LISTENER: ListenerConfig(type=ListenerType.EXTERNAL)},
        plugins={},
        session_expiry_interval=SESSION_EXPIRY,
        timeout_disconnect_delay=0,
    )


@dataclass(eq=False)
class _Connection:
    """One accepted MQTT connection (a session outlives it when it is persistent)."""

    client_id: str
    identity: PeerIdentity
    principal: Principal
    ip_address: str
    session_identifier: str = field(default_factory=lambda: uuid.uuid4().hex)
    version_number: int = 0
    handler: _IotHandler | None = None
    #: Set once the broker or the client started closing the connection.
    closing: bool = False
    #: Why it closed (None until known; CONNECTION_LOST when nothing else applies).
    reason: DisconnectReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def certificate_id(self) -> str:
        return self.identity.certificate_id


def _connection_of(session: Session | None) -> _Connection | None:
    if session is None:
        return None
    conn = session.attributes.get(_CONNECTION)
    return conn if isinstance(conn, _Connection) else None


def _filters_of(session: Session) -> set[str]:
    """Filters this session subscribed to (may include some since unsubscribed)."""
    filters = session.attributes.get(_FILTERS)
    if isinstance(filters, set):
        return filters
    fresh: set[str] = set()
    session.attributes[_FILTERS] = fresh
    return fresh


@dataclass
class _ClientLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class _FilterIndex(dict[str, list[tuple[Session, int]]]):
    """amqtt's ``filter -> [(session, qos)]`` table, with a trie to find matching filters.

    amqtt only assigns, deletes and clears keys, so those are the operations tracked.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trie = FilterTrie()

    def __setitem__(self, key: str, value: list[tuple[Session, int]]) -> None:
        super().__setitem__(key, value)
        self._trie.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._trie.discard(key)

    def clear(self) -> None:
        super().clear()
        self._trie.clear()

    def __repr__(self) -> str:
        # amqtt logs repr(self._subscriptions) at debug level after every SUBSCRIBE, computing
        # it even when debug logging is off: keep it O(1).
        return f"<{len(self)} topic filters>"

    def matching(self, topic: str) -> list[str]:
        """Filters that match ``topic`` (IoT Core matching rules)."""
        return self._trie.match(topic)


class _IotHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker-side protocol handler with IoT Core's checks before a PUBLISH is acked."""

    broker: IotBroker | None = None
    connection: _Connection | None = None
    #: The accepted PUBLISH the message loop has taken but not yet handed to delivery.
    in_hand: Any = None

    async def handle_publish(self, publish_packet: Any) -> None:
        # IoT Core closes a 3.1.1 connection on a forbidden or invalid PUBLISH without
        # acknowledging it; amqtt would PUBACK first and decide later.
        broker, conn = self.broker, self.connection
        if broker is None or conn is None or conn.closing:
            return
        reason = broker.check_publish(conn, publish_packet)
        if reason is not None:
            broker.request_close(conn, reason)
            return
        await super().handle_publish(publish_packet)

    async def mqtt_deliver_next_message(self) -> Any:
        # Remember the message until delivery took it, so one taken just as the connection
        # ends is not lost (see IotBroker._finish).
        message = await super().mqtt_deliver_next_message()
        self.in_hand = message
        return message

    def handle_read_timeout(self) -> None:
        # amqtt ignores keep-alive expiry on the broker side; IoT Core closes the connection.
        if self.broker is not None and self.connection is not None:
            _log.info("client %s: keep-alive expired", self.connection.client_id)
            self.broker.request_close(self.connection, DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT)

    async def handle_connect(self, connect: Any) -> None:  # noqa: ARG002 - amqtt's signature
        # A second CONNECT on a connection is a protocol violation (IoT: CLIENT_ERROR).
        if self.broker is not None and self.connection is not None:
            self.broker.request_close(self.connection, DisconnectReason.CLIENT_ERROR)

    async def handle_disconnect(self, disconnect: Any) -> None:
        # Called with the DISCONNECT packet, or with None when the connection ended otherwise.
        conn = self.connection
        if conn is not None and not conn.closing:
            conn.closing = True
            if disconnect is not None:
                conn.reason = DisconnectReason.CLIENT_INITIATED_DISCONNECT
        await super().handle_disconnect(disconnect)


class IotBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker with IoT Core authentication, authorization, matching and lifecycle events."""

    def __init__(self, authority: Authority) -> None:
        """Create the broker (inside the running event loop)."""
        super().__init__(broker_config())
        self._subscriptions = _FilterIndex()
        self._authority = authority
        self._keep_alive_bounds = KEEP_ALIVE_BOUNDS
        self._live: dict[str, _Connection] = {}
        self._versions: dict[str, int] = {}
        self._client_locks: dict[str, _ClientLock] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- authorization ------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Re-read changed registry/policy files; close connections of no longer ACTIVE certs."""
        if self._authority.refresh(force=force):
            for conn in list(self._live.values()):
                if not self._authority.is_active(conn.certificate_id):
                    _log.info("client %s: certificate no longer ACTIVE", conn.client_id)
                    self.request_close(conn, DisconnectReason.AUTH_ERROR)

    def _authorize(
        self, conn: _Connection, action: Action, resource: str, *, refresh: bool = True
    ) -> bool:
        if refresh:
            self.refresh()
        if not self._authority.is_active(conn.certificate_id):
            self.request_close(conn, DisconnectReason.AUTH_ERROR)
            return False
        return self._authority.is_allowed(conn.principal, action, resource)

    def check_publish(self, conn: _Connection, packet: Any) -> DisconnectReason | None:
        """Why a PUBLISH closes the connection (None when it may proceed)."""
        topic = packet.topic_name or ""
        problem: str | None = None
        reason = DisconnectReason.CLIENT_ERROR
        if packet.qos == 2:  # noqa: PLR2004 - QoS 2
            problem = "QoS 2 is not supported"
        elif (problem := topic_problem(topic)) is not None:
            pass
        elif len(packet.data or b"") > MAX_PAYLOAD_BYTES:
            problem = f"payload larger than {MAX_PAYLOAD_BYTES} bytes"
        elif packet.retain_flag and topic.startswith("$"):
            problem = "RETAIN on a reserved topic"
        elif not self._authorize(conn, Action.PUBLISH, topic):
            problem, reason = "not authorized", DisconnectReason.AUTH_ERROR
        if problem is None:
            return None
        _log.info("client %s: PUBLISH to %r refused (%s); closing", conn.client_id, topic, problem)
        return reason

    async def _topic_filtering(self, session: Session, topic: str, action: Any) -> bool:
        # amqtt's topic-check hook, answered from the IoT policies instead of plugins.
        conn = _connection_of(session)
        return conn is not None and self._authorize(conn, Action(str(action)), topic)

    # -- closing connections ------------------------------------------------------------

    def request_close(self, conn: _Connection, reason: DisconnectReason) -> None:
        """Close a connection (once); ``reason`` is reported in its lifecycle event."""
        if conn.closing:
            return
        conn.closing = True
        conn.reason = reason
        if conn.handler is not None:
            self._spawn(self._close_handler(conn.handler), f"close {conn.client_id}")

    async def _close_handler(self, handler: _IotHandler) -> None:
        await handler.handle_connection_closed()
        await handler.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"cloud_stubs.embedded: {what}")
        self._background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.warning("%s failed: %r", task.get_name(), exc)

    async def close_all(self, reason: DisconnectReason) -> None:
        """Close every connection and wait (bounded) until each has finished."""
        conns = list(self._live.values())
        for conn in conns:
            self.request_close(conn, reason)
        if conns:
            waiters = [asyncio.create_task(c.done.wait()) for c in conns]
            _done, pending = await asyncio.wait(waiters, timeout=_CLOSE_WAIT)
            for waiter in pending:
                waiter.cancel()

    async def _close_and_wait(self, conn: _Connection, reason: DisconnectReason) -> None:
        self.request_close(conn, reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.done.wait(), _CLOSE_WAIT)

    # -- CONNECT --------------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[_IotHandler, Session]:
        # Replaces amqtt's: authenticate and authorize *before* touching any existing session
        # (amqtt deleted the session of the client id first and only then asked plugins).
        try:
            handler, session = await asyncio.wait_for(
                _IotHandler.init_from_connect(reader, writer, self.plugins_manager),
                _CONNECT_TIMEOUT,
            )
        except MQTTError:
            await writer.close()
            raise
        except (AMQTTError, NoDataError, TimeoutError) as exc:
            raise AMQTTError(
                f"no valid CONNECT from {remote_address}:{remote_port}: {exc!r}"
            ) from exc
        client_id: str = session.client_id
        if len(client_id.encode("utf-8")) > MAX_CLIENT_ID_BYTES:
            await self._refuse(writer, IDENTIFIER_REJECTED, client_id, "client id too long")
        identity = peer_identity(session.ssl_object)
        decision = self._authority.authorize_connect(identity, client_id)
        if decision.principal is None or identity is None:
            await self._refuse(writer, NOT_AUTHORIZED, client_id, decision.reason)
        principal = decision.principal
        conn = _Connection(client_id, identity, principal, remote_address)
        if session.will_flag and (why := self._will_problem(conn, session)) is not None:
            await self._refuse(writer, NOT_AUTHORIZED, client_id, why)
        low, high = self._keep_alive_bounds
        session.keep_alive = keep_alive_deadline(
            clamp_keep_alive(session.keep_alive, low=low, high=high)
        )
        handler.broker, handler.connection = self, conn
        conn.handler = handler
        return handler, session

    def _will_problem(self, conn: _Connection, session: Session) -> str | None:
        topic = session.will_topic or ""
        if (problem := topic_problem(topic)) is not None:
            return f"will topic {topic!r}: {problem}"
        if len(session.will_message or b"") > MAX_PAYLOAD_BYTES:
            return "will payload too large"
        if session.will_retain and topic.startswith("$"):
            return "will RETAIN on a reserved topic"
        if not self._authority.is_allowed(conn.principal, Action.PUBLISH, topic):
            return f"policy does not allow publishing the will to {topic!r}"
        return None

    async def _refuse(self, writer: WriterAdapter, code: int, client_id: str, why: str) -> NoReturn:
        _log.info("refusing CONNECT of client id %r: %s", client_id, why)
        with contextlib.suppress(OSError):
            await ConnackPacket.build(0, code).to_stream(writer)
        with contextlib.suppress(OSError):
            await writer.close()
        raise MQTTError(f"CONNECT of {client_id!r} refused: {why}")

    @contextlib.asynccontextmanager
    async def _client_lock(self, client_id: str) -> AsyncIterator[None]:
        entry = self._client_locks.setdefault(client_id, _ClientLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._client_locks[client_id]

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: _IotHandler,
        server: Any,  # noqa: ARG002 - amqtt's signature
        listener_name: str,  # noqa: ARG002
    ) -> None:
        # Replaces amqtt's: one connection per client id (the older one is closed with
        # DUPLICATE_CLIENTID and finishes before the new one takes the session), session
        # resumption without amqtt's take-over races, lifecycle events.
        conn = handler.connection
        if conn is None:  # pragma: no cover - set by _initialize_client_session
            raise AMQTTError("connection record missing")
        client_id = conn.client_id
        session = client_session
        started = False
        try:
            async with self._client_lock(client_id):
                previous = self._live.get(client_id)
                if previous is not None:
                    _log.info(
                        "client id %r connected again: closing the older connection", client_id
                    )
                    await self._close_and_wait(previous, DisconnectReason.DUPLICATE_CLIENTID)
                session = await self._resolve_session(client_session)
                session.attributes[_CONNECTION] = conn
                if session.transitions.is_connected():  # the older connection did not finish
                    session.transitions.disconnect()
                session.transitions.connect()
                handler.attach(session, reader, writer)
                self._sessions[client_id] = (session, handler)
                conn.version_number = self._versions[client_id] = (
                    self._versions.get(client_id, -1) + 1
                )
                await handler.mqtt_connack_authorize(True)  # noqa: FBT003 - amqtt's signature
                await handler.start()
                self._live[client_id] = conn
                started = True
            await self._publish_presence(conn, None)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
            )
            await self._publish_session_retained_messages(session)
            await self._client_message_loop(session, handler)
        finally:
            await self._finish(conn, session, handler, started=started)

    async def _resolve_session(self, incoming: Session) -> Session:
        client_id = incoming.client_id
        existing = self._sessions.get(client_id)
        if incoming.clean_session or existing is None:
            if existing is not None:
                await self._delete_session(client_id)
            incoming.parent = 0
            return incoming
        session: Session = existing[0]
        for name in (
            "will_flag",
            "will_message",
            "will_topic",
            "will_qos",
            "will_retain",
            "keep_alive",
            "username",
            "password",
            "remote_address",
            "remote_port",
            "ssl_object",
        ):
            setattr(session, name, getattr(incoming, name))
        session.parent = 1
        return session

    async def _finish(
        self, conn: _Connection, session: Session, handler: _IotHandler, *, started: bool
    ) -> None:
        client_id = conn.client_id
        conn.closing = True
        if self._live.get(client_id) is conn:
            del self._live[client_id]
        if (
            session.transitions.is_connected()
            and self._sessions.get(client_id, (None, None))[1] is handler
        ):
            await self._stop_handler(handler)
            session.transitions.disconnect()
        if started:
            await self._flush_accepted(session, handler)
            await self._publish_presence(conn, conn.reason or DisconnectReason.CONNECTION_LOST)
        if session.clean_session and self._sessions.get(client_id, (None, None))[0] is session:
            await self._cleanup_session(client_id)
        conn.done.set()

    async def _flush_accepted(self, session: Session, handler: _IotHandler) -> None:
        """Deliver PUBLISHes already accepted (and acked) that amqtt's loop left behind.

        amqtt's message loop stops at the DISCONNECT (or connection loss) and drops what is
        still queued, so "publish, then disconnect" could lose the publish.
        """
        leftovers = [] if handler.in_hand is None else [handler.in_hand]
        handler.in_hand = None
        while not session.delivered_message_queue.empty():
            leftovers.append(session.delivered_message_queue.get_nowait())
        for message in leftovers:
            await self._deliver(session, message)

    async def _session_monitor(self) -> None:
        # Replaces amqtt's, which could remove a session a new connection had just taken.
        while True:
            await asyncio.sleep(1)
            await self.expire_sessions(time.time())

    async def expire_sessions(self, now: float) -> None:
        """Drop disconnected clean sessions and persistent ones past their expiry."""
        expiry = self.config.session_expiry_interval
        for client_id in list(self._sessions):
            if client_id in self._client_locks or client_id in self._live:
                continue
            entry = self._sessions.get(client_id)
            if entry is None or entry[0].transitions.state != "disconnected":
                continue
            last = entry[0].last_disconnect_time
            if entry[0].clean_session or (
                expiry is not None and last is not None and last < now - expiry
            ):
                await self._cleanup_session(client_id)
        for topic_filter in [f for f, subs in self._subscriptions.items() if not subs]:
            del self._subscriptions[topic_filter]

    # -- lifecycle events ---------------------------------------------------------------

    async def _publish_presence(self, conn: _Connection, reason: DisconnectReason | None) -> None:
        if not has_lifecycle_events(conn.client_id):
            return
        now_ms = time.time_ns() // 1_000_000
        if reason is None:
            topic = presence_topic("connected", conn.client_id)
            payload = connected_event(
                client_id=conn.client_id,
                timestamp_ms=now_ms,
                session_identifier=conn.session_identifier,
                principal_identifier=conn.certificate_id,
                ip_address=conn.ip_address,
                version_number=conn.version_number,
            )
        else:
            topic = presence_topic("disconnected", conn.client_id)
            payload = disconnected_event(
                client_id=conn.client_id,
                timestamp_ms=now_ms,
                session_identifier=conn.session_identifier,
                principal_identifier=conn.certificate_id,
                reason=reason,
                version_number=conn.version_number,
            )
        await self._broadcast_message(None, topic, payload, 1)

    # -- SUBSCRIBE ----------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Authorize a filter (SUBACK 0x80 when denied), grant QoS ≤ 1, enforce the 50 limit."""
        topic_filter, qos = subscription
        conn = _connection_of(session)
        problem = "no connection" if conn is None else filter_problem(topic_filter)
        if conn is None or problem is not None:
            _log.info("SUBSCRIBE %r refused: %s", topic_filter, problem)
            return _SUBACK_FAILURE
        if not self._authorize(conn, Action.SUBSCRIBE, topic_filter):
            _log.info("client %s: SUBSCRIBE %r not authorized", conn.client_id, topic_filter)
            return _SUBACK_FAILURE
        entries = self._subscriptions.get(topic_filter)
        mine = [i for i, (s, _) in enumerate(entries or ()) if s.client_id == session.client_id]
        if (
            not mine
            and conn.principal.role is not Role.SERVICE
            and self._subscription_count(session) >= MAX_SUBSCRIPTIONS_PER_CONNECTION
        ):
            _log.info(
                "client %s: more than %d subscriptions",
                conn.client_id,
                MAX_SUBSCRIPTIONS_PER_CONNECTION,
            )
            return _SUBACK_FAILURE
        granted = min(qos, 1)
        if entries is None:
            entries = []
            self._subscriptions[topic_filter] = entries
        if mine:
            entries[mine[0]] = (session, granted)
        else:
            entries.append((session, granted))
        _filters_of(session).add(topic_filter)
        return granted

    def _is_subscribed(self, session: Session, topic_filter: str) -> bool:
        entries = self._subscriptions.get(topic_filter, ())
        return any(s.client_id == session.client_id for s, _ in entries)

    def _subscription_count(self, session: Session) -> int:
        filters = _filters_of(session)
        filters.intersection_update([f for f in filters if self._is_subscribed(session, f)])
        return len(filters)

    async def _del_all_subscriptions(self, session: Session) -> None:
        # amqtt's scans every filter of every client; the session knows its own filters.
        filters = _filters_of(session)
        for topic_filter in filters:
            if (
                self._del_subscription(topic_filter, session)
                and not self._subscriptions[topic_filter]
            ):
                del self._subscriptions[topic_filter]
        filters.clear()

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # IoT Core delivers a retained message only to a filter equal to its topic.
        topic_filter, qos = subscription
        retained = self._retained_messages.get(topic_filter)
        conn = _connection_of(session)
        if retained is None or conn is None or conn.closing:
            return
        if not self._authorize(conn, Action.RECEIVE, topic_filter):
            return
        handler = self._get_handler(session)
        if handler is not None:
            qos = min(qos, 1, 1 if retained.qos is None else retained.qos)
            self._tasks_queue.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)
                )
            )

    # -- PUBLISH and delivery -----------------------------------------------------------

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: _IotHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        # amqtt 0.12.1's method *without* its [MQTT-4.7.2-1] check, which closed the
        # connection of any client publishing to a `$` topic (so no `$aws/...` request could
        # work). Topic validity, size and the policy were checked in _IotHandler.handle_publish
        # before the PUBACK; the publish QoS travels with the message so delivery uses
        # min(publish QoS, subscription QoS).
        app_message = wait_deliver.result()
        handler.in_hand = None
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if app_message is not None:
            await self._deliver(client_session, app_message)
        return True

    async def _deliver(self, session: Session, app_message: Any) -> None:
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=app_message
        )
        await self._broadcast_message(session, app_message.topic, app_message.data, app_message.qos)
        if app_message.publish_packet is not None and app_message.publish_packet.retain_flag:
            await self.retain_message(session, app_message.topic, app_message.data, app_message.qos)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        # Replaces amqtt's, which sent one copy per matching filter: IoT Core delivers a message
        # once per connection (at the highest QoS granted among its matching filters), checks
        # iot:Receive per delivery and matches topics its own way.
        broadcast = await self._broadcast_queue.get()
        topic, data, pub_qos = broadcast["topic"], broadcast["data"], broadcast.get("qos")
        if topic is None or data is None:
            return
        targets: dict[str, tuple[Session, int]] = {}
        for topic_filter in self._subscriptions.matching(topic):
            for session, sub_qos in self._subscriptions.get(topic_filter, ()):
                known = targets.get(session.client_id)
                if known is None or sub_qos > known[1]:
                    targets[session.client_id] = (session, sub_qos)
        if targets:
            self.refresh()  # once per message, not once per receiver
        for session, sub_qos in targets.values():
            qos = sub_qos if pub_qos is None else min(pub_qos, sub_qos)
            conn = _connection_of(session)
            if conn is None or not self._authorize(conn, Action.RECEIVE, topic, refresh=False):
                continue
            handler = self._get_handler(session)
            if session.transitions.state != "connected" or conn.closing or handler is None:
                # Offline (or going): a persistent session keeps QoS 1 messages for later.
                if not session.clean_session and qos >= 1:
                    await self._retain_broadcast_message(broadcast, qos, session)
                continue
            running_tasks.append(
                asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False))
            )

    def _matches(self, topic: str, a_filter: str) -> bool:
        return topic_matches(a_filter, topic)
