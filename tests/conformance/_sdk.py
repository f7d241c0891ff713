"""AWS's own device clients (awsiotsdk V2 + awscrt) bridged to asyncio, plus raw MQTT helpers.

Everything here drives the unmodified ``awsiot`` service clients: the only glue is turning
their ``concurrent.futures`` and CRT-thread callbacks into asyncio awaitables. On mosquitto
the SDK talks MQTT 5 (``mqtt5_client_builder``); on the embedded broker (MQTT 3.1.1 only) it
uses ``mqtt_connection_builder``, exactly as a device application would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from awscrt import mqtt5, mqtt_request_response
from awsiot import (
    V2DeserializationFailure,
    V2ServiceException,
    mqtt5_client_builder,
    mqtt_connection_builder,
)

from cloud_stubs import LocalIoTCore, ThingIdentity

__all__ = [
    "MOSQUITTO_DUPLICATES_V5",
    "TIMEOUT",
    "Credentials",
    "EventStream",
    "RawCrt5",
    "allow_hook",
    "assert_epoch_seconds",
    "await_sdk",
    "collect",
    "deny_hook",
    "device_creds",
    "expect_rejected",
    "is_mqtt5",
    "next_json",
    "open_stream",
    "raw_client",
    "raw_crt5",
    "request_json",
    "rr_options",
    "sdk_connection",
    "suback_codes",
    "write_identity",
]

TIMEOUT = 10.0
"""Upper bound for any single response; reaching it means the stub is wrong."""

QUIET = 0.4
"""How long to listen for a message that must *not* arrive."""

MOSQUITTO_DUPLICATES_V5 = (
    "stub bug: mosquitto 2.0.11 delivers one copy per matching subscription to MQTT 5 "
    "clients (MQTT 3.1.1 clients get one), whatever 'allow_duplicate_messages' says, and "
    "iotcore_plugin.c does not deduplicate (spec §7.2: exactly once per connection)"
)


@dataclass(frozen=True)
class Credentials:
    """What a device connects with."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_id: str


def is_mqtt5(cloud: LocalIoTCore) -> bool:
    """True on mosquitto (MQTT 5); the embedded broker speaks MQTT 3.1.1 only."""
    return cloud.endpoint.broker == "mosquitto"


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from a CRT thread; ignore a loop that is gone."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(fut: asyncio.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def rr_options() -> mqtt_request_response.ClientOptions:
    """Request-response budget: enough for shadow update (2 filters) plus streams."""
    return mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=4,
        max_streaming_subscriptions=4,
        operation_timeout_in_seconds=int(TIMEOUT),
    )


@contextlib.asynccontextmanager
async def sdk_connection(cloud: LocalIoTCore, creds: Credentials) -> AsyncIterator[Any]:
    """A connected awscrt protocol client built by awsiotsdk's own builders.

    Yields an ``mqtt5.Client`` on mosquitto and an ``mqtt.Connection`` (3.1.1) on the
    embedded broker; either can be handed to the ``awsiot`` V2 service clients.
    """
    loop = asyncio.get_running_loop()
    host, port = cloud.endpoint.host, cloud.endpoint.port
    if is_mqtt5(cloud):
        connected: asyncio.Future[None] = loop.create_future()
        stopped = asyncio.Event()

        def on_success(_: mqtt5.LifecycleConnectSuccessData) -> None:
            _post(loop, _settle, connected)

        def on_failure(data: mqtt5.LifecycleConnectFailureData) -> None:
            err = ConnectionError(f"MQTT 5 connect failed: {data.exception!r}")
            _post(loop, _settle, connected, None, err)

        def on_stopped(_: mqtt5.LifecycleStoppedData) -> None:
            _post(loop, stopped.set)

        client = mqtt5_client_builder.mtls_from_path(
            endpoint=host,
            port=port,
            cert_filepath=str(creds.cert_file),
            pri_key_filepath=str(creds.key_file),
            ca_filepath=str(creds.ca_file),
            client_id=creds.client_id,
            on_lifecycle_connection_success=on_success,
            on_lifecycle_connection_failure=on_failure,
            on_lifecycle_stopped=on_stopped,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
            min_reconnect_delay_ms=30_000,
        )
        client.start()
        try:
            await asyncio.wait_for(connected, TIMEOUT)
            yield client
        finally:
            client.stop()
            await asyncio.wait_for(stopped.wait(), TIMEOUT)
    else:
        conn = mqtt_connection_builder.mtls_from_path(
            endpoint=host,
            port=port,
            cert_filepath=str(creds.cert_file),
            pri_key_filepath=str(creds.key_file),
            ca_filepath=str(creds.ca_file),
            client_id=creds.client_id,
            # the builder's defaults on purpose: persistent session, keep-alive 1200 s and
            # the `?SDK=PythonV2&Version=...` username, as SDK devices send them (§1.4)
        )
        await asyncio.wait_for(asyncio.wrap_future(conn.connect()), TIMEOUT)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(conn.disconnect()), TIMEOUT)


