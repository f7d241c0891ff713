"""mosquitto backend: lifecycle events ($aws/events/presence/...) published by the plugin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from tests.broker.conftest_mosquitto import (
    Env,
    broker_env,
    next_message,
    payload_json,
    requires_mosquitto,
)

pytestmark = requires_mosquitto

SESSION_TAKEN_OVER_OR_EOF = (0, 0x8E)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


@pytest.fixture
async def watcher(env: Env) -> AsyncIterator[aiomqtt.Client]:
    async with env.service_client("-watcher") as svc:
        await svc.subscribe("$aws/events/presence/+/+", qos=1)
        yield svc


async def _event(svc: aiomqtt.Client, client_id: str, timeout: float = 5.0) -> dict[str, object]:
    """Next presence event about ``client_id`` (others, e.g. service clients, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await next_message(svc, timeout=max(0.01, deadline - time.monotonic()))
        if msg.topic.value.endswith("/" + client_id):
            event = payload_json(msg)
            assert msg.topic.value == f"$aws/events/presence/{event['eventType']}/{client_id}"
            assert msg.qos == 1
            assert not msg.retain
            return event


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_connected_then_disconnected(env: Env, watcher: aiomqtt.Client) -> None:
    thing = env.device("robot-p")
    before = _now_ms()
    async with env.client(thing):
        connected = await _event(watcher, "robot-p")
    disconnected = await _event(watcher, "robot-p")
    after = _now_ms()

    assert set(connected) == {
        "clientId",
        "timestamp",
        "eventType",
        "sessionIdentifier",
        "principalIdentifier",
        "ipAddress",
        "versionNumber",
    }
    assert connected["clientId"] == "robot-p"
    assert connected["eventType"] == "connected"
    assert connected["principalIdentifier"] == thing.certificate_id
    assert connected["ipAddress"] == "127.0.0.1"
    assert connected["versionNumber"] == 0
    session = connected["sessionIdentifier"]
    assert isinstance(session, str)
    assert len(session) == 32
    int(session, 16)

    assert disconnected == {
        "clientId": "robot-p",
        "timestamp": disconnected["timestamp"],
        "eventType": "disconnected",
        "clientInitiatedDisconnect": True,
        "sessionIdentifier": session,
        "principalIdentifier": thing.certificate_id,
        "disconnectReason": "CLIENT_INITIATED_DISCONNECT",
        "versionNumber": 0,
    }
    for event in (connected, disconnected):
        ts = event["timestamp"]
        assert isinstance(ts, int)
        assert before - 1000 <= ts <= after + 1000  # epoch milliseconds
    assert isinstance(disconnected["timestamp"], int)
    assert isinstance(connected["timestamp"], int)
    assert disconnected["timestamp"] >= connected["timestamp"]

    async with env.client(thing):
        again = await _event(watcher, "robot-p")
    assert again["versionNumber"] == 1
    assert again["sessionIdentifier"] != session
    assert (await _event(watcher, "robot-p"))["versionNumber"] == 1


async def test_duplicate_client_id_drops_the_old_connection(
    env: Env, watcher: aiomqtt.Client
) -> None:
    thing = env.device("robot-d")
    old = await env.raw(thing)
    assert await old.connack_code("robot-d") == 0
    first = await _event(watcher, "robot-d")

    new = await env.raw(thing)
    assert await new.connack_code("robot-d") == 0
    await old.closed_by_server(timeout=5)
    await old.close()

    events = [await _event(watcher, "robot-d"), await _event(watcher, "robot-d")]
    by_type = {e["eventType"]: e for e in events}
    dropped = by_type["disconnected"]
    assert dropped["disconnectReason"] == "DUPLICATE_CLIENTID"
    assert dropped["clientInitiatedDisconnect"] is False
    assert dropped["sessionIdentifier"] == first["sessionIdentifier"]
    assert dropped["versionNumber"] == 0
    assert by_type["connected"]["versionNumber"] == 1

    # the new connection works and its own disconnect is a normal one
    assert await new.subscribe("dt/robot-d/#") == 1
    await new.disconnect()
    final = await _event(watcher, "robot-d")
    assert final["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert final["versionNumber"] == 1


async def test_connection_lost(env: Env, watcher: aiomqtt.Client) -> None:
    thing = env.device("robot-l")
    raw = await env.raw(thing, v5=False)
    assert await raw.connack_code("robot-l") == 0
    await _event(watcher, "robot-l")
    await raw.close()  # no DISCONNECT packet
    event = await _event(watcher, "robot-l")
    assert event["disconnectReason"] == "CONNECTION_LOST"
    assert event["clientInitiatedDisconnect"] is False


async def test_protocol_error_is_client_error(env: Env, watcher: aiomqtt.Client) -> None:
    thing = env.device("robot-e")
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-e") == 0
    await _event(watcher, "robot-e")
    await raw.connect("robot-e")  # a second CONNECT is a protocol error
    await raw.close()
    event = await _event(watcher, "robot-e")
    assert event["disconnectReason"] == "CLIENT_ERROR"


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_qos2_publish_is_client_error(env: Env, watcher: aiomqtt.Client, v5: bool) -> None:
    thing = env.device("robot-q")
    raw = await env.raw(thing, v5=v5)
    assert await raw.connack_code("robot-q") == 0
    await _event(watcher, "robot-q")
    assert await raw.publish("dt/robot-q/x", b"x", qos=2) is None
    await raw.close()
    event = await _event(watcher, "robot-q")
    assert event["disconnectReason"] == "CLIENT_ERROR"


@pytest.mark.slow
async def test_keepalive_timeout(env: Env, watcher: aiomqtt.Client) -> None:
    thing = env.device("robot-k")
    raw = await env.raw(thing)
    pkt = await raw.connect("robot-k", keepalive=1)
    assert pkt is not None
    assert pkt.body[1] == 0
    # mosquitto checks keep-alives every 5 s and allows 1.5 x keepalive of silence
    event = await _event(watcher, "robot-k", timeout=12)
    assert event["eventType"] == "connected"
    event = await _event(watcher, "robot-k", timeout=12)
    assert event["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    await raw.close()


async def test_no_events_for_client_ids_with_wildcards(env: Env, watcher: aiomqtt.Client) -> None:
    svc = env.service
    assert svc is not None
    async with env.client(svc, "svc+plus"), env.client(svc, "svc#hash"):
        pass
    async with env.client(svc, "svc-plain"):
        pass
    # the first event to arrive is about the plain id: none were sent for the others
    msg = await next_message(watcher)
    assert msg.topic.value == "$aws/events/presence/connected/svc-plain"


async def test_devices_cannot_subscribe_to_lifecycle_events(env: Env) -> None:
    thing = env.device("robot-s")
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-s") == 0
    assert await raw.subscribe("$aws/events/presence/connected/robot-s") == 0x87
    await raw.disconnect()
