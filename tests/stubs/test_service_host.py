"""The service host: its own MQTT session, batching, in-flight window, persistence order.

Tests taking `cloud` run on both brokers (mosquitto: MQTT 5, embedded: MQTT 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_stubs import LocalIoTCore
from cloud_stubs._paths import StatePaths
from cloud_stubs._service_client import ServiceClient, tls_context
from cloud_stubs.services import _runtime
from cloud_stubs.services._runtime import Outgoing, Request, ServiceHost
from cloud_stubs.shadow._core import ShadowDocument
from cloud_stubs.shadow._service import ShadowService, ShadowStore
from tests.stubs._clients import aiomqtt_device, mqtt5_supported


class Bulk:
    """Answers ``dt/<thing>/bulk`` (payload: a count N) with N numbered messages."""

    name = "bulk"
    filters = ("dt/+/bulk", "dt/+/boom")

    def __init__(self) -> None:
        self.persisted = 0
        self.handled = 0

    def accepts(self, topic: str) -> bool:
        return topic.endswith(("/bulk", "/boom"))

    async def handle(self, request: Request) -> list[Outgoing]:
        thing = request.topic.split("/")[1]
        if request.topic.endswith("/boom"):
            raise RuntimeError("service bug")
        self.handled += 1
        n = int(request.payload)
        # Each answer tells how many requests had been handled when it was produced; persist()
        # must have covered them all before the answer is published.
        return [
            Outgoing(f"cmd/{thing}/bulk", json.dumps([i, self.handled]).encode()) for i in range(n)
        ]

    async def tick(self, now: float) -> list[Outgoing]:
        return []

    def persist(self) -> None:
        self.persisted = self.handled


@contextlib.asynccontextmanager
async def _hosted(
    cloud: LocalIoTCore, service: Any, factory: Callable[[], aiomqtt.Client] | None = None
) -> AsyncIterator[ServiceHost]:
    host = ServiceHost(
        factory or (lambda: cloud.service_client("test-host")),
        [service],
        mqtt5=mqtt5_supported(cloud),
    )
    ready = asyncio.Event()
    task = asyncio.create_task(host.run(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.is_set()
    try:
        yield host
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


def _plain_aiomqtt(cloud: LocalIoTCore) -> aiomqtt.Client:
    """A service-identity client that is not a ServiceClient: served through aiomqtt."""
    paths = cloud.paths
    return aiomqtt.Client(
        cloud.endpoint.host,
        cloud.endpoint.port,
        identifier="cloud-stubs-service-plain-test",
        protocol=aiomqtt.ProtocolVersion.V5
        if mqtt5_supported(cloud)
        else aiomqtt.ProtocolVersion.V311,
        tls_context=tls_context(paths.ca_cert, paths.service_cert, paths.service_key),
    )


async def _collect(dev: aiomqtt.Client, n: int, timeout: float = 20) -> list[aiomqtt.Message]:
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for msg in dev.messages:
            out.append(msg)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("link", ["native", "aiomqtt"])
async def test_responses_beyond_the_in_flight_window_arrive_in_order_at_qos1(
    cloud: LocalIoTCore, link: str
) -> None:
    """One request answered with far more QoS 1 messages than may be unacknowledged at once."""
    ident = cloud.create_thing("bulk-1")
    service = Bulk()
    # Windows: mosquitto's Receive Maximum is 100, the host's own cap 1,000 (MQTT 3.1.1). On
    # mosquitto, more than its queue per client (max_queued_messages 1000) would be dropped on
    # the way to a device that reads slower than the host writes.
    n = (1000 if mqtt5_supported(cloud) else 2500) if link == "native" else 300
    factory = (lambda: _plain_aiomqtt(cloud)) if link == "aiomqtt" else None
    async with _hosted(cloud, service, factory) as host, aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/bulk-1/bulk", qos=1)
        await dev.publish("dt/bulk-1/bulk", str(n), qos=1)
        msgs = await _collect(dev, n)
        assert host.handled == 1
    assert [json.loads(m.payload)[0] for m in msgs] == list(range(n))
    assert {m.qos for m in msgs} == {1}


async def test_each_batch_is_persisted_before_its_responses_are_published(
    cloud: LocalIoTCore,
) -> None:
    ident = cloud.create_thing("bulk-2")
    service = Bulk()
    requests = 200
    async with _hosted(cloud, service), aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/bulk-2/bulk", qos=1)
        await asyncio.gather(*(dev.publish("dt/bulk-2/bulk", b"1", qos=1) for _ in range(requests)))
        async with asyncio.timeout(20):
            seen = 0
            async for msg in dev.messages:
                _, handled_then = json.loads(msg.payload)
                assert service.persisted >= handled_then
                seen += 1
                if seen == requests:
                    break
    assert service.handled == requests


async def test_a_failing_request_does_not_stop_the_host(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("bulk-3")
    service = Bulk()
    async with _hosted(cloud, service) as host, aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/bulk-3/bulk", qos=1)
        await dev.publish("dt/bulk-3/boom", b"", qos=1)
        await dev.publish("dt/bulk-3/bulk", b"2", qos=1)
        assert len(await _collect(dev, 2)) == 2
        assert (host.errors, host.handled) == (1, 1)


async def test_shadow_updates_in_order_and_committed_before_accepted(cloud: LocalIoTCore) -> None:
    """Pipelined updates of one thing: versions in order, each stored before it is accepted."""
    ident = cloud.create_thing("robot-7")
    db = sqlite3.connect(cloud.paths.root / "shadows.sqlite")
    n = 300
    topic = "$aws/things/robot-7/shadow/update"
    async with aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe(f"{topic}/accepted", qos=1)
        bodies = [
            json.dumps({"state": {"reported": {"i": i}}, "clientToken": f"t{i}"}) for i in range(n)
        ]
        await asyncio.gather(*(dev.publish(topic, body, qos=1) for body in bodies))
        msgs = await _collect(dev, n)
        for k, msg in enumerate(msgs):
            accepted = json.loads(msg.payload)
            assert (accepted["version"], accepted["clientToken"]) == (k + 1, f"t{k}")
            if k == 0:
                (doc,) = db.execute("SELECT document FROM shadows").fetchone()
                assert ShadowDocument.from_json(doc).version >= 1
    (doc,) = db.execute("SELECT document FROM shadows").fetchone()
    assert ShadowDocument.from_json(doc).version == n
    db.close()


async def test_connection_loss_ends_the_host_with_an_mqtt_error(cloud: LocalIoTCore) -> None:
    host = ServiceHost(lambda: cloud.service_client("lost"), [Bulk()], mqtt5=mqtt5_supported(cloud))
    ready = asyncio.Event()
    task = asyncio.create_task(host.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    link = host._link
    assert isinstance(link, _runtime._Session)
    assert link._transport is not None
    link._transport.abort()
    with pytest.raises(aiomqtt.MqttError):
        await asyncio.wait_for(task, 10)
    with pytest.raises(RuntimeError):
        await host.emit([Outgoing("cmd/x/y", b"")])


async def test_idle_session_pings_and_stays_connected(cloud_mosquitto: LocalIoTCore) -> None:
    cloud = cloud_mosquitto
    client = cloud.service_client("idle")
    assert isinstance(client, ServiceClient)
    session = _runtime._Session(dataclasses.replace(client.settings, keepalive=1))
    await session.open(["dt/+/idle"])
    try:
        await asyncio.sleep(2.5)  # broker gives up after 1.5 s of silence without PINGREQs
        assert session._lost is None
        ident = cloud.create_thing("idle-1")
        async with aiomqtt_device(cloud, ident) as dev:
            await dev.publish("dt/idle-1/idle", b"x", qos=1)
        batch = await asyncio.wait_for(session.next_batch(10), 5)
        assert [(r.topic, r.payload) for r in batch] == [("dt/idle-1/idle", b"x")]
    finally:
        await session.close()


def test_varint_round_trip() -> None:
    for value in (0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        raw = _runtime._varint(value)
        assert len(raw) == 1 + (value >= 128) + (value >= 16_384) + (value >= 2_097_152)
        assert _runtime._read_varint(bytearray(raw + b"\xff"), 0) == (value, len(raw))


def test_properties_are_decoded_and_unknown_ones_refused() -> None:
    raw = bytearray(
        b"\x01\x01"  # payload format indicator
        b"\x02\x00\x00\x00\x3c"  # message expiry interval
        b"\x08\x00\x03a/b"  # response topic
        b"\x09\x00\x02\x00\xff"  # correlation data
        b"\x0b\x81\x01"  # subscription identifier 129
        b"\x26\x00\x0fx-iot-client-id\x00\x03dev"  # user property
    )
    assert _runtime._properties(raw, 0, len(raw)) == [
        (0x01, 1),
        (0x02, 60),
        (0x08, "a/b"),
        (0x09, b"\x00\xff"),
        (0x0B, 129),
        (0x26, ("x-iot-client-id", "dev")),
    ]
    with pytest.raises(ValueError, match="unknown MQTT property"):
        _runtime._properties(bytearray(b"\x7f\x00"), 0, 2)


def _doc(version: int) -> ShadowDocument:
    return ShadowDocument(exists=True, version=version, reported={"v": version})


def test_shadow_store_commits_pending_documents_on_close(tmp_path: Path) -> None:
    paths = StatePaths.at(tmp_path / "s")
    store = ShadowStore(paths)
    store.save("t", None, _doc(1))
    store.save("t", "named", _doc(2))
    assert store.pending == 2
    assert store.names("t") == ["named"]  # names() sees what is pending
    store.save("t", None, _doc(3))
    store.close()
    again = ShadowStore(paths)
    try:
        assert again.load("t", None) == _doc(3)
        assert again.load("t", "named") == _doc(2)
    finally:
        again.close()


async def test_shadow_service_commits_soon_without_a_host(tmp_path: Path) -> None:
    """Outside the host (no persist() calls) an accepted change is committed within 0.1 s."""
    paths = StatePaths.at(tmp_path / "s")
    service = ShadowService(paths)
    try:
        topic = "$aws/things/t1/shadow/update"
        assert service.accepts(topic)
        out = await service.handle(Request(topic, b'{"state": {"desired": {"a": 1}}}'))
        assert [m.topic for m in out] == [
            f"{topic}/accepted",
            f"{topic}/delta",
            f"{topic}/documents",
        ]
        assert service.store.pending == 1
        await asyncio.sleep(0.3)
        assert service.store.pending == 0
    finally:
        service.close()


class Gated(Bulk):
    """Like Bulk, but the first request waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def handle(self, request: Request) -> list[Outgoing]:
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        return await super().handle(request)


async def test_stopping_host_answers_requests_it_already_read(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("bulk-4")
    service = Gated()
    n = 20
    async with aiomqtt_device(cloud, ident) as dev:
        await dev.subscribe("cmd/bulk-4/bulk", qos=1)
        async with _hosted(cloud, service) as host:
            await dev.publish("dt/bulk-4/bulk", b"1", qos=1)
            await asyncio.wait_for(service.entered.wait(), 10)
            for _ in range(n):
                await dev.publish("dt/bulk-4/bulk", b"1", qos=1)
            link = host._link
            assert isinstance(link, _runtime._Session)
            async with asyncio.timeout(10):
                while len(link._requests) < n:
                    await asyncio.sleep(0.01)
        # The host was cancelled inside the gated request; the n read after it were handled,
        # persisted and answered before the host disconnected.
        assert (service.handled, service.persisted) == (n, n)
        assert len(await _collect(dev, n, timeout=5)) == n
