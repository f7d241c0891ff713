"""No message loss across broker restarts and client restarts (real broker, real SQLite).

An independent aiomqtt client (its own certificate, persistent session) collects everything;
after de-duplication by ``msg-id`` every number must be there exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk import ConnectionOptions, DeviceClient, OutboxConfig, ReconnectPolicy
from device_sdk.transport import TransportKind
from tests.sdk.conftest import MosquittoBroker

OPTS = ConnectionOptions(keepalive_s=30, ping_timeout_s=5, connect_timeout_s=5, ack_timeout_s=5)
FAST = ReconnectPolicy(base_s=0.05, cap_s=0.4, min_interval_s=0.05)


class Collector:
    """A plain aiomqtt subscriber with a persistent session that survives broker restarts."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.by_number: dict[int, set[str]] = collections.defaultdict(set)
        self.deliveries = 0
        self.subscribed = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        ctx = self.broker.ssl_context("collector")
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.broker.port,
                    identifier="collector",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_context=ctx,
                    clean_start=False,
                    properties=props,
                    timeout=5,
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        number = json.loads(m.payload)["n"]
                        user = dict(getattr(m.properties, "UserProperty", []))
                        self.by_number[number].add(user["msg-id"])
                        self.deliveries += 1
                        self._changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.by_number) < count:
                self._changed.clear()
                await self._changed.wait()

    def assert_exactly_once(self, count: int) -> None:
        missing = sorted(set(range(count)) - set(self.by_number))
        assert not missing, f"lost messages: {missing[:20]}"
        multi = {n: ids for n, ids in self.by_number.items() if len(ids) != 1}
        assert not multi, f"numbers published under several msg-ids: {multi}"


@contextlib.asynccontextmanager
async def collecting(broker: MosquittoBroker, topic_filter: str):
    collector = Collector(broker, topic_filter)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run(), name="collector")
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        try:
            yield collector
        finally:
            task.cancel()


async def test_no_loss_across_two_broker_restarts(
    broker: MosquittoBroker, transport_kind: TransportKind, tmp_path: Path
):
    total = 300
    prefix = f"t/{uuid.uuid4().hex[:8]}"
    device = DeviceClient(
        broker.make_identity(f"robot-{transport_kind}"),
        broker.endpoint,
        transport=transport_kind,
        outbox=OutboxConfig(tmp_path / "outbox.db"),
        options=OPTS,
        reconnect=FAST,
    )
    async with collecting(broker, f"{prefix}/#") as collector, device:

        async def restart() -> None:
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(0.4)  # publishing goes on into the outbox meanwhile
            await asyncio.to_thread(broker.start)

        async with asyncio.TaskGroup() as tg:
            restarts: list[asyncio.Task[None]] = []
            for n in range(total):
                await device.publish(f"{prefix}/{n % 5}", {"n": n})
                if n in (60, 180):
                    if restarts:
                        await restarts[-1]
                    async with asyncio.timeout(10):
                        await device.wait_connected()  # each restart drops a live connection
                    restarts.append(tg.create_task(restart()))
                await asyncio.sleep(0.004)
        async with asyncio.timeout(30):
            await device.drain()
        await collector.wait_for(total, timeout=20)
        collector.assert_exactly_once(total)
        stats = device.outbox_statistics()
        metrics = device.metrics().counters
        assert stats.depth == 0
        assert stats.acked == total
        assert metrics["disconnects"] >= 2
        assert metrics["connects"] >= 3


async def test_unacked_messages_survive_a_client_restart(
    broker: MosquittoBroker, transport_kind: TransportKind, tmp_path: Path
):
    total = 80
    prefix = f"t/{uuid.uuid4().hex[:8]}"
    identity = broker.make_identity(f"robot-r-{transport_kind}")
    config = OutboxConfig(tmp_path / "outbox.db")

    def make() -> DeviceClient:
        return DeviceClient(
            identity,
            broker.endpoint,
            transport=transport_kind,
            outbox=config,
            options=OPTS,
            reconnect=FAST,
            require_initial_connection=False,
        )

    async with collecting(broker, f"{prefix}/#") as collector:
        first = make()
        async with first:
            for n in range(30):
                await first.publish(f"{prefix}/a", {"n": n}, wait_ack=True)
            await asyncio.to_thread(broker.stop)
            for n in range(30, total):  # persisted, never sent: the broker is down
                await first.publish(f"{prefix}/a", {"n": n})
            assert first.outbox_statistics().depth == total - 30
        # "killed" before draining; the next process opens the same file
        await asyncio.to_thread(broker.start)
        second = make()
        async with second:
            assert second.outbox_statistics().recovered == total - 30
            async with asyncio.timeout(20):
                await second.drain()
            assert second.outbox_statistics().replayed >= total - 30
        await collector.wait_for(total, timeout=20)
        collector.assert_exactly_once(total)
