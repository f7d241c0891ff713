"""Fake devices for deployment tests: real MQTT connections with their own certificates,
speaking the Jobs device API with raw MQTT (notify-next -> start-next -> update)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from cloud_stubs import LocalIoTCore, ThingIdentity
from tests.stubs._clients import aiomqtt_device

#: (thing, job document, job id, client) -> (final status, statusDetails)
Decide = Callable[[str, dict[str, Any], str, aiomqtt.Client], Awaitable[tuple[str, dict[str, str]]]]


async def always_succeed(
    thing: str, doc: dict[str, Any], job_id: str, client: aiomqtt.Client
) -> tuple[str, dict[str, str]]:
    return "SUCCEEDED", {"state": "COMMITTED", "version": str(doc.get("targetVersion"))}


@dataclass
class DeviceLog:
    """What a fake device saw and did."""

    jobs: list[str] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)
    reports: list[tuple[str, str]] = field(default_factory=list)


async def _run(
    core: LocalIoTCore,
    ident: ThingIdentity,
    decide: Decide,
    log: DeviceLog,
    ready: asyncio.Event,
) -> None:
    thing = ident.thing_name
    base = f"$aws/things/{thing}/jobs"
    async with aiomqtt_device(core, ident) as client:
        await client.subscribe(f"{base}/notify-next", qos=1)
        await client.subscribe(f"{base}/start-next/accepted", qos=1)
        ready.set()
        await client.publish(f"{base}/start-next", json.dumps({"clientToken": "boot"}), qos=1)
        async for message in client.messages:
            topic = str(message.topic)
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            if topic.endswith("/notify-next"):
                if body.get("execution", {}).get("status") == "QUEUED":
                    await client.publish(f"{base}/start-next", "{}", qos=1)
                continue
            execution = body.get("execution")
            if not execution or execution["jobId"] in log.jobs:
                continue
            job_id = execution["jobId"]
            log.jobs.append(job_id)
            log.documents.append(execution["jobDocument"])
            status, details = await decide(thing, execution["jobDocument"], job_id, client)
            log.reports.append((job_id, status))
            update = {"status": status, "statusDetails": details}
            await client.publish(f"{base}/{job_id}/update", json.dumps(update), qos=1)


@contextlib.asynccontextmanager
async def fleet(
    core: LocalIoTCore,
    identities: list[ThingIdentity],
    decide: Callable[[str], Decide],
) -> AsyncIterator[dict[str, DeviceLog]]:
    """Run one fake device per identity (``decide(thing)`` gives its behaviour)."""
    logs = {i.thing_name: DeviceLog() for i in identities}
    readies = [asyncio.Event() for _ in identities]
    tasks = [
        asyncio.create_task(_run(core, i, decide(i.thing_name), logs[i.thing_name], ready))
        for i, ready in zip(identities, readies, strict=True)
    ]
    all_ready = asyncio.ensure_future(asyncio.gather(*(r.wait() for r in readies)))
    try:
        async with asyncio.timeout(30):
            waiting: list[asyncio.Future[Any]] = [*tasks, all_ready]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            if t in done:
                t.result()  # a device failed to start: raise why
                raise RuntimeError("a fake device stopped")
        yield logs
    finally:
        all_ready.cancel()
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, aiomqtt.MqttError):
                raise r