async def await_sdk(fut: concurrent.futures.Future[Any], timeout: float = TIMEOUT + 2) -> Any:
    """Await a V2 client's future; a timeout means the stub never answered (correctly)."""
    return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)


async def expect_rejected(fut: concurrent.futures.Future[Any]) -> Any:
    """Await a V2 call that must be rejected by the service; return the modeled error."""
    with pytest.raises(V2ServiceException) as info:
        await await_sdk(fut)
    err = info.value
    assert err.modeled_error is not None, (
        f"not a service rejection: {err.message}: {err.inner_error!r}"
    )
    return err.modeled_error


@dataclass
class EventStream:
    """Events of one awsiot V2 stream, as an asyncio queue."""

    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    stream: Any = None

    async def next(self, timeout: float = TIMEOUT) -> Any:
        """The next event; a payload the SDK could not deserialize fails the test."""
        event = await asyncio.wait_for(self.events.get(), timeout)
        if isinstance(event, V2DeserializationFailure):
            pytest.fail(f"the SDK could not parse {event.payload!r}: {event.inner_error!r}")
        return event

    async def assert_quiet(self, wait: float = QUIET) -> None:
        """Nothing (more) arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        assert self.events.empty(), f"unexpected event: {self.events.get_nowait()!r}"


async def open_stream(create: Callable[[Any], Any], event_class: type) -> EventStream:
    """Open a V2 ``create_*_stream`` and wait until its subscription is established.

    ``create`` is e.g. ``lambda opts: shadow.create_shadow_delta_updated_stream(req, opts)``.
    """
    from awsiot import ServiceStreamOptions  # noqa: PLC0415 - keep the namespace small

    loop = asyncio.get_running_loop()
    out = EventStream()
    established: asyncio.Future[None] = loop.create_future()
    kind = mqtt_request_response.SubscriptionStatusEventType

    def on_event(event: Any) -> None:
        assert isinstance(event, event_class)
        _post(loop, out.events.put_nowait, event)

    def on_status(status: mqtt_request_response.SubscriptionStatusEvent) -> None:
        if status.type == kind.SUBSCRIPTION_ESTABLISHED:
            _post(loop, _settle, established)
        elif status.type == kind.SUBSCRIPTION_HALTED:
            err = ConnectionError(f"stream subscription halted: {status.error!r}")
            _post(loop, _settle, established, None, err)

    def on_failure(failure: V2DeserializationFailure) -> None:
        _post(loop, out.events.put_nowait, failure)

    out.stream = create(ServiceStreamOptions(on_event, on_status, on_failure))
    out.stream.open()
    await asyncio.wait_for(established, TIMEOUT)
    return out


# -- raw MQTT -------------------------------------------------------------------------------


def _tls(creds: Credentials) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(creds.ca_file))
    ctx.load_cert_chain(str(creds.cert_file), str(creds.key_file))
    return ctx


def raw_client(
    cloud: LocalIoTCore, creds: Credentials, *, v5: bool | None = None
) -> aiomqtt.Client:
    """A plain aiomqtt client with a device's (or claim's) own certificate."""
    use5 = is_mqtt5(cloud) if v5 is None else v5
    return aiomqtt.Client(
        cloud.endpoint.host,
        cloud.endpoint.port,
        identifier=creds.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if use5 else aiomqtt.ProtocolVersion.V311,
        tls_context=_tls(creds),
        timeout=TIMEOUT,
    )


def _decoded(payload: bytes) -> Any:
    """Parsed JSON; ``None`` for an empty payload, the raw bytes for anything else."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def suback_codes(granted: Any) -> list[int]:
    """SUBACK codes as ints, whatever paho/aiomqtt hands back (ReasonCode or int)."""
    return [int(getattr(code, "value", code)) for code in granted]


async def next_json(client: aiomqtt.Client, timeout: float = TIMEOUT) -> tuple[str, Any]:
    """Next message as (topic, parsed JSON)."""
    async with asyncio.timeout(timeout):
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            return str(msg.topic), _decoded(msg.payload)
    raise AssertionError("message iterator ended")


