"""Real device clients for integration tests: aiomqtt and awsiotsdk (awscrt)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from awscrt import mqtt, mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder

from cloud_stubs import LocalIoTCore, ThingIdentity
from cloud_stubs._service_client import NODELAY, tls_context


def mqtt5_supported(core: LocalIoTCore) -> bool:
    return core.endpoint.broker == "mosquitto"


def aiomqtt_device(
    core: LocalIoTCore,
    ident: ThingIdentity,
    *,
    client_id: str | None = None,
    v5: bool | None = None,
) -> aiomqtt.Client:
    use5 = mqtt5_supported(core) if v5 is None else v5
    return aiomqtt.Client(
        core.endpoint.host,
        core.endpoint.port,
        identifier=client_id or ident.thing_name,
        protocol=aiomqtt.ProtocolVersion.V5 if use5 else aiomqtt.ProtocolVersion.V311,
        tls_context=tls_context(ident.ca_file, ident.cert_file, ident.key_file),
        timeout=10,
        socket_options=NODELAY,
    )


@dataclass
class CrtDevice:
    """An awscrt MQTT5 client bridged to asyncio for tests."""

    client: mqtt5.Client
    loop: asyncio.AbstractEventLoop
    received: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    connected: asyncio.Future[Any] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def crt5_device(
    core: LocalIoTCore, ident: ThingIdentity, *, client_id: str | None = None
) -> CrtDevice:
    loop = asyncio.get_running_loop()
    dev_box: dict[str, CrtDevice] = {}
    connected: asyncio.Future[Any] = loop.create_future()

    def on_publish(data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        loop.call_soon_threadsafe(dev_box["d"].received.put_nowait, (p.topic, bytes(p.payload)))

    def on_success(data: mqtt5.LifecycleConnectSuccessData) -> None:
        def ok() -> None:
            if not connected.done():
                connected.set_result(data)

        loop.call_soon_threadsafe(ok)

    def on_failure(data: mqtt5.LifecycleConnectFailureData) -> None:
        def fail() -> None:
            if not connected.done():
                connected.set_exception(ConnectionError(f"connect failed: {data.exception!r}"))

        loop.call_soon_threadsafe(fail)

    def on_stopped(_: mqtt5.LifecycleStoppedData) -> None:
        loop.call_soon_threadsafe(dev_box["d"].stopped.set)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=core.endpoint.host,
        port=core.endpoint.port,
        cert_filepath=str(ident.cert_file),
        pri_key_filepath=str(ident.key_file),
        ca_filepath=str(ident.ca_file),
        client_id=client_id or ident.thing_name,
        on_publish_received=on_publish,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=on_stopped,
        retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
        min_reconnect_delay_ms=60_000,
    )
    dev = CrtDevice(client, loop, connected=connected)
    dev_box["d"] = dev
    return dev


async def crt5_start(dev: CrtDevice, timeout: float = 10) -> None:
    dev.client.start()
    assert dev.connected is not None
    await asyncio.wait_for(dev.connected, timeout)


async def crt5_stop(dev: CrtDevice) -> None:
    dev.client.stop()
    await asyncio.wait_for(dev.stopped.wait(), 10)


async def crt5_subscribe(dev: CrtDevice, topic_filter: str) -> list[int]:
    fut: concurrent.futures.Future[Any] = dev.client.subscribe(
        mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter, mqtt5.QoS.AT_LEAST_ONCE)]
        )
    )
    suback = await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    return [int(c) for c in suback.reason_codes]


async def crt5_publish(dev: CrtDevice, topic: str, payload: Any) -> int:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    fut: concurrent.futures.Future[Any] = dev.client.publish(
        mqtt5.PublishPacket(topic=topic, payload=data, qos=mqtt5.QoS.AT_LEAST_ONCE)
    )
    result = await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    return int(result.puback.reason_code)


def crt311_connection(
    core: LocalIoTCore, ident: ThingIdentity, *, client_id: str | None = None
) -> mqtt.Connection:
    return mqtt_connection_builder.mtls_from_path(
        endpoint=core.endpoint.host,
        port=core.endpoint.port,
        cert_filepath=str(ident.cert_file),
        pri_key_filepath=str(ident.key_file),
        ca_filepath=str(ident.ca_file),
        client_id=client_id or ident.thing_name,
        clean_session=True,
        keep_alive_secs=30,
    )
