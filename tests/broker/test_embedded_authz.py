"""Embedded broker: per-thing authorization (SUBSCRIBE, PUBLISH, RECEIVE) from the policies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_stubs._policy import Action, Effect, Role, Statement
from cloud_stubs.broker._embedded import EmbeddedBroker
from tests.broker._embedded_support import (
    Pki,
    client_tls,
    device,
    granted,
    make_pki,
    messages_until,
    next_message,
    no_message,
    presence,
    publish_packet,
    raw_connect,
    running,
    service,
    wait_disconnected,
)

SUBACK_FAILURE = 0x80


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


async def test_cannot_subscribe_to_another_things_topics(broker: EmbeddedBroker, pki: Pki) -> None:
    async with device(broker, pki, "T1") as t1:
        for topic_filter in (
            "dt/T2/#",
            "$aws/things/T2/shadow/#",
            "dt/#",
            "#",
            "$aws/things/+/shadow/#",
        ):
            codes = granted(await t1.subscribe(topic_filter, qos=1))
            assert codes == [SUBACK_FAILURE], topic_filter
        # per filter in one SUBSCRIBE, and the connection stays up
        filters = [("dt/T1/a", 1), ("dt/T2/a", 1), ("$aws/things/T1/shadow/get/+", 0)]
        assert granted(await t1.subscribe(filters)) == [1, SUBACK_FAILURE, 0]
        await t1.publish("dt/T1/a", b"ok", qos=1)
        assert (await next_message(t1)).payload == b"ok"


async def test_publish_to_another_things_topic_disconnects(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    async with service(broker, pki) as svc, device(broker, pki, "T2") as t2:
        await svc.subscribe("$aws/events/presence/disconnected/T1", qos=1)
        await t2.subscribe("dt/T2/#")
        async with device(broker, pki, "T1") as t1:
            await t1.publish("dt/T2/cmd", b"hijack")
            await wait_disconnected(t1)
        event = presence(await next_message(svc))
        assert event["disconnectReason"] == "AUTH_ERROR"
        await no_message(t2)


async def test_denied_qos1_publish_gets_no_puback(broker: EmbeddedBroker, pki: Pki) -> None:
    conn = await raw_connect(broker, client_tls(pki, pki.things["T1"]), "T1")
    assert conn.connack == b"\x20\x02\x00\x00"
    await conn.send(publish_packet("$aws/things/T2/shadow/update", b"{}", qos=1, packet_id=7))
    assert await conn.read_until_closed() == b""  # closed, and no PUBACK (0x40 ...) before it
    await conn.close()


async def test_never_receives_another_things_messages(broker: EmbeddedBroker, pki: Pki) -> None:
    async with (
        service(broker, pki) as svc,
        device(broker, pki, "T1") as t1,
        device(broker, pki, "T2") as t2,
    ):
        for topic_filter in (
            "dt/T1/#",
            "cmd/T1/#",
            "$aws/things/T1/shadow/#",
            "$aws/things/T1/jobs/#",
        ):
            assert granted(await t1.subscribe(topic_filter, qos=1)) == [1]
        await t2.publish("dt/T2/telemetry", b"t2", qos=1)
        await t2.publish("$aws/things/T2/shadow/update", b"{}", qos=1)
        for topic in (
            "dt/T2/x",
            "cmd/T2/x",
            "$aws/things/T2/shadow/update/accepted",
            "$aws/things/T2/jobs/notify",
        ):
            await svc.publish(topic, b"for T2", qos=1)
        await svc.publish("dt/T1/barrier", b"", qos=1)
        got = await messages_until(t1, "dt/T1/barrier")
        assert [m.topic.value for m in got] == ["dt/T1/barrier"]


async def test_receive_is_checked_per_message(pki: Pki) -> None:
    thing = "${iot:Connection.Thing.ThingName}"
    pki.write_policies(
        [Statement(Effect.DENY, Role.DEVICE, Action.RECEIVE, f"dt/{thing}/secret/*")]
    )
    async with running(pki) as broker, service(broker, pki) as svc, device(broker, pki, "T1") as t1:
        assert granted(await t1.subscribe("dt/T1/#", qos=1)) == [1]
        await svc.publish("dt/T1/secret/a", b"hidden", qos=1)
        await svc.publish("dt/T1/open", b"visible", qos=1)
        msg = await next_message(t1)
        assert (msg.topic.value, msg.payload) == ("dt/T1/open", b"visible")
        await t1.publish("dt/T1/still-connected", b"yes", qos=1)
        assert (await next_message(t1)).topic.value == "dt/T1/still-connected"


async def test_policy_change_applies_without_restart(broker: EmbeddedBroker, pki: Pki) -> None:
    thing = "${iot:Connection.Thing.ThingName}"
    async with device(broker, pki, "T1") as t1:
        assert granted(await t1.subscribe("dt/T1/a", qos=1)) == [1]
        pki.write_policies([Statement(Effect.DENY, Role.DEVICE, Action.SUBSCRIBE, f"dt/{thing}/b")])
        assert granted(await t1.subscribe("dt/T1/b", qos=1)) == [SUBACK_FAILURE]
