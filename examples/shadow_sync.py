"""A thermostat whose settings live in its device shadow (ShadowSync).

Run against the local IoT Core::

    cloud-stubs up --state-dir state                      # in another terminal
    cloud-stubs thing create thermo-1 --state-dir state
    python examples/shadow_sync.py --state-dir state --thing thermo-1   # until Ctrl-C

Then change the desired settings from another terminal, also while the device is stopped
(it catches up when it comes back) ::

    cloud-stubs shadow update thermo-1 --desired '{"target_c": 22.5}' --state-dir state
    cloud-stubs shadow update thermo-1 --desired '{"mode": "cool"}' --state-dir state
    cloud-stubs shadow update thermo-1 --desired '{"target_c": 99}' --state-dir state  # invalid
    cloud-stubs shadow get thermo-1 --state-dir state

Each valid change is applied and reported; an invalid one is reported under ``reported.error``
and ignored. The local copy lives in ``--store`` (default ``thermo-1.shadow.json``), so the
last settings apply at the next start even before the device is online.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Literal

import pydantic

from device_sdk import ConnectionOptions, DeviceClient, DeviceIdentity, Endpoint
from device_sdk.shadow import ShadowChange, ShadowSync
from device_sdk.transport import TransportKind


class Settings(pydantic.BaseModel):
    """The desired state the thermostat accepts."""

    target_c: float = pydantic.Field(default=21.0, ge=5, le=30)
    mode: Literal["heat", "cool", "off"] = "heat"


def endpoint_for(state_dir: Path) -> tuple[Endpoint, ConnectionOptions, TransportKind]:
    """The stub's endpoint; the embedded broker speaks MQTT 3.1.1 only (paho transport)."""
    path = state_dir / "endpoint.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: start 'cloud-stubs up --state-dir {state_dir}'")
    if json.loads(path.read_text()).get("broker") == "embedded":
        return Endpoint.from_json_file(path), ConnectionOptions(mqtt_version=3), "paho"
    return Endpoint.from_json_file(path), ConnectionOptions(), "auto"


async def apply(change: ShadowChange[Settings]) -> Settings:
    """Drive the (pretend) hardware; report what is now in force."""
    settings = change.model or Settings()
    print(f"v{change.version}: applying {change.delta} -> {settings.mode} at {settings.target_c}")
    await asyncio.sleep(0.1)  # the relay takes a moment
    return settings


async def main(args: argparse.Namespace) -> None:
    state: Path = args.state_dir
    endpoint, options, transport = endpoint_for(state)
    thing_dir = state / "things" / args.thing
    identity = DeviceIdentity.from_files(
        thing_dir / "cert.pem", thing_dir / "key.pem", endpoint.ca_file, thing_name=args.thing
    )
    store = args.store or Path(f"{args.thing}.shadow.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    device = DeviceClient(
        identity,
        endpoint,
        transport=transport,
        options=options,
        require_initial_connection=False,  # start offline if need be; the sync catches up
    )
    async with (
        device,
        ShadowSync(device, store_path=store, model=Settings, handler=apply) as sync,
    ):
        print(f"{args.thing}: last known settings {sync.reported or '(none)'} (v{sync.version})")
        await sync.report({"firmware": "1.0.0"})
        await sync.wait_synced()
        print(f"{args.thing}: in sync at v{sync.version}; waiting for changes (Ctrl-C to stop)")
        await stop.wait()
        print(f"stopped; statistics: {sync.statistics()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".iot-state"))
    parser.add_argument("--thing", default="thermo-1")
    parser.add_argument("--store", type=Path, default=None, help="local shadow copy (JSON)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(parser.parse_args()))
