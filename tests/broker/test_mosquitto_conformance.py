"""mosquitto backend: IoT Core's subscription semantics, which MQTT and mosquitto do differently.

* one copy of a message per connection, however many of its subscriptions match (§7.2; mosquitto
  2.0.11 sends an MQTT 5 client one per matching subscription);
* ``a/#`` does not match ``a`` (§5.3);
* stored retained messages only for a filter equal to their topic (§5.5);
* at most 50 subscriptions per connection for devices (§5.7).

The plugin implements these from the ACL checks (iotcore_plugin.c header). Negative checks end
with a sentinel message from the same publisher: mosquitto keeps one publisher's order, so once
the sentinel is in, anything that would have been delivered before it is in too.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from tests.broker.conftest_mosquitto import (
    Env,
    Identity,
    Raw,
    broker_env,
    next_message,
    requires_mosquitto,
)

pytestmark = requires_mosquitto

NOT_AUTHORIZED = 0x87
V311_SUBACK_FAILURE = 0x80
SENTINEL = b"sentinel"

V5_AND_V311 = pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class Wire(Raw):
    """Raw plus UNSUBSCRIBE, multi-filter SUBSCRIBE and PUBLISH flags."""

    async def subscribe_many(self, filters: list[str], qos: int = 1) -> list[int] | None:
        mid = self._next_mid()
        body = struct.pack("!H", mid) + self._props()
        for topic_filter in filters:
            body += _mqtt_str(topic_filter) + bytes([qos])
        self._send(0x82, body)
        while True:
            pkt = await self.read()
            if pkt is None:
                return None
            if pkt.kind == 9:  # SUBACK
                pos = 2 + (1 + pkt.body[2] if self.v5 else 0)
                return list(pkt.body[pos:])

    async def unsubscribe(self, topic_filter: str) -> None:
        mid = self._next_mid()
        self._send(0xA2, struct.pack("!H", mid) + self._props() + _mqtt_str(topic_filter))
        while True:
            pkt = await self.read()
            assert pkt is not None, "the broker hung up"
            if pkt.kind == 11:  # UNSUBACK
                return

    async def until_sentinel(self, timeout: float = 5.0) -> list[tuple[str, bytes, bool]]:
        """Every PUBLISH (topic, payload, retain) before the sentinel payload (excluded)."""
        seen: list[tuple[str, bytes, bool]] = []
        async with asyncio.timeout(timeout):
            while True:
                pkt = await self.read(timeout)
                assert pkt is not None, f"the broker hung up; got {seen}"
                if pkt.kind != 3:
                    continue
                (tlen,) = struct.unpack("!H", pkt.body[:2])
                topic = pkt.body[2 : 2 + tlen].decode()
                pos = 2 + tlen
                if (pkt.flags >> 1) & 3:
                    self._send(0x40, pkt.body[pos : pos + 2])
                    pos += 2
                if self.v5:
                    plen, mult = 0, 1
                    while True:
                        b = pkt.body[pos]
                        pos += 1
                        plen += (b & 0x7F) * mult
                        mult *= 128
                        if not b & 0x80:
                            break
                    pos += plen
                payload = pkt.body[pos:]
                if payload == SENTINEL:
                    return seen
                seen.append((topic, payload, bool(pkt.flags & 1)))


async def _wire(env: Env, ident: Identity, client_id: str, *, v5: bool, **connect: object) -> Wire:
    wire = Wire(v5=v5)
    await wire.open(env.broker.host, env.broker.port, env.tls(ident))
    assert await wire.connack_code(client_id, **connect) == 0
    return wire


def _persistent(v5: bool, *, clean: bool = False) -> dict[str, object]:
    return {"clean": clean, "session_expiry": 3600} if v5 else {"clean": clean}


async def _publish(svc: aiomqtt.Client, *messages: tuple[str, bytes]) -> None:
    for topic, payload in messages:
        await svc.publish(topic, payload, qos=1)


# -- one copy per connection (§7.2) -----------------------------------------------------------


@V5_AND_V311
async def test_overlapping_subscriptions_deliver_one_copy(env: Env, v5: bool) -> None:
    thing = env.device("dup")
    dev = await _wire(env, thing, "dup", v5=v5)
    for topic_filter in ("cmd/dup/+", "cmd/dup/x", "cmd/dup/#"):
        assert await dev.subscribe(topic_filter) == 1
    async with env.service_client() as svc:
        # the same payload again and again: each is a new message and arrives once
        await _publish(svc, *[("cmd/dup/x", b"same")] * 3, ("cmd/dup/y", b"y"))
        for qos in (0, 1):
            await svc.publish("cmd/dup/x", b"same", qos=qos)
        await svc.publish("cmd/dup/x", SENTINEL, qos=1)
    seen = await dev.until_sentinel()
    same = ("cmd/dup/x", b"same")
    assert [(t, p) for t, p, _ in seen] == [same, same, same, ("cmd/dup/y", b"y"), same, same]
    await dev.disconnect()


async def test_each_connection_gets_its_copy(env: Env) -> None:
    assert env.service is not None
    devices = [await _wire(env, env.service, f"watcher-{i}", v5=i % 2 == 0) for i in range(4)]
    for dev in devices:
        assert await dev.subscribe("dt/+/x") == 1
        assert await dev.subscribe("dt/#") == 1
    thing = env.device("fan")
    async with env.client(thing, "fan") as pub:
        await pub.publish("dt/fan/x", b"one", qos=1)
        await pub.publish("dt/fan/x", SENTINEL, qos=1)
    for dev in devices:
        assert [(t, p) for t, p, _ in await dev.until_sentinel()] == [("dt/fan/x", b"one")]
        await dev.disconnect()


async def test_lifecycle_events_arrive_once(env: Env) -> None:
    thing = env.device("alive")
    async with env.service_client() as svc:
        for topic_filter in (
            "$aws/events/presence/connected/+",
            "$aws/events/presence/+/alive",
            "$aws/events/#",
        ):
            await svc.subscribe(topic_filter, qos=1)
        async with env.client(thing, "alive"):
            msg = await next_message(svc)
            assert msg.topic.value == "$aws/events/presence/connected/alive"
        msg = await next_message(svc)
        assert msg.topic.value == "$aws/events/presence/disconnected/alive"
        with pytest.raises(TimeoutError):
            await next_message(svc, 0.5)


@V5_AND_V311
async def test_offline_session_queues_one_copy(env: Env, v5: bool) -> None:
    thing = env.device("sleeper")
    dev = await _wire(env, thing, "sleeper", v5=v5, **_persistent(v5))
    assert await dev.subscribe("cmd/sleeper/#") == 1
    assert await dev.subscribe("cmd/sleeper/+") == 1
    await dev.disconnect()
    async with env.service_client() as svc:
        await _publish(
            svc, ("cmd/sleeper/a", b"1"), ("cmd/sleeper/a", b"1"), ("cmd/sleeper/b", b"2")
        )
        await _publish(svc, ("cmd/sleeper/a", SENTINEL))
    dev = await _wire(env, thing, "sleeper", v5=v5, **_persistent(v5))
    assert dev.session_present
    seen = await dev.until_sentinel()
    assert [(t, p) for t, p, _ in seen] == [
        ("cmd/sleeper/a", b"1"),
        ("cmd/sleeper/a", b"1"),
        ("cmd/sleeper/b", b"2"),
    ]
    await dev.disconnect()


# -- `a/#` does not match `a` (§5.3) ----------------------------------------------------------


@V5_AND_V311
async def test_hash_does_not_match_the_parent_level(env: Env, v5: bool) -> None:
    thing = env.device("hash")
    dev = await _wire(env, thing, "hash", v5=v5)
    assert await dev.subscribe("cmd/hash/t/#") == 1
    assert await dev.subscribe("cmd/hash/+/#") == 1
    async with env.service_client() as svc:
        await _publish(svc, ("cmd/hash/t", b"parent"), ("cmd/hash/t/", b"empty level"))
        await _publish(svc, ("cmd/hash/t/c", b"child"), ("cmd/hash/t/c", SENTINEL))
    seen = [(t, p) for t, p, _ in await dev.until_sentinel()]
    assert seen == [("cmd/hash/t/", b"empty level"), ("cmd/hash/t/c", b"child")]

    # an exact subscription to the parent gets it (once); unsubscribing it stops that again
    assert await dev.subscribe("cmd/hash/t") == 1
    async with env.service_client() as svc:
        await _publish(svc, ("cmd/hash/t", b"parent"), ("cmd/hash/t/c", SENTINEL))
        assert [(t, p) for t, p, _ in await dev.until_sentinel()] == [("cmd/hash/t", b"parent")]
        await dev.unsubscribe("cmd/hash/t")
        await _publish(svc, ("cmd/hash/t", b"parent"), ("cmd/hash/t/c", SENTINEL))
        assert await dev.until_sentinel() == []
    await dev.disconnect()


@V5_AND_V311
async def test_resumed_session_keeps_iot_matching(env: Env, v5: bool) -> None:
    thing = env.device("resume")
    dev = await _wire(env, thing, "resume", v5=v5, **_persistent(v5))
    assert await dev.subscribe("cmd/resume/p/#") == 1
    await dev.disconnect()
    dev = await _wire(env, thing, "resume", v5=v5, **_persistent(v5))
    assert dev.session_present
    async with env.service_client() as svc:
        await _publish(svc, ("cmd/resume/p", b"parent"), ("cmd/resume/p/x", b"child"))
        await _publish(svc, ("cmd/resume/p/x", SENTINEL))
    assert [(t, p) for t, p, _ in await dev.until_sentinel()] == [("cmd/resume/p/x", b"child")]
    await dev.disconnect()


async def test_unknown_resumed_session_still_gets_its_messages(tmp_path: Path) -> None:
    """After a broker restart the plugin does not know the session's filters: MQTT matching."""
    async with broker_env(tmp_path) as env:
        thing = env.device("restart")
        dev = await _wire(env, thing, "restart", v5=False, clean=False)
        assert await dev.subscribe("cmd/restart/#") == 1
        assert await dev.subscribe("cmd/restart/+") == 1
        await dev.disconnect()
    async with env.broker:  # same state directory (persistence), new process and plugin
        dev = await _wire(env, thing, "restart", v5=False, clean=False)
        assert dev.session_present
        # a new `/#` filter must not make the plugin think it knows all of them
        assert await dev.subscribe("cmd/restart/q/#") == 1
        async with env.service_client() as svc:
            await _publish(svc, ("cmd/restart/x", b"child"), ("cmd/restart/x", SENTINEL))
        assert [(t, p) for t, p, _ in await dev.until_sentinel()] == [("cmd/restart/x", b"child")]
        await dev.disconnect()


