"""Operator-side access to the services for the CLI.

When ``cloud-stubs up`` is running (``endpoint.json`` present and reachable), requests go over
MQTT with the stub's privileged identity, exactly as a device's would, so side effects such as
``/update/delta`` reach devices. When it is not running, the CLI applies the same pure core to
the stored state directly (nothing to notify).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiomqtt

from cloud_stubs._paths import StatePaths
from cloud_stubs._service_client import service_client
from cloud_stubs.shadow._core import handle_request
from cloud_stubs.shadow._service import ShadowStore
from cloud_stubs.shadow._topics import ShadowOperation, shadow_topic

__all__ = ["jobs_request", "running_endpoint", "shadow_request"]


def running_endpoint(paths: StatePaths) -> dict[str, Any] | None:
    """``endpoint.json``'s content when a stub claims to be running, else None."""
    try:
        data = json.loads(paths.endpoint_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "port" in data else None


async def shadow_request(
    paths: StatePaths,
    operation: ShadowOperation,
    thing: str,
    shadow_name: str | None,
    body: dict[str, Any],
    *,
    wait_s: float = 10.0,
) -> tuple[bool, dict[str, Any]]:
    """Run one shadow operation; return (accepted, response body)."""
    ep = running_endpoint(paths)
    if ep is not None:
        try:
            return await _over_mqtt(paths, ep, operation, thing, shadow_name, body, wait_s)
        except aiomqtt.MqttError:
            pass  # stale endpoint.json: the stub is not reachable; fall back to the store
    store = ShadowStore(paths)
    try:
        outcome = handle_request(
            store.load(thing, shadow_name),
            operation,
            json.dumps(body).encode(),
            thing_name=thing,
            shadow_name=shadow_name,
            now=int(time.time()),
        )
        if outcome.changed:
            store.save(thing, shadow_name, outcome.document)
    finally:
        store.close()
    first = outcome.messages[0]
    return first.topic_suffix.endswith("accepted"), dict(first.payload)


async def _over_mqtt(
    paths: StatePaths,
    ep: dict[str, Any],
    operation: ShadowOperation,
    thing: str,
    shadow_name: str | None,
    body: dict[str, Any],
    wait_s: float,
) -> tuple[bool, dict[str, Any]]:
    token = uuid.uuid4().hex
    op = str(operation)
    request_topic = shadow_topic(thing, shadow_name, op)
    client = service_client(
        paths,
        str(ep["host"]),
        int(ep["port"]),
        purpose="cli",
        mqtt5=ep.get("broker") == "mosquitto",
    )
    async with client:
        await client.subscribe(f"{request_topic}/accepted", qos=1)
        await client.subscribe(f"{request_topic}/rejected", qos=1)
        await client.publish(request_topic, json.dumps({**body, "clientToken": token}), qos=1)
        async with asyncio.timeout(wait_s):
            async for msg in client.messages:
                try:
                    reply = json.loads(msg.payload if isinstance(msg.payload, bytes) else b"")
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("clientToken") == token:
                    return str(msg.topic).endswith("/accepted"), reply
    raise TimeoutError  # pragma: no cover - asyncio.timeout raises first


async def jobs_request(
    paths: StatePaths, op: str, args: dict[str, Any], *, wait_s: float = 10.0
) -> tuple[bool, Any]:
    """Run a jobs control operation; return (ok, result or error dict).

    Over MQTT when the stub runs (devices are notified), else on the stored state.
    """
    from cloud_stubs._registry import Registry  # noqa: PLC0415
    from cloud_stubs.jobs import JobsError  # noqa: PLC0415
    from cloud_stubs.jobs._service import CONTROL_PREFIX, JobsStore, run_control  # noqa: PLC0415

    ep = running_endpoint(paths)
    if ep is not None:
        token = uuid.uuid4().hex
        client = service_client(
            paths,
            str(ep["host"]),
            int(ep["port"]),
            purpose="cli",
            mqtt5=ep.get("broker") == "mosquitto",
        )
        try:
            async with client:
                await client.subscribe(f"{CONTROL_PREFIX}/{op}/reply", qos=1)
                await client.publish(
                    f"{CONTROL_PREFIX}/{op}", json.dumps({**args, "clientToken": token}), qos=1
                )
                async with asyncio.timeout(wait_s):
                    async for msg in client.messages:
                        reply = json.loads(msg.payload if isinstance(msg.payload, bytes) else b"{}")
                        if reply.get("clientToken") == token:
                            if reply.get("ok"):
                                return True, reply.get("result")
                            return False, {
                                "error": reply.get("error"),
                                "message": reply.get("message"),
                            }
        except aiomqtt.MqttError:
            pass  # not reachable: fall back to the stored state
    store = JobsStore(paths)
    registry = Registry(paths)
    try:
        state = store.load()
        try:
            result, outcome = run_control(state, registry, op, args, int(time.time()))
        except (JobsError, KeyError, ValueError, TypeError) as exc:
            return False, {"error": type(exc).__name__, "message": str(exc)}
        if outcome is not None and outcome.changed:
            store.save(state)
        return True, result
    finally:
        store.close()
        registry.close()
