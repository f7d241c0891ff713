"""Greengrass mode, tested at the IPC boundary.

No Greengrass nucleus runs here. :class:`FakeNucleus` implements the operations of
``GreengrassCoreIPCClientV2`` the agent uses (PublishToIoTCore, SubscribeToIoTCore,
SubscribeToTopic, Get/Update/DeleteThingShadow, UpdateState, close), with awsiotsdk's own
request/response model classes, and does what the nucleus would: it holds the core device's
MQTT connection to the (local) IoT Core and forwards; ShadowManager's operations become shadow
requests to the stub's shadow service, and shadow events are offered on local pub/sub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import ssl
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
from awsiot.greengrasscoreipc import model

from cloud_stubs import LocalIoTCore
from device_sdk import topic_matches
from edge_agent import load_config
from edge_agent._greengrass import GreengrassIpcTransport
from tests.edge_agent.conftest import http_get, metric_value, running_agent, subscribed

_SHADOW_ERRORS = {
    404: model.ResourceNotFoundError,
    409: model.ConflictError,
    400: model.InvalidArgumentsError,
    401: model.UnauthorizedError,
}


class _Stream:
    def __init__(self, nucleus: FakeNucleus, key: int) -> None:
        self._nucleus, self._key = nucleus, key

    def close(self) -> concurrent.futures.Future[None]:
        self._nucleus.handlers.pop(self._key, None)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done


class FakeNucleus:
    """The IPC operations the agent uses, backed by an MQTT connection as the core device."""

    def __init__(self, cloud: LocalIoTCore, thing: str, cert: Path, key: Path) -> None:
        self.cloud, self.thing = cloud, thing
        self._cert, self._key = cert, key
        self.loop = asyncio.get_running_loop()
        self.calls: list[str] = []
        self.states: list[str] = []
        self.handlers: dict[int, tuple[str, Callable[[Any], None], str]] = {}
        self._next = 0
        self._mqtt: aiomqtt.Client | None = None
        self._pending: dict[str, asyncio.Future[tuple[bool, bytes]]] = {}
        self._subscribed: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.cloud.paths.ca_cert))
        ctx.load_cert_chain(str(self._cert), str(self._key))
        mqtt5 = self.cloud.broker.name == "mosquitto"
        self._mqtt = aiomqtt.Client(
            self.cloud.broker.host,
            self.cloud.broker.port,
            identifier=self.thing,
            tls_context=ctx,
            protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
        )
        await self._mqtt.__aenter__()
        self._task = asyncio.create_task(self._read(), name="fake_nucleus.read")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._mqtt is not None:
            await self._mqtt.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._mqtt is not None
        async for m in self._mqtt.messages:
            topic, payload = str(m.topic), bytes(m.payload)
            for suffix in ("/accepted", "/rejected"):
                if topic.endswith(suffix):
                    token = json.loads(payload).get("clientToken")
                    fut = self._pending.pop(token, None)
                    if fut is not None and not fut.done():
                        fut.set_result((suffix == "/accepted", payload))
            for flt, callback, kind in list(self.handlers.values()):
                if topic_matches(flt, topic):
                    callback(self._event(kind, topic, payload))

    @staticmethod
    def _event(kind: str, topic: str, payload: bytes) -> Any:
        if kind == "iot":
            return model.IoTCoreMessage(
                message=model.MQTTMessage(topic_name=topic, payload=payload)
            )
        return model.SubscriptionResponseMessage(
            binary_message=model.BinaryMessage(
                message=payload, context=model.MessageContext(topic=topic)
            )
        )

    def _run(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _subscribe(self, flt: str) -> None:
        assert self._mqtt is not None
        if flt not in self._subscribed:
            self._subscribed.add(flt)
            await self._mqtt.subscribe(flt, qos=1)

    # -- the IPC operations ---------------------------------------------------------------

    def publish_to_iot_core_async(self, **kw: Any) -> concurrent.futures.Future[Any]:
        self.calls.append("PublishToIoTCore")

        async def go() -> model.PublishToIoTCoreResponse:
            assert self._mqtt is not None
            await self._mqtt.publish(kw["topic_name"], kw["payload"], qos=int(kw["qos"]))
            return model.PublishToIoTCoreResponse()

        return self._run(go())

    def _stream(
        self, flt: str, kind: str, **kw: Any
    ) -> tuple[concurrent.futures.Future[Any], _Stream]:
        self._next += 1
        self.handlers[self._next] = (flt, kw["on_stream_event"], kind)
        return self._run(self._subscribe(flt)), _Stream(self, self._next)

    def subscribe_to_iot_core_async(self, **kw: Any) -> tuple[concurrent.futures.Future[Any], Any]:
        self.calls.append("SubscribeToIoTCore")
        return self._stream(kw["topic_name"], "iot", **kw)

    def subscribe_to_topic_async(self, **kw: Any) -> tuple[concurrent.futures.Future[Any], Any]:
        self.calls.append("SubscribeToTopic")
        return self._stream(kw["topic"], "local", **kw)

    def _shadow(
        self, op: str, thing_name: str, shadow_name: str, payload: bytes | None, response: Any
    ) -> concurrent.futures.Future[Any]:
        self.calls.append(f"{op.capitalize()}ThingShadow")
        base = f"$aws/things/{thing_name}/shadow"
        topic = f"{base}/name/{shadow_name}/{op}" if shadow_name else f"{base}/{op}"

        async def go() -> Any:
            assert self._mqtt is not None
            await self._subscribe(f"{topic}/accepted")
            await self._subscribe(f"{topic}/rejected")
            body = json.loads(payload) if payload else {}
            token = body.setdefault("clientToken", uuid.uuid4().hex)
            fut = self.loop.create_future()
            self._pending[token] = fut
            await self._mqtt.publish(topic, json.dumps(body), qos=1)
            accepted, data = await asyncio.wait_for(fut, 10)
            if not accepted:
                error = json.loads(data)
                cls = _SHADOW_ERRORS.get(error.get("code"), model.ServiceError)
                raise cls(message=error.get("message"))
            return response(payload=data)

        return self._run(go())

    def get_thing_shadow_async(self, **kw: Any) -> concurrent.futures.Future[Any]:
        return self._shadow(
            "get", kw["thing_name"], kw["shadow_name"], None, model.GetThingShadowResponse
        )

    def update_thing_shadow_async(self, **kw: Any) -> concurrent.futures.Future[Any]:
        return self._shadow(
            "update",
            kw["thing_name"],
            kw["shadow_name"],
            kw["payload"],
            model.UpdateThingShadowResponse,
        )

    def delete_thing_shadow_async(self, **kw: Any) -> concurrent.futures.Future[Any]:
        return self._shadow(
            "delete", kw["thing_name"], kw["shadow_name"], None, model.DeleteThingShadowResponse
        )

    def update_state_async(self, **kw: Any) -> concurrent.futures.Future[Any]:
        self.calls.append("UpdateState")
        self.states.append(kw["state"])
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(model.UpdateStateResponse())
        return done

    def close(self, **kw: Any) -> concurrent.futures.Future[Any]:
        self.closed = True
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)
        return done


async def test_greengrass_mode_through_ipc(cloud: LocalIoTCore, tmp_path: Path):
    thing = cloud.create_thing("edge-core-1")
    nucleus = FakeNucleus(cloud, thing.thing_name, thing.cert_file, thing.key_file)
    await nucleus.start()
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
firmware_version = "gg-2.0"

[transport]
mode = "greengrass"
thing_name = "{thing.thing_name}"

[telemetry.system]
interval_s = 600

[health]
port = 0
"""
    )
    config = load_config(config_file)
    transport = GreengrassIpcTransport(thing.thing_name, client_factory=lambda: nucleus)
    shadow = f"$aws/things/{thing.thing_name}/shadow/name/edge-agent-config"
    try:
        async with (
            subscribed(cloud, f"dt/{thing.thing_name}/telemetry/system") as readings,
            subscribed(cloud, f"{shadow}/update/documents") as docs,
            running_agent(config, transport=transport) as agent,
        ):
            await readings.wait_for(lambda msgs: len(msgs) >= 1)
            assert readings.messages[0][1]["data"]["mem_total_bytes"] > 0
            await docs.wait_for(
                lambda msgs: any(
                    m[1]["current"]["state"].get("reported", {}).get("firmware_version") == "gg-2.0"
                    for m in msgs
                )
            )
            # An operator's change arrives as a delta on local pub/sub (ShadowManager).
            desired = {"state": {"desired": {"telemetry": {"system": {"interval_s": 1}}}}}
            await docs.publish(f"{shadow}/update", desired)
            await readings.wait_for(lambda msgs: len(msgs) >= 3, timeout=10)
            assert agent.health is not None
            _, text = await http_get(agent.health.port, "/metrics")
            assert metric_value(text, 'edge_agent_telemetry_interval_seconds{source="system"}') == 1
            assert nucleus.states == ["RUNNING"]
            for op in (
                "PublishToIoTCore",
                "SubscribeToIoTCore",
                "SubscribeToTopic",
                "GetThingShadow",
                "UpdateThingShadow",
            ):
                assert op in nucleus.calls, op
    finally:
        await nucleus.stop()
    assert nucleus.closed
