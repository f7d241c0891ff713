"""Helpers for the Commands integration tests (real stub, real TLS, both brokers)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from cloud_stubs import LocalIoTCore
from cloud_stubs.commands import commands_control
from device_sdk import (
    IOT_CORE_LIMITS,
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    Limits,
)


def device(core: LocalIoTCore, name: str, *, limits: Limits = IOT_CORE_LIMITS) -> DeviceClient:
    ident = core.create_thing(name)
    return DeviceClient(
        DeviceIdentity.from_files(ident.cert_file, ident.key_file, ident.ca_file),
        Endpoint(core.endpoint.host, core.endpoint.port, ca_file=ident.ca_file),
        transport="paho",
        limits=limits,
        # The embedded broker speaks MQTT 3.1.1 only.
        options=ConnectionOptions(mqtt_version=5 if core.endpoint.broker == "mosquitto" else 3),
    )


async def create_command(
    core: LocalIoTCore,
    command_id: str,
    payload: bytes | dict[str, Any],
    content_type: str | None = "application/json",
) -> Any:
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return await commands_control(
        core,
        "create-command",
        command_id=command_id,
        payload=base64.b64encode(data).decode(),
        content_type=content_type,
    )


async def start(core: LocalIoTCore, command_id: str, thing: str, timeout_s: int = 10) -> str:
    started = await commands_control(
        core, "start-execution", command_id=command_id, thing=thing, timeout_s=timeout_s
    )
    return str(started["executionId"])


async def get_execution(core: LocalIoTCore, execution_id: str, thing: str) -> dict[str, Any]:
    result: dict[str, Any] = await commands_control(
        core, "get-execution", execution_id=execution_id, thing=thing, include_result=True
    )
    return result


async def wait_status(
    core: LocalIoTCore,
    execution_id: str,
    thing: str,
    statuses: tuple[str, ...],
    timeout: float = 10.0,
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            ex = await get_execution(core, execution_id, thing)
            if ex["status"] in statuses:
                return ex
            await asyncio.sleep(0.05)


@asynccontextmanager
async def watcher(core: LocalIoTCore, *filters: str) -> AsyncIterator[aiomqtt.Client]:
    """A privileged client subscribed to ``filters`` (events, cmd/ responses, ...)."""
    async with core.service_client("test-watch") as client:
        for flt in filters:
            await client.subscribe(flt, qos=1)
        yield client


async def next_json(
    client: aiomqtt.Client, topic_filter: str, timeout: float = 10.0
) -> tuple[str, Any]:
    async with asyncio.timeout(timeout):
        async for msg in client.messages:
            if msg.topic.matches(topic_filter):
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                return str(msg.topic), json.loads(payload)
    raise AssertionError("unreachable")
