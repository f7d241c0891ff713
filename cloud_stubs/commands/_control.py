"""Driving the Commands control plane: in-process (tests, examples) or for the CLI.

:func:`commands_control` runs an operation on a running :class:`~cloud_stubs.LocalIoTCore`
and publishes what it causes (the request to the device, events) before returning.
:func:`commands_request` is the CLI's path: over MQTT with the stub's privileged identity when
``cloud-stubs up`` runs, else directly on the stored state (``start-execution`` then refuses:
nobody would deliver the request).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiomqtt

from cloud_stubs._control import running_endpoint
from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs._service_client import service_client
from cloud_stubs.commands._model import CommandsError
from cloud_stubs.commands._service import CONTROL_PREFIX, CommandsService, run_control
from cloud_stubs.commands._store import CommandsStore

if TYPE_CHECKING:
    from cloud_stubs._core import LocalIoTCore

__all__ = ["NEEDS_RUNNING_STUB", "commands_control", "commands_request"]

#: Operations that publish to devices and therefore need ``cloud-stubs up``.
NEEDS_RUNNING_STUB = frozenset({"start-execution"})


async def commands_control(core: LocalIoTCore, op: str, **args: Any) -> Any:
    """Run a control operation on a running stub; its messages are published first.

    Raises:
        CommandsError: The operation was refused (``code``, ``http_status``).
        ValueError: Unknown operation.
    """
    service = core.service("commands")
    if not isinstance(service, CommandsService):  # pragma: no cover - registry is internal
        raise TypeError("the commands service is not a CommandsService")
    result, messages = service.control(op, args)
    if messages and core.service_host is not None:
        await core.service_host.emit(messages)
    return result


async def commands_request(
    paths: StatePaths, op: str, args: dict[str, Any], *, wait_s: float = 10.0
) -> tuple[bool, Any]:
    """Run a control operation for the CLI; return (ok, result or ``{error, message}``).

    Raises:
        TimeoutError: The running stub did not answer within ``wait_s``.
    """
    ep = running_endpoint(paths)
    if ep is not None:
        try:
            return await _over_mqtt(paths, ep, op, args, wait_s)
        except aiomqtt.MqttError:
            pass  # stale endpoint.json: the stub is not reachable
    if op in NEEDS_RUNNING_STUB:
        return False, {
            "error": "StubNotRunning",
            "message": f"the stub is not running: start it with "
            f"'cloud-stubs up --state-dir {paths.root}' first",
        }
    store = CommandsStore(paths)
    registry = Registry(paths)
    try:
        result, _ = run_control(store, registry, op, args, time.time())
    except CommandsError as exc:
        return False, {"error": exc.code, "message": str(exc)}
    except (KeyError, ValueError, TypeError) as exc:
        return False, {"error": "ValidationException", "message": str(exc)}
    finally:
        store.close()
        registry.close()
    return True, result


async def _over_mqtt(
    paths: StatePaths, ep: dict[str, Any], op: str, args: dict[str, Any], wait_s: float
) -> tuple[bool, Any]:
    token = uuid.uuid4().hex
    client = service_client(
        paths,
        str(ep["host"]),
        int(ep["port"]),
        purpose="cli",
        mqtt5=ep.get("broker") == "mosquitto",
    )
    async with client:
        await client.subscribe(f"{CONTROL_PREFIX}/{op}/reply", qos=1)
        await client.publish(
            f"{CONTROL_PREFIX}/{op}", json.dumps({**args, "clientToken": token}), qos=1
        )
        async with asyncio.timeout(wait_s):
            async for msg in client.messages:
                try:
                    reply = json.loads(msg.payload if isinstance(msg.payload, bytes) else b"")
                except ValueError:
                    continue
                if not isinstance(reply, dict) or reply.get("clientToken") != token:
                    continue
                if reply.get("ok"):
                    return True, reply.get("result")
                return False, {"error": reply.get("error"), "message": reply.get("message")}
    raise TimeoutError  # pragma: no cover - asyncio.timeout raises first
