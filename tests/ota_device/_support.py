"""OTA devices for the acceptance tests: DeviceClient + JobRunner + OtaAgent on the real stub.

A device "boots" in a loop: a fresh DeviceClient, agent (new boot id) and JobRunner each
time; when the runner returns for a reboot, the fake bootloader (``ABSlotInstaller.boot``)
runs and the device boots again. Everything persistent lives under ``root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import OtaRuntime
from cloud_stubs.firmware import FirmwareManifest, FirmwareStore, public_key_pem
from cloud_stubs.firmware._paths import OtaPaths
from device_sdk.jobs import JobOutcome, JobRunner, JobsClient
from device_sdk.ota import (
    ABSlotInstaller,
    FaultPlan,
    HealthCheck,
    Installer,
    OtaAgent,
    OtaConfig,
    key_id_of,
    ota_job_handler,
    shadow_version_hook,
)
from device_sdk.shadow import ShadowClient
from tests.sdk_shadow._support import make_device

DEVICE_TYPE = "robot-pi"


def trusted_keys(core: LocalIoTCore) -> dict[str, bytes]:
    pem = public_key_pem(OtaPaths.of(core.paths))
    return {key_id_of(pem): pem}


def upload(core: LocalIoTCore, tmp: Path, version: str, size: int = 96 * 1024) -> FirmwareManifest:
    image = tmp / f"image-{version}.bin"
    image.write_bytes(os.urandom(size))
    with FirmwareStore(core.paths) as store:
        return store.upload(image, version=version, device_type=DEVICE_TYPE)


def image_bytes(core: LocalIoTCore, firmware_id: str) -> bytes:
    return OtaPaths.of(core.paths).image_file(firmware_id).read_bytes()


@dataclasses.dataclass
class OtaDevice:
    """One simulated device with persistent state under ``root``."""

    core: LocalIoTCore
    thing: str
    root: Path
    installer: Installer
    health_checks: Sequence[HealthCheck] = ()
    fault_plan: FaultPlan | None = None
    boots: int = 0
    outcomes: list[JobOutcome] = dataclasses.field(default_factory=list)
    shadow: bool = True
    config_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    port: int | None = None  # connect through a proxy (e.g. a CuttableLink)
    disconnect: Callable[[], Awaitable[None]] | None = None  # the mqtt.disconnect hook

    def config(self) -> OtaConfig:
        ident = self.core.create_thing(self.thing)
        return OtaConfig(
            device_type=DEVICE_TYPE,
            trusted_keys=trusted_keys(self.core),
            state_dir=self.root / "ota",
            ca_file=Path(ident.ca_file),
            health_checks=self.health_checks,
            fault_plan=self.fault_plan,
            progress_interval_s=0.2,
            retry_delay_s=0.05,
            **self.config_overrides,
        )

    def agent(self) -> OtaAgent:
        return OtaAgent(self.installer, self.config(), disconnect=self.disconnect)

    async def boot_once(self) -> JobOutcome:
        """One boot: run the jobs until a reboot is requested (or cancelled)."""
        self.boots += 1
        if isinstance(self.installer, ABSlotInstaller):
            self.installer.boot()
        agent = self.agent()
        async with (
            make_device(self.core, self.thing, port=self.port) as device,
            JobsClient(device) as jobs,
            ShadowClient(device) as shadow,
        ):
            hook = shadow_version_hook(shadow) if self.shadow else None
            handler = ota_job_handler(agent, jobs, on_version=hook)
            runner = JobRunner(
                device, {"ota": handler}, journal_path=self.root / "jobs.journal", jobs=jobs
            )
            async with runner.outcomes() as stream:
                collector = asyncio.create_task(self._collect(stream))
                try:
                    return await runner.run()
                finally:
                    collector.cancel()

    async def _collect(self, stream: Any) -> None:
        async for outcome in stream:
            self.outcomes.append(outcome)

    async def run_forever(self) -> None:
        while True:
            await self.boot_once()


def ab_device(core: LocalIoTCore, thing: str, tmp: Path, **kwargs: Any) -> OtaDevice:
    root = tmp / thing
    core.create_thing(thing)
    return OtaDevice(core, thing, root, ABSlotInstaller(root / "slots"), **kwargs)


@contextlib.asynccontextmanager
async def running(devices: Sequence[OtaDevice]) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(d.run_forever(), name=f"ota-device[{d.thing}]") for d in devices]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def execution(core: LocalIoTCore, job_id: str, thing: str) -> dict[str, Any]:
    result = await core.jobs_control("describe-execution", job_id=job_id, thing=thing)
    assert isinstance(result, dict)
    return result


def details(ex: dict[str, Any]) -> dict[str, str]:
    found = (ex.get("statusDetails") or {}).get("detailsMap", {})
    assert isinstance(found, dict)
    return found


async def wait_terminal(
    core: LocalIoTCore, job_id: str, thing: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):
                ex = await execution(core, job_id, thing)
                if ex["status"] not in ("QUEUED", "IN_PROGRESS"):
                    return ex
            await asyncio.sleep(0.1)


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def ota_runtime(core: LocalIoTCore) -> OtaRuntime:
    assert core.ota is not None, "the stub does not run OTA (core.ota)"
    return core.ota
