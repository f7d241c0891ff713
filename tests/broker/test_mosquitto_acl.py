"""mosquitto backend: IoT policy evaluation for publish, subscribe and receive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.broker.conftest_mosquitto import (
    THING,
    Env,
    broker_env,
    device_policy,
    next_message,
    payload_json,
    requires_mosquitto,
)

pytestmark = requires_mosquitto

NOT_AUTHORIZED = 0x87
#: mosquitto answers a QoS 1 publish nobody subscribed to with 0x10 (no matching
#: subscribers, a success code) where IoT Core sends 0x00.
PUBACK_OK = (0x00, 0x10)
V311_SUBACK_FAILURE = 0x80


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


async def test_device_cannot_subscribe_to_another_things_topics(env: Env) -> None:
    a = env.device("dev-a")
    env.device("dev-b")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.subscribe("dt/dev-b/#") == NOT_AUTHORIZED
    assert await raw.subscribe("$aws/things/dev-b/shadow/#") == NOT_AUTHORIZED
    assert await raw.subscribe("#") == NOT_AUTHORIZED
    assert await raw.subscribe("$aws/events/presence/+/+") == NOT_AUTHORIZED
    assert await raw.subscribe("dt/dev-a/#") == 1  # granted QoS 1
    await raw.disconnect()


async def test_mqtt311_denied_subscribe_gets_suback_failure(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a, v5=False)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.subscribe("dt/dev-b/#") == V311_SUBACK_FAILURE
    assert await raw.subscribe("dt/dev-a/#") == 1
    await raw.disconnect()


async def test_mqtt5_denied_publish_gets_puback_0x87_and_stays_connected(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.publish("dt/dev-b/telemetry", b"x") == NOT_AUTHORIZED
    assert await raw.publish("$aws/things/dev-b/shadow/update", b"{}") == NOT_AUTHORIZED
    assert await raw.publish("dt/dev-a/telemetry", b"x") in PUBACK_OK
    await raw.disconnect()


async def test_mqtt311_denied_publish_closes_the_connection(env: Env) -> None:
    a = env.device("dev-a")
    async with env.service_client() as svc:
        await svc.subscribe("$aws/events/presence/disconnected/dev-a", qos=1)
        raw = await env.raw(a, v5=False)
        assert await raw.connack_code("dev-a") == 0
        assert await raw.publish("dt/dev-a/ok", b"x") in PUBACK_OK
        assert await raw.publish("dt/dev-b/telemetry", b"x") is None  # hung up, no PUBACK
        await raw.close()
        event = payload_json(await next_message(svc))
        assert event["disconnectReason"] == "AUTH_ERROR"


async def test_explicit_deny_wins_over_allow(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.publish("dt/dev-a/forbidden", b"x") == NOT_AUTHORIZED
    assert await raw.publish("dt/dev-a/forbidden/not", b"x") in PUBACK_OK
    await raw.disconnect()


async def test_device_never_receives_another_things_messages(env: Env) -> None:
    a = env.device("dev-a")
    b = env.device("dev-b")
    async with env.client(a) as dev_a, env.client(b) as dev_b, env.service_client() as svc:
        await dev_a.subscribe("dt/dev-a/#", qos=1)
        await dev_b.subscribe("dt/dev-b/#", qos=1)
        await dev_b.publish("dt/dev-b/secret", b"b-only", qos=1)
        await svc.publish("dt/dev-a/hello", b"a-only", qos=1)
        assert (await next_message(dev_b)).payload == b"b-only"
        msg = await next_message(dev_a)
        assert (msg.topic.value, msg.payload) == ("dt/dev-a/hello", b"a-only")


async def test_receive_is_checked_per_message(tmp_path: Path) -> None:
    # Subscribing to everything under dt/ is allowed, receiving only the thing's own topics.
    policy = device_policy() + "Allow\tdevice\tsubscribe\tdt/*\n"
    async with broker_env(tmp_path, policy=policy) as env:
        a = env.device("dev-a")
        async with env.client(a) as dev, env.service_client() as svc:
            result = await dev.subscribe("dt/#", qos=1)
            assert [rc.value for rc in result] == [1]  # type: ignore[union-attr]
            await svc.publish("dt/dev-b/x", b"not for a", qos=1)
            await svc.publish("dt/dev-a/x", b"for a", qos=1)
            msg = await next_message(dev)
            assert msg.payload == b"for a"
            with pytest.raises(TimeoutError):
                await next_message(dev, timeout=0.3)


async def test_policy_globs_treat_mqtt_wildcards_literally(tmp_path: Path) -> None:
    policy = device_policy() + "".join(
        f"Allow\tdevice\t{action}\t{pattern}\n"
        for action, pattern in [
            ("subscribe", f"sensors/{THING}/+"),
            ("publish", f"sensors/{THING}/?"),
            ("receive", f"sensors/{THING}/*"),
        ]
    )
    async with broker_env(tmp_path, policy=policy) as env:
        a = env.device("dev-a")
        raw = await env.raw(a)
        assert await raw.connack_code("dev-a") == 0
        assert await raw.subscribe("sensors/dev-a/+") == 1  # the literal filter
        assert await raw.subscribe("sensors/dev-a/t") == NOT_AUTHORIZED
        assert await raw.subscribe("sensors/dev-a/#") == NOT_AUTHORIZED
        assert await raw.publish("sensors/dev-a/t", b"1") in PUBACK_OK  # ? = one character
        assert await raw.publish("sensors/dev-a/tt", b"1") == NOT_AUTHORIZED
        assert await raw.publish("sensors/dev-a/é", b"1") in PUBACK_OK  # one character, two bytes
        await raw.disconnect()


async def test_star_spans_levels_and_plus_filters_are_allowed(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    for topic_filter in (
        "$aws/things/dev-a/shadow/get/+",
        "$aws/things/dev-a/shadow/name/+/update/delta",
        "$aws/things/dev-a/jobs/notify-next",
    ):
        assert await raw.subscribe(topic_filter) == 1, topic_filter
    await raw.disconnect()


async def test_topic_size_rules(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    seven = "dt/dev-a/" + "/".join("l" * 6)  # 7 slashes in total
    assert seven.count("/") == 7
    assert await raw.publish(seven, b"x") in PUBACK_OK
    assert await raw.publish(seven + "/x", b"x") == NOT_AUTHORIZED
    assert await raw.publish("dt/dev-a/" + "x" * 250, b"x") == NOT_AUTHORIZED  # > 256 bytes
    assert await raw.subscribe(seven + "/#") == NOT_AUTHORIZED
    await raw.disconnect()


async def test_payload_over_128_kb_disconnects(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.publish("dt/dev-a/big", b"x" * 131072) in PUBACK_OK
    assert await raw.publish("dt/dev-a/big", b"x" * 131073) is None
    await raw.close()


async def test_unsubscribe_is_always_allowed(env: Env) -> None:
    a = env.device("dev-a")
    async with env.client(a) as dev:
        await dev.subscribe("dt/dev-a/#", qos=1)
        await dev.unsubscribe("dt/dev-a/#")
        await dev.unsubscribe("dt/dev-b/#")


async def test_policy_file_change_applies_without_restart(env: Env) -> None:
    a = env.device("dev-a")
    raw = await env.raw(a)
    assert await raw.connack_code("dev-a") == 0
    assert await raw.publish("extra/dev-a", b"x") == NOT_AUTHORIZED
    env.paths.policy_file.write_text(device_policy() + f"Allow\tdevice\tpublish\textra/{THING}\n")
    await env.broker.reload()
    assert await raw.publish("extra/dev-a", b"x") in PUBACK_OK
    await raw.disconnect()


async def test_certificate_without_thing_does_not_match_thing_statements(env: Env) -> None:
    loose = env.register(env.pki.issue("loose"), thing=None)
    raw = await env.raw(loose)
    # connect is only allowed for ${iot:Connection.Thing.ThingName}, which has no value here
    assert await raw.connack_code("loose") == NOT_AUTHORIZED
    await raw.close()


async def test_stub_default_policy_is_understood(tmp_path: Path) -> None:
    """The policy the stub itself writes (cloud_stubs._policy) loads and works in C."""
    policy_mod = pytest.importorskip("cloud_stubs._policy")
    text = policy_mod.render_statements(policy_mod.default_statements())
    async with broker_env(tmp_path, policy=text) as env:
        a = env.device("dev-a")
        raw = await env.raw(a)
        assert await raw.connack_code("dev-a") == 0
        assert await raw.subscribe("$aws/things/dev-a/shadow/get/+") == 1
        assert await raw.publish("$aws/things/dev-a/shadow/get", b"{}") in PUBACK_OK
        assert await raw.publish("$aws/things/dev-a/shadow/get/accepted", b"{}") == NOT_AUTHORIZED
        assert await raw.subscribe("$aws/things/dev-b/shadow/get/+") == NOT_AUTHORIZED
        await raw.disconnect()
        await asyncio.sleep(0)