# -- retained messages only for exact filters (§5.5) ------------------------------------------


@V5_AND_V311
async def test_retained_message_only_for_the_exact_filter(env: Env, v5: bool) -> None:
    thing = env.device("keep")
    async with env.service_client() as svc:
        await svc.publish("cmd/keep/config", b"v1", qos=1, retain=True)
        await svc.publish("cmd/keep/other", b"o1", qos=1, retain=True)
    dev = await _wire(env, thing, "keep", v5=v5)
    assert await dev.subscribe_many(["cmd/keep/+", "cmd/keep/#", "cmd/keep/config"]) == [1, 1, 1]
    async with env.service_client() as svc:
        await _publish(svc, ("cmd/keep/live", SENTINEL))
        assert await dev.until_sentinel() == [("cmd/keep/config", b"v1", True)]
        # live publishes reach the wildcard filters, once, without the retain flag
        await svc.publish("cmd/keep/other", b"o2", qos=1, retain=True)
        await _publish(svc, ("cmd/keep/live", SENTINEL))
        assert await dev.until_sentinel() == [("cmd/keep/other", b"o2", False)]
        # a new exact filter gets the stored message
        assert await dev.subscribe("cmd/keep/other") == 1
        await _publish(svc, ("cmd/keep/live", SENTINEL))
        assert await dev.until_sentinel() == [("cmd/keep/other", b"o2", True)]
    await dev.disconnect()


