"""The local IoT Core broker layer, end to end: real brokers, real TLS, real clients.

Every test taking `cloud` runs on both backends (mosquitto and embedded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from awscrt import mqtt
from paho.mqtt.reasoncodes import ReasonCode

from certs import CertificateAuthority
from cloud_stubs import CertStatus, LocalIoTCore, ThingIdentity
from tests.stubs._clients import (
    aiomqtt_device,
    crt5_device,
    crt5_publish,
    crt5_start,
    crt5_stop,
    crt5_subscribe,
    crt311_connection,
    mqtt5_supported,
)

REFUSED = (aiomqtt.MqttError, ssl.SSLError, ConnectionError, OSError)


async def _next_payload(client: aiomqtt.Client, timeout: float = 5) -> tuple[str, dict[str, Any]]:
    async with asyncio.timeout(timeout):
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            return str(msg.topic), json.loads(msg.payload)
    raise AssertionError("unreachable")


async def test_aiomqtt_device_pub_sub_own_topics(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("robot-1")
    async with aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/robot-1/#", qos=1)
        await dev.publish("cmd/robot-1/ping", json.dumps({"n": 1}), qos=1)
        topic, body = await _next_payload(dev)
    assert (topic, body) == ("cmd/robot-1/ping", {"n": 1})


async def test_service_sees_device_telemetry_and_device_gets_plus_filter_responses(
    cloud: LocalIoTCore,
) -> None:
    ident = cloud.create_thing("robot-2")
    async with cloud.service_client("test") as svc, aiomqtt_device(cloud, ident) as dev:
        await svc.subscribe("dt/#", qos=1)
        await dev.subscribe("$aws/things/robot-2/shadow/name/x/get/+", qos=1)
        await dev.publish("dt/robot-2/telemetry", b'{"battery": 81}', qos=1)
        topic, body = await _next_payload(svc)
        assert (topic, body) == ("dt/robot-2/telemetry", {"battery": 81})
        await svc.publish("$aws/things/robot-2/shadow/name/x/get/accepted", b'{"v": 1}', qos=1)
        topic, body = await _next_payload(dev)
        assert topic == "$aws/things/robot-2/shadow/name/x/get/accepted"


async def test_awsiotsdk_client_connects_and_round_trips(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("robot-3")
    if mqtt5_supported(cloud):
        dev = crt5_device(cloud, ident)
        await crt5_start(dev)
        try:
            assert await crt5_subscribe(dev, "dt/robot-3/+") == [1]
            assert await crt5_publish(dev, "dt/robot-3/t", {"x": 1}) == 0
            topic, payload = await asyncio.wait_for(dev.received.get(), 5)
            assert (topic, json.loads(payload)) == ("dt/robot-3/t", {"x": 1})
        finally:
            await crt5_stop(dev)
    else:  # the embedded broker speaks MQTT 3.1.1 only: use awsiotsdk's 3.1.1 builder
        conn = crt311_connection(cloud, ident)
        await asyncio.wrap_future(conn.connect())
        got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_message(topic: str, payload: bytes, **_: object) -> None:
            loop.call_soon_threadsafe(got.put_nowait, (topic, payload))

        sub, _ = conn.subscribe("dt/robot-3/+", mqtt.QoS.AT_LEAST_ONCE, on_message)
        await asyncio.wrap_future(sub)
        pub, _ = conn.publish("dt/robot-3/t", b'{"x": 1}', mqtt.QoS.AT_LEAST_ONCE)
        await asyncio.wrap_future(pub)
        topic, payload = await asyncio.wait_for(got.get(), 5)
        assert (topic, json.loads(payload)) == ("dt/robot-3/t", {"x": 1})
        await asyncio.wrap_future(conn.disconnect())


async def test_wrong_client_id_is_refused(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("robot-4")
    cloud.create_thing("robot-5")
    with pytest.raises(REFUSED):
        async with aiomqtt_device(cloud, ident, client_id="robot-5"):
            pass


async def test_unknown_ca_is_refused(cloud: LocalIoTCore, tmp_path: Path) -> None:
    other = CertificateAuthority.create(common_name="stranger")
    issued = other.issue_device_cert("robot-6")
    issued.write(tmp_path / "c.pem", tmp_path / "k.pem")
    cloud.create_thing("robot-6")
    fake = ThingIdentity(
        "robot-6",
        issued.certificate_id,
        tmp_path / "c.pem",
        tmp_path / "k.pem",
        cloud.paths.ca_cert,
    )
    with pytest.raises(REFUSED):
        async with aiomqtt_device(cloud, fake):
            pass


@pytest.mark.parametrize("status", [CertStatus.INACTIVE, CertStatus.REVOKED])
async def test_inactive_and_revoked_certificates_are_refused(
    cloud: LocalIoTCore, status: CertStatus
) -> None:
    ident = cloud.create_thing("robot-7")
    async with aiomqtt_device(cloud, ident):
        pass
    cloud.registry.set_certificate_status(ident.certificate_id, status)
    await cloud.reload()
    with pytest.raises(REFUSED):
        async with aiomqtt_device(cloud, ident):
            pass


async def test_deactivation_disconnects_a_connected_device_and_reactivation_restores(
    cloud: LocalIoTCore,
) -> None:
    ident = cloud.create_thing("robot-8")
    async with aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/robot-8/#", qos=1)

        async def read_until_dropped() -> None:
            async for _ in dev.messages:
                pass

        reader = asyncio.create_task(read_until_dropped())
        cloud.registry.set_certificate_status(ident.certificate_id, CertStatus.INACTIVE)
        await cloud.reload()
        async with asyncio.timeout(10):
            while not reader.done():  # the broker drops us on reload or on the next operation
                with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
                    await asyncio.wait_for(dev.publish("cmd/robot-8/x", b"{}", qos=1), 0.5)
                await asyncio.sleep(0.1)
        with pytest.raises(aiomqtt.MqttError):
            reader.result()
    cloud.registry.set_certificate_status(ident.certificate_id, CertStatus.ACTIVE)
    await cloud.reload()
    async with aiomqtt_device(cloud, ident) as dev:
        await dev.publish("cmd/robot-8/x", b"{}", qos=1)


async def test_device_cannot_touch_another_things_topics(cloud: LocalIoTCore) -> None:
    a = cloud.create_thing("robot-a")
    b = cloud.create_thing("robot-b")
    async with aiomqtt_device(cloud, a) as dev_a, aiomqtt_device(cloud, b) as dev_b:
        for flt in (
            "dt/robot-b/#",
            "$aws/things/robot-b/shadow/#",
            "$aws/things/+/shadow/get/+",
            "#",
        ):
            granted = await dev_a.subscribe(flt, qos=1)
            codes = [g.value if isinstance(g, ReasonCode) else int(g) for g in granted]
            assert all(c >= 0x80 for c in codes), (flt, codes)
        await dev_a.subscribe("dt/robot-a/#", qos=1)
        await dev_b.publish("dt/robot-b/secret", b'{"s": 1}', qos=1)
        await dev_b.publish("$aws/things/robot-b/shadow/update", b'{"state": {}}', qos=1)
        with pytest.raises(TimeoutError):
            await _next_payload(dev_a, timeout=1.0)
    # Publishing on B's topic: MQTT 5 gets a negative PUBACK, MQTT 3.1.1 is disconnected.
    async with cloud.service_client("spy") as spy:
        await spy.subscribe("dt/robot-b/#", qos=1)
        async with aiomqtt_device(cloud, a) as dev_a:
            with contextlib.suppress(aiomqtt.MqttError):
                await dev_a.publish("dt/robot-b/forged", b"{}", qos=1)
        with pytest.raises(TimeoutError):
            await _next_payload(spy, timeout=1.0)


async def test_presence_events(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("robot-p")
    async with cloud.service_client("presence") as svc:
        await svc.subscribe("$aws/events/presence/+/robot-p", qos=1)
        async with aiomqtt_device(cloud, ident):
            topic, connected = await _next_payload(svc)
        assert topic == "$aws/events/presence/connected/robot-p"
        assert connected["eventType"] == "connected"
        assert connected["clientId"] == "robot-p"
        assert connected["timestamp"] > 1_600_000_000_000  # epoch milliseconds
        assert connected["principalIdentifier"] == ident.certificate_id
        topic, gone = await _next_payload(svc)
        assert topic == "$aws/events/presence/disconnected/robot-p"
        assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
        assert gone["clientInitiatedDisconnect"] is True
        assert gone["sessionIdentifier"] == connected["sessionIdentifier"]
        assert gone["versionNumber"] == connected["versionNumber"]


async def test_endpoint_file_written_and_removed(tmp_path: Path, cloud_broker: str) -> None:
    core = LocalIoTCore(tmp_path / "s", broker=cloud_broker, port=0)  # type: ignore[arg-type]
    async with core:
        data = json.loads(core.paths.endpoint_file.read_text())
        assert {"host", "port", "ca_file", "broker"} <= data.keys()
        assert data["broker"] == cloud_broker
        assert data["port"] == core.endpoint.port
    assert not core.paths.endpoint_file.exists()


async def test_state_survives_restart(tmp_path: Path, cloud_broker: str) -> None:
    async with LocalIoTCore(tmp_path / "s", broker=cloud_broker, port=0) as core:  # type: ignore[arg-type]
        ident = core.create_thing("persist-1")
    core = LocalIoTCore(tmp_path / "s", broker=cloud_broker, port=0)  # type: ignore[arg-type]
    async with core, aiomqtt_device(core, ident) as dev:
        await dev.publish("dt/persist-1/x", b"{}", qos=1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # test_endpoint_file_written_and_removed / test_state_survives_restart take cloud_broker
    # without `cloud`: parametrize them over both backends too.
    if "cloud_broker" in metafunc.fixturenames and "cloud" not in metafunc.fixturenames:
        metafunc.parametrize("cloud_broker", ["mosquitto", "embedded"], indirect=True)
