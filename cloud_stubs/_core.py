"""``LocalIoTCore``: the local stand-in for AWS IoT Core's device side, as a Python object."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiomqtt

from cloud_stubs._paths import StatePaths
from cloud_stubs._policy import DEFAULT_DATA_PREFIXES
from cloud_stubs._registry import Registry
from cloud_stubs._service_client import service_client
from cloud_stubs._state import ThingIdentity, ensure_state, issue_thing, issue_things, load_ca
from cloud_stubs.broker import Broker, BrokerKind, create_broker
from cloud_stubs.services._build import build_services
from cloud_stubs.services._runtime import Service, ServiceHost

if TYPE_CHECKING:
    from cloud_stubs.deployments import OtaRuntime

__all__ = ["EndpointInfo", "LocalIoTCore"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointInfo:
    """Where devices connect: what ``endpoint.json`` holds."""

    host: str
    port: int
    ca_file: Path
    broker: str
    state_dir: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the content of ``endpoint.json``)."""
        return {
            "host": self.host,
            "port": self.port,
            "ca_file": str(self.ca_file),
            "broker": self.broker,
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
        }


class LocalIoTCore:
    """A running local IoT Core: broker with mTLS and per-thing policies, registry, services.

    Usage::

        async with LocalIoTCore("state", broker="auto") as core:
            robot = core.create_thing("robot-1")
            print(core.endpoint.host, core.endpoint.port)

    State (CA, registry, issued identities) lives in ``state_dir`` and survives restarts.
    """

    def __init__(
        self,
        state_dir: os.PathLike[str] | str,
        *,
        broker: BrokerKind = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
        data_prefixes: tuple[str, ...] = DEFAULT_DATA_PREFIXES,
        write_endpoint_file: bool = True,
        services: bool = True,
    ) -> None:
        """Configure the stub; nothing starts until ``async with`` (or :meth:`start`)."""
        self.paths = StatePaths.at(state_dir)
        self._broker_kind: BrokerKind = broker
        self._host = host
        self._port = port
        self._data_prefixes = data_prefixes
        self._write_endpoint = write_endpoint_file
        self._broker: Broker | None = None
        self._registry: Registry | None = None
        self._with_services = services
        self._services: list[Service] = []
        self._host_task: asyncio.Task[None] | None = None
        self.service_host: ServiceHost | None = None
        self.ota: OtaRuntime | None = None  # firmware file server + deployment engine
        self._ota_stack: contextlib.AsyncExitStack | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the state directory, start the broker and the services."""
        if self._broker is not None:
            raise RuntimeError("LocalIoTCore is already running")
        self._registry = ensure_state(self.paths, data_prefixes=self._data_prefixes)
        broker = create_broker(self._broker_kind, self.paths, host=self._host, port=self._port)
        await broker.start()
        self._broker = broker
        if self._with_services:
            try:
                await self._start_services()
                await self._start_ota()
            except BaseException:
                await self.stop()
                raise
        if self._write_endpoint:
            tmp = self.paths.endpoint_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.endpoint.to_dict(), indent=2) + "\n")
            tmp.replace(self.paths.endpoint_file)
        _log.info("local IoT Core ready on %s:%d (%s)", broker.host, broker.port, broker.name)

    async def stop(self) -> None:
        """Stop services and broker; remove ``endpoint.json``."""
        ota_stack, self._ota_stack, self.ota = self._ota_stack, None, None
        if ota_stack is not None:
            await ota_stack.aclose()
        await self._stop_services()
        broker, self._broker = self._broker, None
        try:
            if broker is not None:
                await broker.stop()
        finally:
            if self._write_endpoint:
                self.paths.endpoint_file.unlink(missing_ok=True)
            if self._registry is not None:
                self._registry.close()
                self._registry = None

    async def _start_services(self) -> None:
        self._services = build_services(self.paths, load_ca(self.paths))
        host = ServiceHost(
            lambda: self.service_client("services"),
            self._services,
            mqtt5=self.broker.name == "mosquitto",
        )
        ready = asyncio.Event()
        task = asyncio.create_task(host.run(ready), name="cloud_stubs.services")
        self._host_task, self.service_host = task, host
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when="FIRST_COMPLETED")
        if waiter not in done:
            waiter.cancel()
            if task in done:
                task.result()  # raises the reason the services could not start
            raise RuntimeError("the stub's services did not connect within 30 s")

    async def _start_ota(self) -> None:
        from cloud_stubs.deployments import start_ota  # noqa: PLC0415

        stack = contextlib.AsyncExitStack()
        self.ota = await stack.enter_async_context(start_ota(self))
        self._ota_stack = stack

    async def _stop_services(self) -> None:
        task, self._host_task = self._host_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for service in self._services:
            close = getattr(service, "close", None)
            if close is not None:
                close()
        self._services = []

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- accessors --------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The running broker backend."""
        if self._broker is None:
            raise RuntimeError("LocalIoTCore is not running: use 'async with LocalIoTCore(...)'")
        return self._broker

    @property
    def registry(self) -> Registry:
        """The thing/certificate registry."""
        if self._registry is None:
            raise RuntimeError("LocalIoTCore is not running: use 'async with LocalIoTCore(...)'")
        return self._registry

    @property
    def endpoint(self) -> EndpointInfo:
        """Host, port and CA file devices connect with."""
        b = self.broker
        return EndpointInfo(b.host, b.port, self.paths.ca_cert, b.name, self.paths.root)

    # -- registry shortcuts -----------------------------------------------------------------

    def create_thing(self, name: str) -> ThingIdentity:
        """Register a thing and issue its certificate (reused if it already has one)."""
        return issue_thing(self.registry, load_ca(self.paths), name)

    def create_things(self, prefix: str, count: int, *, start: int = 1) -> list[ThingIdentity]:
        """Register ``count`` things named ``prefix<n>`` with fresh certificates."""
        names = [f"{prefix}{i}" for i in range(start, start + count)]
        return issue_things(self.registry, load_ca(self.paths), names)

    def service(self, name: str) -> Service:
        """A running service by name (``shadow``, ``jobs``, ``provisioning``)."""
        for service in self._services:
            if service.name == name:
                return service
        raise RuntimeError(f"service {name!r} is not running")

    async def jobs_control(self, op: str, **args: Any) -> Any:
        """Jobs control plane (create, cancel, delete, describe, list, list-executions, ...).

        Notifications the operation causes are published to devices before this returns.
        Raises :class:`cloud_stubs.jobs.JobsError` subclasses for refused operations.
        """
        from cloud_stubs.jobs._service import JobsService  # noqa: PLC0415

        jobs = self.service("jobs")
        assert isinstance(jobs, JobsService)  # noqa: S101 - registry of services is internal
        result, messages = jobs.control(op, args)
        if self.service_host is not None:
            await self.service_host.emit(messages)
        return result

    async def reload(self) -> None:
        """Make the broker re-read the registry snapshot and policies now."""
        await self.broker.reload()

    def service_client(self, purpose: str = "client") -> aiomqtt.Client:
        """A privileged MQTT client (the stub's service identity), not yet connected."""
        return service_client(
            self.paths,
            self.broker.host,
            self.broker.port,
            purpose=purpose,
            mqtt5=self.broker.name == "mosquitto",
        )
