"""Embedded broker: IoT Core lifecycle (presence) events."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_stubs.broker._embedded import EmbeddedBroker
from tests.broker._embedded_support import (
    Pki,
    device,
    granted,
    make_pki,
    messages_until,
    next_message,
    presence,
    running,
    service,
    wait_disconnected,
)

CONNECTED_KEYS = {
    "clientId",
    "timestamp",
    "eventType",
    "sessionIdentifier",
    "principalIdentifier",
    "ipAddress",
    "versionNumber",
}
DISCONNECTED_KEYS = (CONNECTED_KEYS - {"ipAddress"}) | {
    "clientInitiatedDisconnect",
    "disconnectReason",
}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_connected_and_disconnected_events(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/#", qos=1)
        before = _now_ms()
        for _ in range(2):
            async with device(broker, pki, "T1"):
                pass
        msgs = [await next_message(svc) for _ in range(4)]
        after = _now_ms()
    assert [m.topic.value for m in msgs] == [
        "$aws/events/presence/connected/T1",
        "$aws/events/presence/disconnected/T1",
    ] * 2
    events = [presence(m) for m in msgs]
    for event in events[0::2]:
        assert set(event) == CONNECTED_KEYS
        assert event["eventType"] == "connected"
        assert event["ipAddress"] == "127.0.0.1"
    for event in events[1::2]:
        assert set(event) == DISCONNECTED_KEYS
        assert event["eventType"] == "disconnected"
        assert event["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
        assert event["clientInitiatedDisconnect"] is True
    for event in events:
        assert event["clientId"] == "T1"
        assert event["principalIdentifier"] == pki.things["T1"].certificate_id
        assert isinstance(event["timestamp"], int)
        assert before <= event["timestamp"] <= after  # epoch milliseconds
        uuid.UUID(event["sessionIdentifier"])
    first, second = events[0:2], events[2:4]
    assert first[0]["sessionIdentifier"] == first[1]["sessionIdentifier"]
    assert first[0]["sessionIdentifier"] != second[0]["sessionIdentifier"]
    assert first[0]["versionNumber"] == first[1]["versionNumber"]
    assert second[0]["versionNumber"] == second[1]["versionNumber"] == first[0]["versionNumber"] + 1


async def test_no_events_for_client_ids_with_wildcards(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki, purpose="watch") as svc:
        await svc.subscribe("$aws/events/presence/#", qos=1)
        await svc.subscribe("barrier", qos=1)
        async with service(broker, pki, purpose="a+b"):
            pass
        async with device(broker, pki, "T2"):
            pass
        await svc.publish("barrier", b"", qos=1)
        got = [m.topic.value for m in await messages_until(svc, "barrier")]
    assert got == [
        "$aws/events/presence/connected/T2",
        "$aws/events/presence/disconnected/T2",
        "barrier",
    ]


async def test_device_cannot_subscribe_to_presence(broker: EmbeddedBroker, pki: Pki) -> None:
    async with device(broker, pki, "T1") as t1:
        assert granted(await t1.subscribe("$aws/events/presence/#", qos=1)) == [0x80]


async def test_stop_closes_connections(pki: Pki) -> None:
    async with running(pki) as broker, device(broker, pki, "T1") as t1, service(broker, pki) as svc:
        await svc.subscribe("dt/#", qos=1)
        started = time.monotonic()
        await broker.stop()
        await wait_disconnected(t1)
        await wait_disconnected(svc)
        assert time.monotonic() - started < 3
