"""Broker stopped for 5 s while the agent runs: every reading arrives (counted by ``seq``).

The collector is the stub's privileged identity with a fixed client id and a persistent
session, reconnecting every 50 ms; the broker keeps its port across the restart. The embedded
broker forgets sessions when it stops, so the agent reaches the broker through a gate (a TCP
relay) that lets it back in only once the collector has resubscribed: otherwise the replayed
readings could reach the broker before anyone listens again, which is not the agent's doing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_stubs import LocalIoTCore
from cloud_stubs._paths import SERVICE_CLIENT_PREFIX
from edge_agent import AgentConfig
from tests.edge_agent.conftest import PYTHON, AgentEnv, Gate, free_port, running_agent

OUTAGE_S = 5.0


@pytest.fixture(params=["mosquitto", "embedded"])
async def fixed_cloud(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LocalIoTCore]:
    core = LocalIoTCore(tmp_path / "iot-state", broker=request.param, port=free_port())
    await core.start()
    try:
        yield core
    finally:
        await core.stop()


class Collector:
    def __init__(self, core: LocalIoTCore, topic_filter: str) -> None:
        self.core = core
        self.topic_filter = topic_filter
        self.seqs: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
        self.deliveries = 0
        self.subscribed = asyncio.Event()
        self.changed = asyncio.Event()

    def _tls(self) -> ssl.SSLContext:
        paths = self.core.paths
        ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
        ctx.load_cert_chain(str(paths.service_cert), str(paths.service_key))
        return ctx

    async def run(self) -> None:
        mqtt5 = self.core.broker.name == "mosquitto"
        kwargs: dict[str, object] = {}
        if mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600
            kwargs = {"clean_start": False, "properties": props}
        else:
            kwargs = {"clean_session": False}
        while True:
            try:
                async with aiomqtt.Client(
                    self.core.broker.host,
                    self.core.broker.port,
                    identifier=f"{SERVICE_CLIENT_PREFIX}-edge-agent-collector",
                    protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
                    tls_context=self._tls(),
                    timeout=5,
                    **kwargs,  # type: ignore[arg-type]
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        body = json.loads(m.payload)
                        self.seqs[body["source"]].add((body["boot"], body["seq"]))
                        self.deliveries += 1
                        self.changed.set()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.05)

    def count(self, source: str) -> int:
        return len(self.seqs[source])

    def assert_no_gaps(self, source: str) -> None:
        got = sorted(seq for _, seq in self.seqs[source])
        assert got == list(range(len(got))), (
            f"{source}: missing {set(range(max(got) + 1)) - set(got)}"
        )


async def test_no_telemetry_lost_during_broker_outage(fixed_cloud: LocalIoTCore, tmp_path: Path):
    thing = fixed_cloud.create_thing("edge-outage")
    env = AgentEnv(
        fixed_cloud,
        tmp_path,
        thing.thing_name,
        thing.cert_file,
        thing.key_file,
        5 if fixed_cloud.broker.name == "mosquitto" else 3,
    )
    gate = Gate(fixed_cloud.broker.port)
    gate_port = await gate.start()
    endpoint = tmp_path / "endpoint-via-gate.json"
    endpoint.write_text(
        json.dumps(
            {"host": "127.0.0.1", "port": gate_port, "ca_file": str(fixed_cloud.paths.ca_cert)}
        )
    )
    config = env.config(
        f"""
[[telemetry.command]]
name = "counter"
argv = [{json.dumps(PYTHON)}, "-c", "print('{{\\"up\\": 1}}')"]
interval_s = 1
format = "json"
""",
        system_interval_s=1,
        endpoint_file=endpoint,
    )
    collector = Collector(fixed_cloud, f"dt/{thing.thing_name}/telemetry/+")
    try:
        await _run(fixed_cloud, gate, collector, config)
    finally:
        await gate.close()


async def _run(
    fixed_cloud: LocalIoTCore, gate: Gate, collector: Collector, config: AgentConfig
) -> None:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        await asyncio.wait_for(collector.subscribed.wait(), 10)
        async with running_agent(config) as agent:
            async with asyncio.timeout(10):
                while collector.count("system") < 2 or collector.count("counter") < 2:
                    collector.changed.clear()
                    await collector.changed.wait()
            gate.open = False
            await fixed_cloud.broker.stop()
            await asyncio.sleep(OUTAGE_S)
            assert agent.session is not None
            depth = agent.session.device.outbox_statistics().depth
            assert depth >= 4, "readings taken during the outage wait in the outbox"
            await fixed_cloud.broker.start()
            await asyncio.wait_for(collector.subscribed.wait(), 10)
            gate.open = True
            produced = {}
            async with asyncio.timeout(20):
                await agent.session.device.wait_connected()
                await agent.session.device.drain()
                produced = {n: s.readings for n, s in agent.session.scheduler.stats.items()}
                while any(collector.count(n) < produced[n] for n in ("system", "counter")):
                    collector.changed.clear()
                    await collector.changed.wait()
        task.cancel()
    for name in ("system", "counter"):
        collector.assert_no_gaps(name)
        assert collector.count(name) >= produced[name] >= 7
