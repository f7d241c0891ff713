"""mosquitto backend: who may connect (certificate, registry status, client id, TLS)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from tests.broker.conftest_mosquitto import (
    Env,
    Row,
    broker_env,
    next_message,
    payload_json,
    requires_mosquitto,
    wait_until,
)

pytestmark = requires_mosquitto

NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


async def test_device_connects_and_uses_its_own_topics(env: Env) -> None:
    thing = env.device("robot-1")
    async with env.client(thing) as dev, env.service_client() as svc:
        await dev.subscribe("$aws/things/robot-1/shadow/get/+", qos=1)
        await dev.subscribe("dt/robot-1/#", qos=1)
        await svc.publish("$aws/things/robot-1/shadow/get/accepted", b'{"state":{}}', qos=1)
        msg = await next_message(dev)
        assert msg.topic.value == "$aws/things/robot-1/shadow/get/accepted"
        await dev.publish("dt/robot-1/telemetry", b"42", qos=1)
        msg = await next_message(dev)
        assert (msg.topic.value, msg.payload) == ("dt/robot-1/telemetry", b"42")


async def test_mqtt311_device_connects(env: Env) -> None:
    thing = env.device("robot-311")
    async with env.client(thing, v5=False) as dev:
        await dev.subscribe("cmd/robot-311/#", qos=1)
        await dev.publish("cmd/robot-311/x", b"hi", qos=1)
        assert (await next_message(dev)).payload == b"hi"


async def test_username_sent_by_the_client_is_ignored(env: Env) -> None:
    thing = env.device("robot-u")
    other = env.device("robot-v")
    # A client claiming another certificate id as username still acts as itself.
    async with env.client(thing, username=other.certificate_id) as dev:
        result = await dev.subscribe("dt/robot-v/#", qos=1)
        assert [rc.value for rc in result] == [NOT_AUTHORIZED]  # type: ignore[union-attr]


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_client_id_other_than_thing_name_is_refused(env: Env, v5: bool) -> None:
    thing = env.device("robot-2")
    env.device("robot-3")
    raw = await env.raw(thing, v5=v5)
    code = await raw.connack_code("robot-3")
    await raw.close()
    # MQTT 5: CONNACK 0x87. MQTT 3.1.1: IoT Core hangs up without a CONNACK.
    assert code == (NOT_AUTHORIZED if v5 else None)


async def test_refused_mqtt5_connect_raises_in_aiomqtt(env: Env) -> None:
    thing = env.device("robot-4")
    with pytest.raises(aiomqtt.MqttCodeError) as info:
        async with env.client(thing, "not-robot-4"):
            pass
    assert info.value.rc == NOT_AUTHORIZED


async def test_certificate_unknown_to_the_registry_is_refused(env: Env) -> None:
    stranger = env.pki.issue("stranger")  # signed by the stub CA, never registered
    raw = await env.raw(stranger)
    assert await raw.connack_code("stranger") == NOT_AUTHORIZED
    await raw.close()


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED", "PENDING_ACTIVATION"])
async def test_certificate_not_active_is_refused(env: Env, status: str) -> None:
    thing = env.device(f"robot-{status.lower()}", status=status)
    raw = await env.raw(thing)
    assert await raw.connack_code(thing.name) == NOT_AUTHORIZED
    await raw.close()


async def test_client_id_over_128_bytes_is_refused(env: Env) -> None:
    svc = env.service
    assert svc is not None
    raw = await env.raw(svc)
    assert await raw.connack_code("s" * 129) == NOT_AUTHORIZED
    await raw.close()
    raw = await env.raw(svc)
    assert await raw.connack_code("s" * 128) == 0
    await raw.disconnect()


@pytest.mark.parametrize("kind", ["foreign_ca", "expired"])
async def test_bad_certificate_is_refused_during_tls(env: Env, kind: str) -> None:
    ident = env.pki.issue(f"bad-{kind}", foreign=kind == "foreign_ca", expired=kind == "expired")
    env.register(ident)  # even a registered id cannot get past TLS
    try:
        raw = await env.raw(ident)
    except (ssl.SSLError, ConnectionError):
        return  # handshake failed on our side (TLS 1.2)
    # TLS 1.3: the server rejects the client certificate after the client's handshake is done.
    assert await raw.connack_code(ident.name) is None
    await raw.close()


async def test_deactivation_kicks_the_client_until_reactivated(env: Env) -> None:
    thing = env.device("robot-5")
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-5") == 0
    env.set_status(thing, "INACTIVE")  # no reload(): the plugin notices the file change
    disconnect = await raw.closed_by_server(timeout=5)
    assert disconnect.kind == 14
    assert disconnect.body[:1] == bytes([ADMINISTRATIVE_ACTION])
    await raw.close()

    raw = await env.raw(thing)
    assert await raw.connack_code("robot-5") == NOT_AUTHORIZED
    await raw.close()

    env.set_status(thing, "ACTIVE")
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-5") == 0
    await raw.disconnect()


async def test_revocation_with_reload_is_immediate_and_reported(env: Env) -> None:
    thing = env.device("robot-6")
    async with env.service_client() as svc:
        await svc.subscribe("$aws/events/presence/disconnected/robot-6", qos=1)
        raw = await env.raw(thing, v5=False)
        assert await raw.connack_code("robot-6") == 0
        env.set_status(thing, "REVOKED")
        await env.broker.reload()
        await raw.closed_by_server(timeout=2)
        await raw.close()
        event = payload_json(await next_message(svc))
        assert event["disconnectReason"] == "AUTH_ERROR"
        assert event["clientInitiatedDisconnect"] is False


async def test_removal_from_the_registry_kicks_the_client(env: Env) -> None:
    thing = env.device("robot-7")
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-7") == 0
    del env.rows[thing.certificate_id]
    env.write_registry()
    await raw.closed_by_server(timeout=5)
    await raw.close()


async def test_registry_created_after_start_is_picked_up(env: Env) -> None:
    # Many things registered at once, then one connects right away (no reload, no sleep).
    things = [env.pki.issue(f"bulk-{i}") for i in range(50)]
    for ident in things:
        env.rows[ident.certificate_id] = Row("ACTIVE", "device", ident.name)
    env.write_registry()
    raw = await env.raw(things[-1])
    assert await raw.connack_code("bulk-49") == 0
    await raw.disconnect()
    await wait_until(lambda: "bulk-49 disconnected." in env.broker.log_path.read_text())


async def test_large_registry(env: Env) -> None:
    for i in range(20_000):
        fake = hashlib.sha256(f"fake-{i}".encode()).hexdigest()
        env.rows[fake] = Row("ACTIVE" if i % 2 else "REVOKED", "device", f"fake-{i}")
    first = env.pki.issue("aaa-first")
    env.rows["0" * 64] = Row("ACTIVE", "device", "zero")
    env.register(first)
    last = env.device("zzz-last")
    for ident in (first, last):
        raw = await env.raw(ident)
        assert await raw.connack_code(ident.name) == 0
        await raw.disconnect()
    assert "loaded 20004 certificates" in env.broker.log_path.read_text()


async def test_mqtt311_refusal_with_connack_option(tmp_path: Path) -> None:
    async with broker_env(tmp_path, mqtt311_connect_refusal="connack") as env:
        thing = env.device("robot-c")
        raw = await env.raw(thing, v5=False)
        assert await raw.connack_code("not-robot-c") == 5  # CONNACK "not authorized"
        await raw.close()
        raw = await env.raw(thing, v5=False)
        assert await raw.connack_code("robot-c") == 0
        await raw.disconnect()
