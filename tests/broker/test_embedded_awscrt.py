"""Embedded broker with the AWS IoT Device SDK v2 (awscrt) MQTT 3.1.1 client.

awscrt's MQTT 5 client cannot be used: amqtt 0.12.1 speaks MQTT 3.1.1 only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder

from cloud_stubs.broker._embedded import EmbeddedBroker
from tests.broker._embedded_support import TIMEOUT, Pki, make_pki, next_message, running, service


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


async def _wait(fut: Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(fut), TIMEOUT)


def _connection(broker: EmbeddedBroker, pki: Pki, thing: str, client_id: str) -> mqtt.Connection:
    ident = pki.things[thing]
    return mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",
        port=broker.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(pki.paths.ca_cert),
        client_id=client_id,
        clean_session=False,  # the builder's default, as devices use it
        keep_alive_secs=30,
    )


async def test_awscrt_shadow_style_round_trip(broker: EmbeddedBroker, pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def on_message(topic: str, payload: bytes, **_: Any) -> None:
        loop.call_soon_threadsafe(inbox.put_nowait, (topic, payload))

    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/things/+/shadow/get", qos=1)
        conn = _connection(broker, pki, "T1", "T1")
        await _wait(conn.connect())
        try:
            sub, _ = conn.subscribe(
                "$aws/things/T1/shadow/get/+", mqtt.QoS.AT_LEAST_ONCE, on_message
            )
            assert (await _wait(sub))["qos"] == mqtt.QoS.AT_LEAST_ONCE
            pub, _ = conn.publish(
                "$aws/things/T1/shadow/get", b'{"clientToken":"t"}', mqtt.QoS.AT_LEAST_ONCE
            )
            await _wait(pub)
            request = await next_message(svc)
            assert request.topic.value == "$aws/things/T1/shadow/get"
            await svc.publish("$aws/things/T1/shadow/get/accepted", b'{"clientToken":"t"}', qos=1)
            topic, payload = await asyncio.wait_for(inbox.get(), TIMEOUT)
            assert (topic, payload) == (
                "$aws/things/T1/shadow/get/accepted",
                b'{"clientToken":"t"}',
            )
        finally:
            await _wait(conn.disconnect())


async def test_awscrt_wrong_client_id_refused(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = _connection(broker, pki, "T1", "T2")
    # awscrt 0.36 reports every refused CONNACK as a protocol error, not the return code
    with pytest.raises(AwsCrtError, match="AWS_ERROR_MQTT_PROTOCOL_ERROR"):
        await _wait(conn.connect())
