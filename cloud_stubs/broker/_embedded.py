"""The embedded broker: a pure-Python (amqtt) stand-in for AWS IoT Core's device-facing broker.

It runs inside the caller's event loop and needs nothing beyond pip packages, which makes it the
fallback when mosquitto is not installed. It is meant for small runs (a few hundred devices);
mosquitto is about 15 times faster per CPU second.

What it does as IoT Core does:

* One TLS listener; the client certificate must chain to the stub's CA and be valid (unknown
  CA and expired certificates fail the TLS handshake).
* CONNECT is accepted only for a certificate registered in the registry snapshot as ACTIVE
  whose role's policy allows ``iot:Connect`` on the client id (a device: client id = thing
  name). Usernames and passwords are ignored (awsiotsdk sends ``?SDK=...``).
* Authorization with the same policy statements and evaluation as the mosquitto plugin
  (:mod:`cloud_stubs._policy`): SUBSCRIBE against the filter string (denied filters get SUBACK
  0x80), PUBLISH against the topic (denied: the connection is closed without a PUBACK, as
  IoT Core does on MQTT 3.1.1), ``iot:Receive`` for every delivery (denied: not delivered,
  the connection stays).
* Registry and policy changes apply while running: on :meth:`EmbeddedBroker.reload`, within
  half a second through a file watch, and at the latest on the next operation. A connection
  whose certificate is no longer ACTIVE is closed (``AUTH_ERROR``).
* ``$aws/...`` topics work like any other topic for whoever the policy allows, including ``+``
  and ``#`` filters such as ``$aws/things/T/shadow/get/+``; a filter starting with a wildcard
  never matches a ``$`` topic.
* ``a/#`` does not match ``a`` (IoT Core's deviation from MQTT).
* A message is delivered once per connection even when several of its filters match, at the
  highest QoS granted among them (capped by the publish QoS).
* QoS 0 and 1 only: SUBACK grants min(requested, 1); a QoS 2 PUBLISH closes the connection.
* Limits: payload ≤ 128 KB, topics and filters ≤ 256 bytes and ≤ 7 slashes (the Basic Ingest
  prefix ``$aws/rules/<rule>/`` not counted), client id ≤ 128 bytes, 50 subscriptions per
  connection (not for the stub's service role); violations close the connection
  (``CLIENT_ERROR``) or fail the subscription.
* Keep-alive clamped to 30-1200 s (0 → 1200); 1.5 times the keep-alive of silence closes the
  connection (``MQTT_KEEP_ALIVE_TIMEOUT``).
* A second connection with the same client id closes the first (``DUPLICATE_CLIENTID``, will
  message sent), which finishes before the new one takes over the session.
* Persistent sessions (clean session 0): subscriptions and queued QoS 1 messages are kept for
  1 hour after the disconnect; CONNACK reports the session as present.
* Retained messages: delivered on SUBSCRIBE only to a filter equal to the topic; RETAIN on a
  ``$`` topic closes the connection; an empty retained payload deletes the message.
* The will topic is authorized at CONNECT like a publish.
* Lifecycle events ``$aws/events/presence/connected|disconnected/<clientId>`` (none for client
  ids containing ``#`` or ``+``), with ``timestamp`` in epoch ms, a ``sessionIdentifier``
  shared by both events of a connection, the certificate id as ``principalIdentifier`` and a
  ``versionNumber`` per client id that starts at 0 and grows by one per connection.
  Disconnect reasons: ``CLIENT_INITIATED_DISCONNECT``, ``CONNECTION_LOST``,
  ``DUPLICATE_CLIENTID``, ``MQTT_KEEP_ALIVE_TIMEOUT``, ``AUTH_ERROR`` (publish not authorized,
  certificate deactivated or revoked), ``CLIENT_ERROR`` (invalid publish, second CONNECT),
  ``SERVER_INITIATED_DISCONNECT`` (broker stopping).

Deviations from IoT Core:

* **MQTT 3.1.1 only.** amqtt 0.12.1 implements no MQTT 5: an MQTT 5 CONNECT is answered with
  CONNACK 0x01 (unacceptable protocol version). awscrt's MQTT 5 client (``Mqtt5Client``,
  ``mqtt5_client_builder``) cannot use this broker; use MQTT 3.1.1
  (``mqtt_connection_builder``, aiomqtt ``ProtocolVersion.V311``) or mosquitto. No user
  properties, so services cannot learn the requesting client id from the broker.
* A refused CONNECT gets a CONNACK before the connection is closed: return code 5 (not
  authorized), or 2 for a client id over 128 bytes. IoT Core closes an MQTT 3.1.1 connection
  without a CONNACK. (awscrt 0.36 reports either as ``AWS_ERROR_MQTT_PROTOCOL_ERROR``.)
* A denied SUBSCRIBE gets SUBACK 0x80 and the connection stays (IoT Core's current MQTT 3.1.1
  behaviour is an open question, see the protocol notes §6.3).
* No throttling: 100 publishes/s and 512 KiB/s per connection, 1 CONNECT/s per client id,
  account-wide rates, 100 in-flight QoS 1 messages and 8 filters per SUBSCRIBE are not
  enforced.
* Unacknowledged outgoing QoS 1 messages are not retried (amqtt waits 5 s for the PUBACK and
  drops the message); IoT Core retries for up to an hour. Queued messages of a persistent
  session are replayed at once, not at 10 msg/s.
* Basic Ingest (``$aws/rules/<rule>/...``) publishes go to subscribers of that topic like any
  other message; shared subscriptions (``$share/...``) are not supported.
* Policy and registry changes apply immediately (IoT Core: within 6-8 minutes for policies).
* Lifecycle events: no ``thingName``, no subscribe/unsubscribe or connect-failure events;
  ``sessionIdentifier`` is a random UUID (hex).
* State is in memory: retained messages and persistent sessions do not survive a restart.
* No ALPN/port-443 or WebSocket listener; one TLS listener only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from types import TracebackType
from typing import Self

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.errors import BrokerError as AmqttBrokerError

from cloud_stubs._errors import BrokerError
from cloud_stubs._paths import StatePaths
from cloud_stubs.broker._embedded_amqtt import LISTENER, IotBroker
from cloud_stubs.broker._embedded_auth import Authority
from cloud_stubs.broker._embedded_iot import DisconnectReason

__all__ = ["EmbeddedBroker", "server_tls_context"]

_log = logging.getLogger(__name__)

#: Seconds between checks of the registry snapshot and policy files.
_WATCH_INTERVAL = 0.5
_HANDSHAKE_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def server_tls_context(paths: StatePaths) -> ssl.SSLContext:
    """TLS ≥ 1.2, the stub's server certificate, client certificates required from the stub's CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(paths.server_cert, paths.server_key)
        ctx.load_verify_locations(cafile=paths.ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(
            f"embedded broker: cannot load the TLS files of {paths.root}: {exc}"
        ) from exc
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class EmbeddedBroker:
    """amqtt-based broker with IoT Core's authentication, policies and lifecycle events.

    Usage::

        async with EmbeddedBroker(StatePaths.at("state"), port=0) as broker:
            print(broker.host, broker.port)

    See the module docstring for what matches IoT Core and what does not.
    """

    name = "embedded"

    def __init__(self, paths: StatePaths, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure (not start) a broker for the state directory ``paths``."""
        self._paths = paths
        self._host = host
        self._port = port
        self._broker: IotBroker | None = None
        self._server: asyncio.Server | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        """Address the TLS listener is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """Port the TLS listener is bound to (the real one when 0 was asked, once started)."""
        return self._port

    async def start(self) -> None:
        """Start listening; return when clients can connect."""
        if self._broker is not None:
            raise RuntimeError("EmbeddedBroker is already running")
        _log.warning(
            "the embedded broker is pure Python (amqtt, MQTT 3.1.1 only) and meant for small runs "
            "(a few hundred devices); install mosquitto for more"
        )
        tls = server_tls_context(self._paths)
        authority = Authority(self._paths)
        authority.refresh(force=True)
        broker = IotBroker(authority)
        try:
            await broker.start()
        except AmqttBrokerError as exc:
            raise BrokerError(f"embedded broker: amqtt did not start: {exc}") from exc
        try:
            server = await asyncio.start_server(
                self._serve_connection,
                self._host,
                self._port,
                ssl=tls,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
            )
        except OSError as exc:
            await broker.shutdown()
            raise BrokerError(
                f"embedded broker: cannot listen on {self._host}:{self._port}: {exc}"
            ) from exc
        self._broker, self._server = broker, server
        self._port = server.sockets[0].getsockname()[1]
        self._watch_task = asyncio.create_task(
            self._watch(broker), name=f"cloud_stubs.embedded[{self._port}].watch"
        )
        _log.info("embedded broker listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Close every connection (``SERVER_INITIATED_DISCONNECT``) and stop listening."""
        broker, server, watch = self._broker, self._server, self._watch_task
        self._broker = self._server = self._watch_task = None
        if broker is None or server is None:
            return
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        server.close()
        await broker.close_all(DisconnectReason.SERVER_INITIATED_DISCONNECT)
        await broker.shutdown()
        await server.wait_closed()
        if self._connections:
            _done, pending = await asyncio.wait(self._connections, timeout=_STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_STOP_TIMEOUT)

    async def reload(self) -> None:
        """Re-read the registry snapshot and policies now; close connections no longer allowed."""
        if self._broker is None:
            raise RuntimeError("EmbeddedBroker is not running")
        self._broker.refresh(force=True)

    async def __aenter__(self) -> Self:
        """Start the broker."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        await self.stop()

    async def _watch(self, broker: IotBroker) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            broker.refresh()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hand one TLS connection to amqtt; close it when amqtt is done with it."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        out = StreamWriterAdapter(writer)
        try:
            broker = self._broker
            if broker is not None:
                await broker.external_connected(StreamReaderAdapter(reader), out, LISTENER)
        except Exception:  # noqa: BLE001 - one broken connection must not reach the server
            _log.exception("embedded broker: connection handling failed")
        finally:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(out.close(), _STOP_TIMEOUT)
            if task is not None:
                self._connections.discard(task)
