"""Fixtures for edge_agent tests: a thing on the real local IoT Core and an agent.toml for it.

Everything runs against ``cloud_stubs`` (real broker, real certificates). The embedded broker
speaks MQTT 3.1.1 only, so the agent uses the paho transport with ``mqtt_version = 3`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_stubs import LocalIoTCore
from edge_agent import Agent, AgentConfig, load_config
from edge_agent._tasks import start

PYTHON = sys.executable
# The embedded broker is MQTT 3.1.1 only, which the CRT transport does not speak: paho by
# default; EDGE_AGENT_TEST_TRANSPORT=crt runs the mosquitto cases on awscrt.
TRANSPORT = os.environ.get("EDGE_AGENT_TEST_TRANSPORT", "paho")


class Gate:
    """A TCP relay to the broker that refuses connections while closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open = True
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()

    async def close_connections(self) -> None:
        for w in list(self.writers):
            w.close()
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.close_connections()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings, numbers, booleans and arrays match JSON


@dataclass
class AgentEnv:
    """A thing registered on the stub, and a config file for an agent acting as it."""

    cloud: LocalIoTCore
    root: Path
    thing_name: str
    cert_file: Path
    key_file: Path
    mqtt_version: int
    extra: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config_file(self) -> Path:
        return self.root / "agent.toml"

    def write_config(
        self,
        body: str = "",
        *,
        system_interval_s: float = 1.0,
        endpoint_file: Path | None = None,
        log_level: str = "debug",
    ) -> Path:
        endpoint = endpoint_file or self.cloud.paths.endpoint_file
        text = f"""\
state_dir = {toml_value(str(self.state_dir))}
firmware_version = "fw-1.0"

[endpoint]
file = {toml_value(str(endpoint))}

[identity]
cert_file = {toml_value(str(self.cert_file))}
key_file = {toml_value(str(self.key_file))}

[transport]
kind = "{TRANSPORT}"
mqtt_version = {self.mqtt_version}
keepalive_s = 30
connect_timeout_s = 5
reconnect_base_s = 0.2
reconnect_cap_s = 1.0

[telemetry.system]
interval_s = {system_interval_s}

[health]
port = 0

[logging]
level = "{log_level}"
{body}
"""
        self.config_file.write_text(text)
        return self.config_file

    def config(self, body: str = "", **kwargs: Any) -> AgentConfig:
        return load_config(self.write_config(body, **kwargs))


@pytest.fixture
def agent_env(cloud: LocalIoTCore, tmp_path: Path, request: pytest.FixtureRequest) -> AgentEnv:
    name = "edge-" + request.node.name.split("[")[0].removeprefix("test_")[:40].replace("_", "-")
    thing = cloud.create_thing(name)
    return AgentEnv(
        cloud,
        tmp_path,
        thing.thing_name,
        thing.cert_file,
        thing.key_file,
        5 if cloud.broker.name == "mosquitto" else 3,
    )


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, **kwargs: Any) -> AsyncIterator[Agent]:
    """An in-process agent, ready (connected) on entry, stopped on exit."""
    agent = Agent(config, **kwargs)
    async with asyncio.TaskGroup() as tg:
        task = await asyncio.wait_for(start(tg, agent.run, name="agent"), 20)
        try:
            yield agent
        finally:
            agent.request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except TimeoutError:
                for t in asyncio.all_tasks():
                    t.print_stack()
                raise


class Subscriber:
    """A privileged subscriber (the stub's service identity) that records what it receives."""

    def __init__(self, cloud: LocalIoTCore, topic_filter: str) -> None:
        self.cloud = cloud
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    async def publish(self, topic: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        await self._client.publish(topic, json.dumps(body), qos=1)

    async def run(self, ready: asyncio.Event) -> None:
        async with self.cloud.service_client("edge-agent-test") as client:
            self._client = client
            await client.subscribe(self.topic_filter, qos=1)
            ready.set()
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                self.messages.append((str(m.topic), json.loads(m.payload)))
                self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def subscribed(cloud: LocalIoTCore, topic_filter: str) -> AsyncIterator[Subscriber]:
    sub = Subscriber(cloud, topic_filter)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sub.run(ready), name="subscriber")
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield sub
        finally:
            task.cancel()


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


def metric_value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


__all__ = [
    "PYTHON",
    "AgentEnv",
    "Gate",
    "Subscriber",
    "aiomqtt",
    "free_port",
    "http_get",
    "metric_value",
    "running_agent",
    "subscribed",
]
