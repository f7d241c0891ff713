"""Embedded broker: IoT Core broker rules (delivery once, `a/#` vs `a`, QoS, size, retained)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_stubs.broker._embedded import EmbeddedBroker
from cloud_stubs.broker._embedded_iot import MAX_PAYLOAD_BYTES
from tests.broker._embedded_support import (
    Pki,
    client_tls,
    device,
    granted,
    make_pki,
    messages_until,
    next_message,
    presence,
    publish_packet,
    raw_connect,
    running,
    service,
)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


async def test_delivered_once_per_connection(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc, device(broker, pki, "T1") as t1:
        for topic_filter, qos in (("dt/T1/#", 0), ("dt/T1/+", 1), ("dt/T1/x", 0)):
            await t1.subscribe(topic_filter, qos=qos)
        await svc.subscribe("$aws/things/+/shadow/#", qos=1)
        await svc.subscribe("$aws/things/T1/shadow/+", qos=1)
        await t1.publish("dt/T1/x", b"once", qos=1)
        await t1.publish("$aws/things/T1/shadow/get", b"{}", qos=1)
        await t1.publish("dt/T1/barrier", b"", qos=1)
        got = await messages_until(t1, "dt/T1/barrier")
        assert [(m.topic.value, m.qos) for m in got] == [("dt/T1/x", 1), ("dt/T1/barrier", 1)]
        await svc.publish("$aws/things/T1/shadow/barrier", b"", qos=1)
        got = await messages_until(svc, "$aws/things/T1/shadow/barrier")
        assert [m.topic.value for m in got] == [
            "$aws/things/T1/shadow/get",
            "$aws/things/T1/shadow/barrier",
        ]


async def test_multilevel_wildcard_does_not_match_parent(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("sensor/#", qos=1)
        await svc.subscribe("barrier", qos=1)
        for topic in ("sensor", "sensor/", "sensor/a/b", "sensors/a", "barrier"):
            await svc.publish(topic, topic.encode(), qos=1)
        got = [m.topic.value for m in await messages_until(svc, "barrier")]
        assert got == ["sensor/", "sensor/a/b", "barrier"]


async def test_qos_granted_at_most_1_and_capped_by_publish(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    async with device(broker, pki, "T1") as t1:
        assert granted(await t1.subscribe("dt/T1/#", qos=2)) == [1]
        await t1.publish("dt/T1/q0", b"", qos=0)
        await t1.publish("dt/T1/q1", b"", qos=1)
        assert [(m.topic.value, m.qos) for m in await messages_until(t1, "dt/T1/q1")] == [
            ("dt/T1/q0", 0),
            ("dt/T1/q1", 1),
        ]


async def test_qos2_publish_closes_the_connection(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
    await conn.send(publish_packet("dt/T1/x", b"2", qos=2, packet_id=3))
    assert await conn.read_until_closed() == b""  # no PUBREC
    await conn.close()


async def test_payload_limit(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("$aws/events/presence/disconnected/T1", qos=1)
        async with device(broker, pki, "T1") as t1:
            await t1.subscribe("dt/T1/#", qos=1)
            await t1.publish("dt/T1/max", b"x" * MAX_PAYLOAD_BYTES, qos=1)
            assert len((await next_message(t1)).payload) == MAX_PAYLOAD_BYTES
        conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
        await conn.send(publish_packet("dt/T1/big", b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1))
        assert await conn.read_until_closed() == b""
        await conn.close()
        events = [presence(await next_message(svc)) for _ in range(2)]
        assert [e["disconnectReason"] for e in events] == [
            "CLIENT_INITIATED_DISCONNECT",
            "CLIENT_ERROR",
        ]


async def test_topic_limits(broker: EmbeddedBroker, pki: Pki) -> None:
    at_limit = ["dt/T1/" + "a" * 250, "dt/T1/1/2/3/4/5/6"]  # 256 bytes; 7 slashes
    over = ["dt/T1/" + "a" * 251, "dt/T1/1/2/3/4/5/6/7"]
    async with device(broker, pki, "T1") as t1:
        codes = granted(await t1.subscribe([(f, 1) for f in at_limit + over]))
        assert codes == [1, 1, 0x80, 0x80]
        await t1.publish(at_limit[0], b"ok", qos=1)
        assert (await next_message(t1)).topic.value == at_limit[0]
    for topic in over:
        conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
        await conn.send(publish_packet(topic, b"", qos=1))
        assert await conn.read_until_closed() == b""
        await conn.close()


async def test_retained_only_for_exact_filters(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.publish("dt/T1/config", b"v1", qos=1, retain=True)
    async with device(broker, pki, "T1") as t1:
        await t1.subscribe("dt/T1/#", qos=1)
        await t1.subscribe("dt/T1/config", qos=1)
        msg = await next_message(t1)
        assert (msg.topic.value, msg.payload, msg.retain) == ("dt/T1/config", b"v1", True)
        await t1.publish("dt/T1/barrier", b"", qos=1)
        assert [m.topic.value for m in await messages_until(t1, "dt/T1/barrier")] == [
            "dt/T1/barrier"
        ]


async def test_retained_not_leaked_to_unauthorized_subscriber(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    async with service(broker, pki) as svc:
        await svc.publish("dt/T2/config", b"secret", qos=1, retain=True)
    async with device(broker, pki, "T1") as t1:
        await t1.subscribe("dt/T2/config", qos=1)  # denied
        await t1.subscribe("dt/T1/barrier", qos=1)
        await t1.publish("dt/T1/barrier", b"", qos=1)
        assert [m.topic.value for m in await messages_until(t1, "dt/T1/barrier")] == [
            "dt/T1/barrier"
        ]


async def test_retain_on_reserved_topic_closes(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
    packet = bytearray(publish_packet("$aws/things/T1/shadow/get", b"{}", qos=1, packet_id=9))
    packet[0] |= 0x01  # RETAIN
    await conn.send(bytes(packet))
    assert await conn.read_until_closed() == b""
    await conn.close()


async def test_publish_then_disconnect_is_delivered(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc:
        await svc.subscribe("dt/T1/#", qos=1)
        for i in range(10):
            async with device(broker, pki, "T1") as t1:
                await t1.publish(f"dt/T1/{i}", b"last words", qos=i % 2)
        got = [(await next_message(svc)).topic.value for _ in range(10)]
        assert sorted(got) == sorted(f"dt/T1/{i}" for i in range(10))


async def test_subscription_limit_per_connection(broker: EmbeddedBroker, pki: Pki) -> None:
    async with device(broker, pki, "T1") as t1:
        filters = [(f"dt/T1/{i}", 1) for i in range(50)]
        assert granted(await t1.subscribe(filters[:25])) == [1] * 25
        assert granted(await t1.subscribe(filters[25:])) == [1] * 25
        assert granted(await t1.subscribe("dt/T1/one-too-many", qos=1)) == [0x80]
        assert granted(await t1.subscribe("dt/T1/7", qos=0)) == [0]  # re-subscribing is fine
        await t1.unsubscribe("dt/T1/0")
        assert granted(await t1.subscribe("dt/T1/one-too-many", qos=1)) == [1]
    async with service(broker, pki) as svc:  # the stub's services are not limited
        many = [(f"$aws/things/T{i}/shadow/#", 1) for i in range(60)]
        assert granted(await svc.subscribe(many[:30])) == [1] * 30
        assert granted(await svc.subscribe(many[30:])) == [1] * 30