async def test_shared_subscription_gets_no_retained_message(env: Env) -> None:
    async with env.service_client() as svc:
        await svc.publish("cmd/group/config", b"v1", qos=1, retain=True)
    assert env.service is not None
    member = await _wire(env, env.service, "member", v5=True)
    assert await member.subscribe("$share/g/cmd/group/config") == 1
    assert await member.subscribe("cmd/group/end") == 1
    async with env.service_client("-pub") as svc:
        await _publish(svc, ("cmd/group/config", b"v2"), ("cmd/group/end", SENTINEL))
    assert [(t, p) for t, p, _ in await member.until_sentinel()] == [("cmd/group/config", b"v2")]
    await member.disconnect()


# -- 50 subscriptions per connection (§5.7) ---------------------------------------------------


@V5_AND_V311
async def test_at_most_50_subscriptions(env: Env, v5: bool) -> None:
    refused = NOT_AUTHORIZED if v5 else V311_SUBACK_FAILURE
    thing = env.device("many")
    dev = await _wire(env, thing, "many", v5=v5)
    for start in range(0, 48, 8):
        assert (
            await dev.subscribe_many([f"cmd/many/{i}" for i in range(start, start + 8)]) == [1] * 8
        )
    assert await dev.subscribe_many(["cmd/many/48", "cmd/many/49", "cmd/many/50"]) == [
        1,
        1,
        refused,
    ]
    assert await dev.subscribe("cmd/many/51") == refused
    # a filter it already has is not a new subscription; an unsubscribe frees a place
    assert await dev.subscribe("cmd/many/7") == 1
    await dev.unsubscribe("cmd/many/7")
    assert await dev.subscribe("cmd/many/51") == 1
    assert await dev.subscribe("cmd/many/7") == refused
    # the connection still works, including the refused filter's messages not arriving
    async with env.service_client() as svc:
        await _publish(svc, ("cmd/many/7", b"no"), ("cmd/many/51", b"yes"))
        await _publish(svc, ("cmd/many/0", SENTINEL))
    assert [(t, p) for t, p, _ in await dev.until_sentinel()] == [("cmd/many/51", b"yes")]
    await dev.disconnect()


@V5_AND_V311
async def test_subscription_count_belongs_to_the_session(env: Env, v5: bool) -> None:
    refused = NOT_AUTHORIZED if v5 else V311_SUBACK_FAILURE
    thing = env.device("sess")
    dev = await _wire(env, thing, "sess", v5=v5, **_persistent(v5))
    for i in range(50):
        assert await dev.subscribe(f"cmd/sess/{i}") == 1
    await dev.disconnect()
    # resumed: still 50
    dev = await _wire(env, thing, "sess", v5=v5, **_persistent(v5))
    assert dev.session_present
    assert await dev.subscribe("cmd/sess/x") == refused
    await dev.disconnect()
    # a new session starts from zero
    dev = await _wire(env, thing, "sess", v5=v5, **_persistent(v5, clean=True))
    assert not dev.session_present
    assert await dev.subscribe("cmd/sess/x") == 1
    await dev.disconnect()


async def test_service_role_has_no_subscription_limit(env: Env) -> None:
    assert env.service is not None
    svc = await _wire(env, env.service, "svc-many", v5=True)
    for start in range(0, 64, 8):
        assert (
            await svc.subscribe_many([f"cmd/svc/{i}" for i in range(start, start + 8)]) == [1] * 8
        )
    await svc.disconnect()
