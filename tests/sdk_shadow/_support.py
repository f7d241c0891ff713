"""Shared helpers for the shadow and jobs tests: devices on the real stub, a cuttable link."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

from cloud_stubs import LocalIoTCore
from cloud_stubs._control import shadow_request
from cloud_stubs.shadow._topics import ShadowOperation
from device_sdk import (
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    ReconnectPolicy,
)

T = TypeVar("T")

FAST_RECONNECT = ReconnectPolicy(base_s=0.05, cap_s=0.2, min_interval_s=0.05)


def make_device(
    core: LocalIoTCore, name: str, *, port: int | None = None, must_connect: bool = True
) -> DeviceClient:
    """A DeviceClient for thing ``name`` (created if needed), optionally through a proxy port."""
    ident = core.create_thing(name)
    return DeviceClient(
        DeviceIdentity.from_files(ident.cert_file, ident.key_file, ident.ca_file),
        Endpoint(core.endpoint.host, port or core.endpoint.port, ca_file=ident.ca_file),
        transport="paho",
        # The embedded broker speaks MQTT 3.1.1 only.
        options=ConnectionOptions(mqtt_version=5 if core.endpoint.broker == "mosquitto" else 3),
        reconnect=FAST_RECONNECT,
        require_initial_connection=must_connect,
    )


async def cloud_shadow(
    core: LocalIoTCore,
    op: ShadowOperation,
    thing: str,
    body: dict[str, Any] | None = None,
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """A shadow request made by the cloud side (an application), not by the device."""
    accepted, reply = await shadow_request(core.paths, op, thing, name, body or {})
    assert accepted or op is not ShadowOperation.UPDATE, reply
    return reply


async def set_desired(
    core: LocalIoTCore, thing: str, desired: dict[str, Any], *, name: str | None = None
) -> int:
    """Update the desired state from the cloud side; return the new version."""
    reply = await cloud_shadow(
        core, ShadowOperation.UPDATE, thing, {"state": {"desired": desired}}, name=name
    )
    return int(reply["version"])


async def cloud_state(core: LocalIoTCore, thing: str, *, name: str | None = None) -> dict[str, Any]:
    """The shadow's ``state`` as the cloud sees it (``{}`` if there is none)."""
    reply = await cloud_shadow(core, ShadowOperation.GET, thing, name=name)
    state = reply.get("state", {})
    assert isinstance(state, dict)
    return state


async def service_publish(core: LocalIoTCore, topic: str, payload: bytes | dict[str, Any]) -> None:
    """Publish anything anywhere with the stub's privileged identity (fault injection)."""
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    async with core.service_client("test") as client:
        await client.publish(topic, data, qos=1)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until ``accept`` holds; return the accepted value (or fail with the last)."""
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await probe()
                if accept(last):
                    return last
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(
            f"condition not met within {timeout} s; last value: {last!r}"
        ) from None


class CuttableLink:
    """A TCP proxy in front of the broker whose connections can be cut and refused.

    ``cut()`` closes every current connection (the device sees the link drop);
    while ``down`` is true new connections are closed at once, so the device stays offline.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every current connection."""
        for writer in list(self._writers):
            writer.close()

    async def go_offline(self) -> None:
        """Cut the link and refuse new connections until :meth:`go_online`."""
        self.down = True
        self.cut()
        await asyncio.sleep(0.05)

    def go_online(self) -> None:
        """Accept connections again."""
        self.down = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self._writers |= {writer, up_writer}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_writer))
                tg.create_task(self._pump(up_reader, writer))
        except* (OSError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
