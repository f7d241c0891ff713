"""mosquitto backend: persistent sessions, wills and retained messages under the plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.broker.conftest_mosquitto import Env, broker_env, next_message, requires_mosquitto

pytestmark = requires_mosquitto


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path) as e:
        yield e


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_offline_persistent_session_gets_queued_messages(env: Env, v5: bool) -> None:
    thing = env.device("robot-s")
    session = {"clean": False, "session_expiry": 3600} if v5 else {"clean": False}
    raw = await env.raw(thing, v5=v5)
    assert await raw.connack_code("robot-s", **session) == 0
    assert await raw.subscribe("cmd/robot-s/#") == 1
    await raw.disconnect()

    async with env.service_client() as svc:
        await svc.publish("cmd/robot-s/reboot", b"now", qos=1)
    # SIGHUP makes mosquitto re-check every session, including the offline one
    await env.broker.reload()

    raw = await env.raw(thing, v5=v5)
    assert await raw.connack_code("robot-s", **session) == 0
    assert raw.session_present
    assert await raw.next_publish() == ("cmd/robot-s/reboot", b"now")
    await raw.disconnect()


async def test_offline_session_of_a_revoked_certificate_gets_nothing(env: Env) -> None:
    thing = env.device("robot-r")
    raw = await env.raw(thing, v5=False)
    assert await raw.connack_code("robot-r", clean=False) == 0
    assert await raw.subscribe("cmd/robot-r/#") == 1
    await raw.disconnect()
    env.set_status(thing, "INACTIVE")
    await env.broker.reload()
    async with env.service_client() as svc:
        await svc.publish("cmd/robot-r/x", b"dropped", qos=1)
    env.set_status(thing, "ACTIVE")
    raw = await env.raw(thing, v5=False)
    assert await raw.connack_code("robot-r", clean=False) == 0
    async with env.service_client("-2") as svc:
        await svc.publish("cmd/robot-r/x", b"delivered", qos=1)
    assert await raw.next_publish() == ("cmd/robot-r/x", b"delivered")
    await raw.disconnect()


async def test_will_is_published_on_connection_loss(env: Env) -> None:
    thing = env.device("robot-w")
    async with env.service_client() as svc:
        await svc.subscribe("dt/robot-w/#", qos=1)
        raw = await env.raw(thing)
        assert await raw.connack_code("robot-w", will=("dt/robot-w/status", b"offline")) == 0
        await raw.close()  # no DISCONNECT: the will goes out
        msg = await next_message(svc)
        assert (msg.topic.value, msg.payload) == ("dt/robot-w/status", b"offline")


async def test_will_to_a_forbidden_topic_is_dropped(env: Env) -> None:
    thing = env.device("robot-x")
    async with env.service_client() as svc:
        await svc.subscribe("dt/#", qos=1)
        raw = await env.raw(thing)
        assert await raw.connack_code("robot-x", will=("dt/other/status", b"offline")) == 0
        await raw.close()
        other = await env.raw(env.device("robot-y"))
        assert await other.connack_code("robot-y", will=("dt/robot-y/status", b"gone")) == 0
        await other.close()
        msg = await next_message(svc)
        assert msg.topic.value == "dt/robot-y/status"


async def test_retained_message_for_exact_filter(env: Env) -> None:
    thing = env.device("robot-t")
    async with env.service_client() as svc:
        await svc.publish("cmd/robot-t/config", b"v1", qos=1, retain=True)
    raw = await env.raw(thing)
    assert await raw.connack_code("robot-t") == 0
    assert await raw.subscribe("cmd/robot-t/config") == 1
    assert await raw.next_publish() == ("cmd/robot-t/config", b"v1")
    await raw.disconnect()


async def test_retained_messages_survive_a_restart(tmp_path: Path) -> None:
    async with broker_env(tmp_path) as env:
        async with env.service_client() as svc:
            await svc.publish("cmd/robot-z/config", b"kept", qos=1, retain=True)
        thing = env.device("robot-z")
    async with env.broker:  # same state directory, new process
        raw = await env.raw(thing)
        assert await raw.connack_code("robot-z") == 0
        assert await raw.subscribe("cmd/robot-z/config") == 1
        assert await raw.next_publish() == ("cmd/robot-z/config", b"kept")
        await raw.disconnect()