async def collect(client: aiomqtt.Client, duration: float) -> list[tuple[str, Any]]:
    """Every message arriving within ``duration`` seconds, as (topic, parsed JSON)."""
    out: list[tuple[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            async for msg in client.messages:
                assert isinstance(msg.payload, bytes)
                out.append((str(msg.topic), _decoded(msg.payload)))
    return out


async def request_json(
    client: aiomqtt.Client, topic: str, payload: bytes | dict[str, Any], expect: str
) -> tuple[str, Any]:
    """Publish a request and return the first reply whose topic starts with ``expect``."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await client.publish(topic, data, qos=1)
    async with asyncio.timeout(TIMEOUT):
        while True:
            got_topic, body = await next_json(client)
            if got_topic.startswith(expect):
                return got_topic, body


@dataclass
class RawCrt5:
    """An awscrt MQTT 5 client used raw (no service client): sees reason codes."""

    client: mqtt5.Client
    received: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    disconnects: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        fut = self.client.subscribe(
            mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter, mqtt5.QoS(qos))])
        )
        suback = await asyncio.wait_for(asyncio.wrap_future(fut), TIMEOUT)
        return [int(c) for c in suback.reason_codes]

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> int | None:
        fut = self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos))
        )
        result = await asyncio.wait_for(asyncio.wrap_future(fut), TIMEOUT)
        return None if result.puback is None else int(result.puback.reason_code)


@contextlib.asynccontextmanager
async def raw_crt5(cloud: LocalIoTCore, creds: Credentials) -> AsyncIterator[RawCrt5]:
    """A started awscrt MQTT 5 client (no automatic reconnect during the test)."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    stopped = asyncio.Event()
    box: dict[str, RawCrt5] = {}

    def on_publish(data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        _post(loop, box["c"].received.put_nowait, (p.topic, bytes(p.payload or b"")))

    def on_success(_: mqtt5.LifecycleConnectSuccessData) -> None:
        _post(loop, _settle, connected)

    def on_failure(data: mqtt5.LifecycleConnectFailureData) -> None:
        code = None if data.connack_packet is None else int(data.connack_packet.reason_code)
        err = ConnectionError(f"CONNACK {code}: {data.exception!r}")
        _post(loop, _settle, connected, None, err)

    def on_disconnection(data: mqtt5.LifecycleDisconnectData) -> None:
        pkt = data.disconnect_packet
        _post(loop, box["c"].disconnects.put_nowait, None if pkt is None else int(pkt.reason_code))

    def on_stopped(_: mqtt5.LifecycleStoppedData) -> None:
        _post(loop, stopped.set)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=cloud.endpoint.host,
        port=cloud.endpoint.port,
        cert_filepath=str(creds.cert_file),
        pri_key_filepath=str(creds.key_file),
        ca_filepath=str(creds.ca_file),
        client_id=creds.client_id,
        on_publish_received=on_publish,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_disconnection=on_disconnection,
        on_lifecycle_stopped=on_stopped,
        retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
        min_reconnect_delay_ms=60_000,
        max_reconnect_delay_ms=60_000,
    )
    raw = RawCrt5(client)
    box["c"] = raw
    client.start()
    try:
        await asyncio.wait_for(connected, TIMEOUT)
        yield raw
    finally:
        client.stop()
        await asyncio.wait_for(stopped.wait(), TIMEOUT)


# -- checks ---------------------------------------------------------------------------------


def assert_epoch_seconds(value: Any, *, slack: float = 120) -> None:
    """An integer epoch-seconds timestamp close to now (not milliseconds, not a float)."""
    assert type(value) is int, f"timestamp {value!r} is not an integer"
    assert abs(value - time.time()) < slack, f"timestamp {value!r} is not epoch seconds of now"


def write_identity(
    directory: Path, name: str, cert_pem: str, key_pem: bytes | str
) -> tuple[Path, Path]:
    """Write a provisioned certificate and key the way a device would store them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_text(cert_pem)
    key.write_bytes(key_pem if isinstance(key_pem, bytes) else key_pem.encode())
    key.chmod(0o600)
    return cert, key


# -- pre-provisioning hooks (imported by the provisioning service by "module:function") -----


def deny_hook(event: dict[str, Any]) -> dict[str, Any]:
    """A pre-provisioning hook that refuses every device."""
    del event
    return {"allowProvisioning": False}


def allow_hook(event: dict[str, Any]) -> dict[str, Any]:
    """A pre-provisioning hook that allows and overrides the serial number."""
    assert event["parameters"]["SerialNumber"]
    return {"allowProvisioning": True, "parameterOverrides": {"SerialNumber": "hooked"}}


def device_creds(ident: ThingIdentity, client_id: str | None = None) -> Credentials:
    """A registered thing's credentials (client id = thing name unless told otherwise)."""
    return Credentials(
        ident.cert_file, ident.key_file, ident.ca_file, client_id or ident.thing_name
    )


def xfail_on(request: pytest.FixtureRequest, cloud: LocalIoTCore, broker: str, reason: str) -> None:
    """Mark the running test as a strict expected failure on one broker backend only."""
    if cloud.endpoint.broker == broker:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
