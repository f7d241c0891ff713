"""Embedded broker: TLS, CONNECT authentication, deactivation, duplicate client ids, keep-alive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from cloud_stubs.broker import Broker, _embedded_amqtt
from cloud_stubs.broker._embedded import EmbeddedBroker
from tests.broker._embedded_support import (
    Pki,
    client_tls,
    device,
    granted,
    make_pki,
    messages_until,
    next_message,
    presence,
    raw_connect,
    running,
    service,
    wait_disconnected,
)

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


async def test_interface(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    b = EmbeddedBroker(pki.paths, port=0)
    backend: Broker = b  # satisfies the stub's broker protocol (checked by mypy)
    assert backend.name == "embedded"
    assert (b.host, b.port) == ("127.0.0.1", 0)
    with caplog.at_level("WARNING", logger="cloud_stubs.broker._embedded"):
        async with b:
            assert b.port > 0
            notices = [r for r in caplog.records if r.name == "cloud_stubs.broker._embedded"]
            assert len(notices) == 1
            assert "a few hundred devices" in notices[0].getMessage()
            with pytest.raises(RuntimeError):
                await b.start()
    await b.stop()  # stopping twice is harmless


async def test_device_uses_own_topics(broker: EmbeddedBroker, pki: Pki) -> None:
    async with device(broker, pki, "T1") as t1:
        assert granted(await t1.subscribe("dt/T1/#", qos=1)) == [1]
        await t1.publish("dt/T1/telemetry", b"42", qos=1)
        msg = await next_message(t1)
        assert (msg.topic.value, msg.payload, msg.qos) == ("dt/T1/telemetry", b"42", 1)


async def test_connack_accepted_on_the_wire(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
    assert conn.connack == CONNACK_ACCEPTED
    await conn.close()


async def test_wrong_client_id_refused(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T2")
    assert conn.connack == CONNACK_NOT_AUTHORIZED
    assert await conn.closed_by_peer()
    with pytest.raises(aiomqtt.MqttCodeError) as info:
        async with device(broker, pki, "T1", client_id="not-T1"):
            pass
    assert str(info.value.rc) == "Not authorized"  # paho's name for CONNACK code 5


async def test_unknown_certificate_refused(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.unregistered), "T9")
    assert conn.connack == CONNACK_NOT_AUTHORIZED
    await conn.close()


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED", "PENDING_ACTIVATION"])
async def test_not_active_certificate_refused(pki: Pki, status: str) -> None:
    pki.set_status("T1", status)
    async with running(pki) as broker:
        conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
        assert conn.connack == CONNACK_NOT_AUTHORIZED
        await conn.close()


@pytest.mark.parametrize("which", ["foreign", "expired"])
async def test_unknown_ca_and_expired_fail_at_tls(
    broker: EmbeddedBroker, pki: Pki, which: str
) -> None:
    ident = pki.foreign if which == "foreign" else pki.expired
    conn = await raw_connect(broker, client_tls(pki, ident), ident.name)
    assert conn.connack is None
    assert conn.error is not None


async def test_mqtt5_connect_is_refused(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1", level=5)
    assert conn.connack == b"\x20\x02\x00\x01"  # unacceptable protocol version
    await conn.close()


@pytest.mark.parametrize("pickup", ["reload", "file-watch"])
async def test_deactivation_disconnects(broker: EmbeddedBroker, pki: Pki, pickup: str) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/disconnected/T1", qos=1)
        async with device(broker, pki, "T1") as t1, device(broker, pki, "T2") as t2:
            pki.set_status("T1", "INACTIVE")
            if pickup == "reload":
                await broker.reload()
            await wait_disconnected(t1)
            event = presence(await next_message(svc))
            assert event["disconnectReason"] == "AUTH_ERROR"
            assert event["clientInitiatedDisconnect"] is False
            # the other device is not affected
            await t2.publish("dt/T2/x", b"still here", qos=1)
        conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
        assert conn.connack == CONNACK_NOT_AUTHORIZED
        await conn.close()


async def test_deactivation_applies_to_next_operation(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc, device(broker, pki, "T1") as t1:
        await svc.subscribe("dt/T1/#")
        pki.set_status("T1", "REVOKED")
        await t1.publish("dt/T1/x", b"after revocation")  # checked before the file watch runs
        await wait_disconnected(t1)
        await svc.publish("dt/T1/barrier", b"")
        assert [m.topic.value for m in await messages_until(svc, "dt/T1/barrier")] == [
            "dt/T1/barrier"
        ]


async def test_duplicate_client_id_closes_older_connection(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/+/T1", qos=1)
        async with device(broker, pki, "T1") as first:
            connected_1 = presence(await next_message(svc))
            async with device(broker, pki, "T1") as second:
                await wait_disconnected(first)
                events = await messages_until(svc, "$aws/events/presence/connected/T1")
                gone, connected_2 = presence(events[0]), presence(events[-1])
                assert gone["eventType"] == "disconnected"
                assert gone["disconnectReason"] == "DUPLICATE_CLIENTID"
                assert gone["sessionIdentifier"] == connected_1["sessionIdentifier"]
                assert gone["versionNumber"] == connected_1["versionNumber"]
                assert connected_2["versionNumber"] > connected_1["versionNumber"]
                await second.subscribe("dt/T1/#")
                await second.publish("dt/T1/x", b"new owner", qos=1)
                assert (await next_message(second)).payload == b"new owner"


async def test_simultaneous_connects_with_one_client_id(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/+/T1", qos=1)
        ctx = client_tls(pki, pki.things["T1"])
        conns = await asyncio.gather(*(raw_connect(broker, ctx, "T1") for _ in range(3)))
        assert [c.connack for c in conns] == [CONNACK_ACCEPTED] * 3
        events = [presence(await next_message(svc)) for _ in range(5)]
        # connections take over one after the other: c0, d0, c1, d1, c2
        assert [(e["eventType"], e["versionNumber"]) for e in events] == [
            ("connected", 0),
            ("disconnected", 0),
            ("connected", 1),
            ("disconnected", 1),
            ("connected", 2),
        ]
        assert all(e["disconnectReason"] == "DUPLICATE_CLIENTID" for e in events[1::2])
        closed = [await c.closed_by_peer(timeout=0.2) for c in conns]
        assert sorted(closed) == [False, True, True]
        for conn in conns:
            await conn.close()


async def test_persistent_session_resumes(broker: EmbeddedBroker, pki: Pki) -> None:
    async with device(broker, pki, "T1", clean_session=False) as t1:
        await t1.subscribe("dt/T1/#", qos=1)
    async with service(broker, pki) as svc:
        await svc.publish("dt/T1/queued", b"while away", qos=1)
    async with device(broker, pki, "T1", clean_session=False) as t1:
        msg = await next_message(t1)
        assert (msg.topic.value, msg.payload) == ("dt/T1/queued", b"while away")


async def test_keep_alive_timeout(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedded_amqtt, "KEEP_ALIVE_BOUNDS", (1, 1200))
    async with running(pki) as broker, service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/disconnected/T1", qos=1)
        conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1", keep_alive=1)
        assert conn.connack == CONNACK_ACCEPTED
        # silent client: closed after 1.5 x keep-alive
        assert await conn.closed_by_peer(timeout=4)
        event = presence(await next_message(svc))
        assert event["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
        await conn.close()


async def test_will_topic_must_be_allowed(broker: EmbeddedBroker, pki: Pki) -> None:
    will = aiomqtt.Will("dt/T2/status", b"offline")
    with pytest.raises(aiomqtt.MqttCodeError) as info:
        async with device(broker, pki, "T1", will=will):
            pass
    assert str(info.value.rc) == "Not authorized"  # paho's name for CONNACK code 5


async def test_will_and_connection_lost(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("dt/T1/status", qos=1)
        await svc.subscribe("$aws/events/presence/disconnected/T1", qos=1)
        conn = await raw_connect(
            broker, client_tls(pki, pki.things["T1"]), "T1", will=("dt/T1/status", b"offline")
        )
        assert conn.connack == CONNACK_ACCEPTED
        conn.abort()  # the TCP connection drops without DISCONNECT
        got = {m.topic.value: m.payload for m in [await next_message(svc), await next_message(svc)]}
        assert got["dt/T1/status"] == b"offline"
        event = json.loads(got["$aws/events/presence/disconnected/T1"])
        assert event["disconnectReason"] == "CONNECTION_LOST"
        assert event["clientInitiatedDisconnect"] is False
