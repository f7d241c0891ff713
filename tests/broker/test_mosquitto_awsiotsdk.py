"""mosquitto backend seen through AWS's own client: awsiotsdk's MQTT5 builder (awscrt)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest_mosquitto import Env, Identity, broker_env, requires_mosquitto

mqtt5 = pytest.importorskip("awscrt.mqtt5")
builder = pytest.importorskip("awsiot.mqtt5_client_builder")

pytestmark = requires_mosquitto

TIMEOUT = 10


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


@dataclass
class Sdk:
    """An awscrt MQTT5 client built the way device code builds it, with its events as futures."""

    client: Any = None
    connected: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    failed: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    stopped: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    received: list[Any] = field(default_factory=list)
    got_message: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)

    @staticmethod
    def _set(fut: concurrent.futures.Future[Any], value: Any) -> None:
        if not fut.done():
            fut.set_result(value)

    def on_publish(self, data: Any) -> None:
        self.received.append(data.publish_packet)
        self._set(self.got_message, data.publish_packet)


def _sdk(env: Env, ident: Identity, client_id: str) -> Sdk:
    sdk = Sdk()
    sdk.client = builder.mtls_from_path(
        endpoint="localhost",
        port=env.broker.port,
        cert_filepath=str(ident.cert_path),
        pri_key_filepath=str(ident.key_path),
        ca_filepath=str(env.paths.ca_cert),
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
        on_publish_received=sdk.on_publish,
        on_lifecycle_connection_success=lambda d: Sdk._set(sdk.connected, d),
        on_lifecycle_connection_failure=lambda d: Sdk._set(sdk.failed, d),
        on_lifecycle_stopped=lambda d: Sdk._set(sdk.stopped, d),
    )
    return sdk


async def _wait(fut: concurrent.futures.Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(fut), TIMEOUT)


async def _stop(sdk: Sdk) -> None:
    sdk.client.stop()
    await _wait(sdk.stopped)


async def test_sdk_device_subscribes_with_plus_filter_and_gets_accepted(env: Env) -> None:
    thing = env.device("sdk-robot")
    sdk = _sdk(env, thing, "sdk-robot")
    sdk.client.start()
    try:
        success = await _wait(sdk.connected)
        assert success.connack_packet.reason_code == mqtt5.ConnectReasonCode.SUCCESS
        assert success.connack_packet.maximum_qos == mqtt5.QoS.AT_LEAST_ONCE
        assert success.negotiated_settings.receive_maximum_from_server == 100

        suback = await _wait(
            sdk.client.subscribe(
                mqtt5.SubscribePacket(
                    subscriptions=[
                        mqtt5.Subscription(
                            "$aws/things/sdk-robot/shadow/get/+", mqtt5.QoS.AT_LEAST_ONCE
                        )
                    ]
                )
            )
        )
        assert suback.reason_codes == [mqtt5.SubackReasonCode.GRANTED_QOS_1]

        done = await _wait(
            sdk.client.publish(
                mqtt5.PublishPacket(
                    topic="$aws/things/sdk-robot/shadow/get",
                    payload=b"{}",
                    qos=mqtt5.QoS.AT_LEAST_ONCE,
                )
            )
        )
        assert done.puback.reason_code in (
            mqtt5.PubackReasonCode.SUCCESS,
            mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
        )

        async with env.service_client() as svc:
            await svc.publish("$aws/things/sdk-robot/shadow/get/accepted", b'{"v":1}', qos=1)
        packet = await _wait(sdk.got_message)
        assert packet.topic == "$aws/things/sdk-robot/shadow/get/accepted"
        assert packet.payload == b'{"v":1}'

        denied = await _wait(
            sdk.client.publish(
                mqtt5.PublishPacket(
                    topic="$aws/things/other/shadow/update",
                    payload=b"{}",
                    qos=mqtt5.QoS.AT_LEAST_ONCE,
                )
            )
        )
        assert denied.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED

        suback = await _wait(
            sdk.client.subscribe(
                mqtt5.SubscribePacket(
                    subscriptions=[
                        mqtt5.Subscription("$aws/things/other/shadow/#", mqtt5.QoS.AT_LEAST_ONCE)
                    ]
                )
            )
        )
        assert suback.reason_codes == [mqtt5.SubackReasonCode.NOT_AUTHORIZED]
    finally:
        await _stop(sdk)


async def test_sdk_wrong_client_id_gets_connack_not_authorized(env: Env) -> None:
    thing = env.device("sdk-robot-2")
    sdk = _sdk(env, thing, "someone-else")
    sdk.client.start()
    try:
        failure = await _wait(sdk.failed)
        assert failure.connack_packet is not None
        assert failure.connack_packet.reason_code == mqtt5.ConnectReasonCode.NOT_AUTHORIZED
        assert not sdk.connected.done()
    finally:
        await _stop(sdk)
