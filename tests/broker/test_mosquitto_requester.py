"""mosquitto backend: requester identity and responses addressed to one client.

AWS IoT Core sends Jobs and Fleet Provisioning responses only to the client that made the
request. The plugin tags every device request on a ``$aws/`` topic with the requester's client id
and delivers a service message carrying ``x-iot-deliver-to`` only to that client, so two devices
provisioning with the same claim certificate never see each other's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_stubs.services._runtime import (
    CLIENT_ID_PROPERTY,
    DELIVER_TO_PROPERTY,
    Outgoing,
    Request,
    ServiceHost,
)
from tests.broker.conftest_mosquitto import (
    THING,
    Env,
    Identity,
    broker_env,
    device_policy,
    next_message,
    requires_mosquitto,
)

pytestmark = requires_mosquitto

CREATE = "$aws/certificates/create/json"
ACCEPTED = f"{CREATE}/accepted"
QUIET = 0.3


def _policy() -> str:
    """The test device policy, client ids ``<thing>-*`` allowed too, plus a claim role."""
    lines = [f"Allow\tdevice\tconnect\t{THING}-*", "Allow\tclaim\tconnect\t*"]
    for pattern in (
        "$aws/certificates/create/*",
        "$aws/certificates/create-from-csr/*",
        "$aws/provisioning-templates/*/provision/*",
    ):
        for action in ("publish", "subscribe", "receive"):
            lines.append(f"Allow\tclaim\t{action}\t{pattern}")
    return device_policy() + "\n".join(lines) + "\n"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with broker_env(tmp_path, policy=_policy()) as e:
        yield e


def _claim(env: Env) -> Identity:
    return env.register(env.pki.issue("claim"), role="claim", thing=None)


def _props(user: Sequence[tuple[str, str]] = (), **fields: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in fields.items():
        setattr(props, name, value)
    if user:
        props.UserProperty = list(user)
    return props


def _user(message: aiomqtt.Message) -> list[tuple[str, str]]:
    props = message.properties
    if props is None:
        return []
    return [(str(k), str(v)) for k, v in getattr(props, "UserProperty", [])]


async def _quiet(client: aiomqtt.Client) -> None:
    """Assert that nothing (more) arrives."""
    try:
        message = await next_message(client, timeout=QUIET)
    except TimeoutError:
        return
    pytest.fail(f"unexpected message on {message.topic}: {message.payload!r}")


# --------------------------------------------------------------------------------------------
# x-iot-client-id on device requests


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_device_request_carries_its_client_id(env: Env, v5: bool) -> None:
    dev = env.device("dev-a")
    async with env.service_client() as svc:
        await svc.subscribe("$aws/things/+/shadow/get", qos=1)
        async with env.client(dev, "dev-a-1", v5=v5) as device:
            await device.publish("$aws/things/dev-a/shadow/get", b"{}", qos=1)
            msg = await next_message(svc)
    assert msg.topic.value == "$aws/things/dev-a/shadow/get"
    assert msg.payload == b"{}"
    assert _user(msg) == [(CLIENT_ID_PROPERTY, "dev-a-1")]


async def test_forged_client_id_is_replaced_and_other_properties_kept(env: Env) -> None:
    dev = env.device("dev-a")
    forged = _props(
        [("app", "1"), (CLIENT_ID_PROPERTY, "dev-b"), ("app", "2"), (DELIVER_TO_PROPERTY, "x")],
        ContentType="application/json",
        ResponseTopic="dt/dev-a/reply",
        CorrelationData=b"\x00corr",
        PayloadFormatIndicator=1,
    )
    async with env.service_client() as svc:
        await svc.subscribe("$aws/things/+/shadow/update", qos=1)
        async with env.client(dev, "dev-a-1") as device:
            await device.publish(
                "$aws/things/dev-a/shadow/update", b'{"state":{}}', qos=1, properties=forged
            )
            msg = await next_message(svc)
    assert _user(msg) == [("app", "1"), ("app", "2"), (CLIENT_ID_PROPERTY, "dev-a-1")]
    props = msg.properties
    assert props is not None
    assert getattr(props, "ContentType", None) == "application/json"
    assert getattr(props, "ResponseTopic", None) == "dt/dev-a/reply"
    assert getattr(props, "CorrelationData", None) == b"\x00corr"
    assert getattr(props, "PayloadFormatIndicator", None) == 1


async def test_non_aws_topics_get_no_client_id_but_lose_forged_ones(env: Env) -> None:
    dev = env.device("dev-a")
    async with env.service_client() as svc:
        await svc.subscribe("dt/#", qos=1)
        async with env.client(dev, "dev-a-1") as device:
            await device.publish("dt/dev-a/plain", b"1", qos=1)
            await device.publish(
                "dt/dev-a/forged", b"2", qos=1, properties=_props([(CLIENT_ID_PROPERTY, "x")])
            )
            plain, forged = await next_message(svc), await next_message(svc)
    assert (plain.payload, _user(plain)) == (b"1", [])
    assert (forged.payload, _user(forged)) == (b"2", [])


async def test_service_messages_are_left_alone(env: Env) -> None:
    dev = env.device("dev-a")
    async with env.client(dev, "dev-a-1") as device, env.service_client() as svc:
        await device.subscribe("$aws/things/dev-a/shadow/get/accepted", qos=1)
        await svc.publish(
            "$aws/things/dev-a/shadow/get/accepted",
            b"{}",
            qos=1,
            properties=_props([(CLIENT_ID_PROPERTY, "cloud")]),
        )
        msg = await next_message(device)
    assert _user(msg) == [(CLIENT_ID_PROPERTY, "cloud")]


# --------------------------------------------------------------------------------------------
# x-iot-deliver-to on service responses


async def test_addressed_response_reaches_only_its_client(env: Env) -> None:
    claim = _claim(env)
    async with (
        env.client(claim, "claim-1") as one,
        env.client(claim, "claim-2") as two,
        env.client(claim, "claim-3", v5=False) as three,
        env.service_client("-observer") as observer,
        env.service_client() as svc,
    ):
        for client in (one, two, three, observer):
            await client.subscribe(ACCEPTED, qos=1)
        await svc.publish(
            ACCEPTED, b"for-1", qos=1, properties=_props([(DELIVER_TO_PROPERTY, "claim-1")])
        )
        await svc.publish(
            ACCEPTED, b"for-3", qos=1, properties=_props([(DELIVER_TO_PROPERTY, "claim-3")])
        )
        await svc.publish(ACCEPTED, b"for-all", qos=1)

        first = await next_message(one)
        assert first.payload == b"for-1"
        assert _user(first) == []  # the routing property is not passed on, as on IoT Core
        assert (await next_message(one)).payload == b"for-all"
        assert (await next_message(two)).payload == b"for-all"
        assert (await next_message(three)).payload == b"for-3"
        assert (await next_message(three)).payload == b"for-all"
        # service principals always receive
        assert [(await next_message(observer)).payload for _ in range(3)] == [
            b"for-1",
            b"for-3",
            b"for-all",
        ]
        for client in (one, two, three, observer):
            await _quiet(client)


async def test_addressed_empty_payload(env: Env) -> None:
    claim = _claim(env)
    async with (
        env.client(claim, "claim-1") as one,
        env.client(claim, "claim-2") as two,
        env.service_client() as svc,
    ):
        await one.subscribe(ACCEPTED, qos=1)
        await two.subscribe(ACCEPTED, qos=1)
        await svc.publish(
            ACCEPTED, b"", qos=1, properties=_props([(DELIVER_TO_PROPERTY, "claim-1")])
        )
        await svc.publish(ACCEPTED, b"", qos=1)
        assert (await next_message(one)).payload == b""
        assert (await next_message(one)).payload == b""
        assert (await next_message(two)).payload == b""
        await _quiet(two)


async def test_addressed_response_is_not_retained(env: Env) -> None:
    claim = _claim(env)
    async with env.client(claim, "claim-1") as one, env.service_client() as svc:
        await one.subscribe(ACCEPTED, qos=1)
        await svc.publish(
            ACCEPTED,
            b"secret",
            qos=1,
            retain=True,
            properties=_props([(DELIVER_TO_PROPERTY, "claim-1")]),
        )
        assert (await next_message(one)).payload == b"secret"
        async with env.client(claim, "claim-2") as two:
            await two.subscribe(ACCEPTED, qos=1)
            await _quiet(two)


async def test_device_cannot_address_its_own_messages(env: Env) -> None:
    claim = _claim(env)
    async with (
        env.client(claim, "claim-1") as one,
        env.client(claim, "claim-2") as two,
        env.client(claim, "claim-3") as three,
    ):
        await one.subscribe(ACCEPTED, qos=1)
        await two.subscribe(ACCEPTED, qos=1)
        await three.publish(
            ACCEPTED, b"fake", qos=1, properties=_props([(DELIVER_TO_PROPERTY, "claim-1")])
        )
        for client in (one, two):
            msg = await next_message(client)
            assert msg.payload == b"fake"
            assert _user(msg) == [(CLIENT_ID_PROPERTY, "claim-3")]


async def test_service_host_answers_each_requester_privately(env: Env) -> None:
    """Two devices provisioning at once with one claim certificate get only their own answer."""

    class Echo:
        name = "echo"
        filters = (CREATE,)

        def accepts(self, topic: str) -> bool:
            return topic == CREATE

        async def handle(self, request: Request) -> list[Outgoing]:
            who = request.client_id or "?"
            return [Outgoing(ACCEPTED, f"key-of-{who}".encode(), deliver_to=request.client_id)]

        async def tick(self, now: float) -> list[Outgoing]:
            return []

    claim = _claim(env)
    host = ServiceHost(lambda: env.service_client("-host"), [Echo()], mqtt5=True)
    ready = asyncio.Event()
    task = asyncio.create_task(host.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        names = [f"claim-{n}" for n in range(1, 5)]
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(env.client(claim, name, v5=n % 2 == 0))
                for n, name in enumerate(names)
            ]
            for client in clients:
                await client.subscribe(ACCEPTED, qos=1)
            await asyncio.gather(*(c.publish(CREATE, b"{}", qos=1) for c in clients))
            for name, client in zip(names, clients, strict=True):
                assert (await next_message(client)).payload == f"key-of-{name}".encode()
            for client in clients:
                await _quiet(client)
        assert host.handled == len(names)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
