"""RequestChannel against the real local IoT Core (shadow service)."""

from __future__ import annotations

import pytest

from cloud_stubs import LocalIoTCore
from device_sdk import (
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    RequestChannel,
    RequestTimeoutError,
)


def _device(core: LocalIoTCore, name: str, transport: str = "paho") -> DeviceClient:
    ident = core.create_thing(name)
    return DeviceClient(
        DeviceIdentity.from_files(ident.cert_file, ident.key_file, ident.ca_file),
        Endpoint(core.endpoint.host, core.endpoint.port, ca_file=ident.ca_file),
        transport=transport,  # type: ignore[arg-type]
        # The embedded broker speaks MQTT 3.1.1 only.
        options=ConnectionOptions(mqtt_version=5 if core.endpoint.broker == "mosquitto" else 3),
    )


async def test_correlated_requests_get_their_own_answers(cloud: LocalIoTCore) -> None:
    async with _device(cloud, "req-1") as dev, RequestChannel(dev) as ch:
        topic = "$aws/things/req-1/shadow/get"
        missing = await ch.request(topic, {})
        assert not missing.accepted
        assert missing.body["code"] == 404
        upd = await ch.request("$aws/things/req-1/shadow/update", {"state": {"reported": {"x": 1}}})
        assert upd.accepted
        assert upd.body["version"] == 1
        got = await ch.request(topic, {})
        assert got.accepted
        assert got.body["state"] == {"reported": {"x": 1}}


async def test_timeout_when_nobody_answers(cloud: LocalIoTCore) -> None:
    async with _device(cloud, "req-2") as dev, RequestChannel(dev, timeout_s=0.5) as ch:
        with pytest.raises(RequestTimeoutError):
            await ch.request("dt/req-2/nobody-home", {})
