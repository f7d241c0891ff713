"""OTA end to end on a local IoT Core: deploy signed firmware to A/B devices, then a rollback.

Self-contained (starts its own stub in a temporary directory, or ``--state-dir``)::

    python examples/ota_walkthrough.py

1. Three things in a group ``fleet``, each an in-process device: DeviceClient + JobRunner +
   OtaAgent with an A/B directory-slot installer. The stub's code-signing public key is
   pinned by key id.
2. Firmware 2.0.0 is uploaded (hashed and signed) and deployed in one batch. Each device
   validates the ``ota/1`` document, downloads over HTTPS (stub CA), verifies SHA-256 and the
   ECDSA signature, installs to the inactive slot, switches the ``active`` symlink on trial,
   "reboots" (the runner returns; the loop boots the device again), passes its health
   checks, commits, and only then reports SUCCEEDED. The version lands in the shadow.
3. Firmware 3.0.0 goes to robot-4, whose application health check fails: the trial slot is
   rolled back and the execution is FAILED (reason_code HEALTH_CHECK_FAILED); 1.0.0 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import create_deployment
from cloud_stubs.firmware import FirmwareStore, public_key_pem
from cloud_stubs.firmware._paths import OtaPaths
from device_sdk import ConnectionOptions, DeviceClient, DeviceIdentity, Endpoint
from device_sdk.jobs import JobRunner, JobsClient
from device_sdk.ota import (
    ABSlotInstaller,
    HealthCheck,
    OtaAgent,
    OtaConfig,
    OtaJournal,
    key_id_of,
    ota_job_handler,
    shadow_version_hook,
)
from device_sdk.shadow import ShadowClient

DEVICE_TYPE = "robot-pi"


class Device:
    """A device whose state (slots, OTA journal, jobs journal) lives under ``root``."""

    def __init__(self, core: LocalIoTCore, thing: str, root: Path, *, healthy: bool = True) -> None:
        self.core, self.thing, self.root, self.healthy = core, thing, root, healthy
        self.ident = core.create_thing(thing)
        self.installer = ABSlotInstaller(root / "slots", initial_version="1.0.0")
        pem = public_key_pem(OtaPaths.of(core.paths))
        self.keys = {key_id_of(pem): pem}

    async def app_healthy(self) -> bool:
        return self.healthy

    async def boot(self) -> None:
        """Boot, run jobs until one asks for a reboot, return (the caller boots again)."""
        self.installer.boot()  # the fake bootloader: falls back from a failed trial slot
        agent = OtaAgent(
            self.installer,
            OtaConfig(
                device_type=DEVICE_TYPE,
                trusted_keys=self.keys,
                state_dir=self.root / "ota",
                ca_file=Path(self.ident.ca_file),
                health_checks=[HealthCheck("app", self.app_healthy, timeout_s=5)],
            ),
        )
        identity = DeviceIdentity.from_files(
            self.ident.cert_file, self.ident.key_file, self.ident.ca_file
        )
        endpoint = Endpoint(
            self.core.endpoint.host, self.core.endpoint.port, ca_file=self.ident.ca_file
        )
        version: Literal[3, 5] = 5 if self.core.endpoint.broker == "mosquitto" else 3
        async with (
            DeviceClient(
                identity,
                endpoint,
                transport="paho",
                options=ConnectionOptions(mqtt_version=version),
            ) as device,
            JobsClient(device) as jobs,
            ShadowClient(device) as shadow,
        ):
            handler = ota_job_handler(agent, jobs, on_version=shadow_version_hook(shadow))
            runner = JobRunner(
                device, {"ota": handler}, journal_path=self.root / "jobs.journal", jobs=jobs
            )
            outcome = await runner.run()
            print(f"  {self.thing}: reboot requested ({outcome.status_details.get('state')})")

    async def run(self) -> None:
        while True:
            await self.boot()


async def deploy(core: LocalIoTCore, firmware_id: str, things: list[str]) -> None:
    dep = create_deployment(
        core.paths,
        firmware_id=firmware_id,
        things=things,
        batch_size=len(things),
        success_threshold=1.0,
    )
    if core.ota is None:
        raise SystemExit("the stub does not run OTA")
    async with asyncio.timeout(60):
        done = await core.ota.engine.wait(dep.deployment_id, settled=True)
    print(
        f"deployment {dep.deployment_id}: {done.status}"
        + (f" ({done.reason})" if done.reason else "")
    )
    for thing in things:
        ex = await core.jobs_control(
            "describe-execution", job_id=f"{dep.deployment_id}-b1", thing=thing
        )
        details = ex["statusDetails"]["detailsMap"]
        print(
            f"  {thing}: {ex['status']:9} state={details.get('state')} "
            f"reason={details.get('reason_code', '-')} progress={details.get('progress')}"
        )


async def main(state_dir: Path) -> None:
    async with LocalIoTCore(state_dir, broker="auto") as core:
        if core.ota is not None:
            core.ota.engine.poll_interval_s = 0.1
        fleet = [
            Device(core, f"robot-{i}", state_dir / "devices" / f"robot-{i}") for i in (1, 2, 3)
        ]
        sick = Device(core, "robot-4", state_dir / "devices" / "robot-4", healthy=False)
        tasks = [asyncio.create_task(d.run()) for d in [*fleet, sick]]
        try:
            image = state_dir / "robot-2.0.0.img"
            image.write_bytes(os.urandom(256 * 1024))
            with FirmwareStore(core.paths) as store:
                fw2 = store.upload(image, version="2.0.0", device_type=DEVICE_TYPE)
                image.write_bytes(os.urandom(256 * 1024))
                fw3 = store.upload(image, version="3.0.0", device_type=DEVICE_TYPE)
            print(f"uploaded {fw2.firmware_id} 2.0.0 (key {fw2.key_id}), {fw3.firmware_id} 3.0.0")

            print("\n== 2.0.0 to robot-1..3 ==")
            await deploy(core, fw2.firmware_id, [d.thing for d in fleet])
            print("\n== 3.0.0 to robot-4, whose app health check fails ==")
            await deploy(core, fw3.firmware_id, [sick.thing])
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        print("\nrunning versions:")
        for d in [*fleet, sick]:
            print(
                f"  {d.thing}: {d.installer.current_version()} (slot {d.installer.active_slot()})"
            )
        states = [
            h["state"] for h in OtaJournal(sick.root / "ota").history() if h["event"] == "state"
        ]
        print("\nrobot-4 journal:", " -> ".join(json.dumps(s)[1:-1] for s in states))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.state_dir:
        asyncio.run(main(args.state_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="ota-walkthrough-") as tmp:
            asyncio.run(main(Path(tmp)))
