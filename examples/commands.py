"""A device that runs commands: AWS IoT Commands and the simple ``cmd/`` scheme.

Run against the local IoT Core::

    cloud-stubs up --state-dir state                      # in another terminal
    cloud-stubs thing create robot-1 --state-dir state
    python examples/commands.py --state-dir state --thing robot-1    # until Ctrl-C

Then, from another terminal, send it commands (the payload names the command)::

    echo '{"name": "set-led", "args": {"color": "red"}}' > set-led.json
    cloud-stubs commands create set-led --payload set-led.json \\
        --content-type application/json --state-dir state
    cloud-stubs commands send robot-1 --command set-led --wait --state-dir state
    echo '{"name": "self-destruct"}' > nope.json
    cloud-stubs commands create nope --payload nope.json \\
        --content-type application/json --state-dir state
    cloud-stubs commands send robot-1 --command nope --wait --state-dir state   # REJECTED
    cloud-stubs commands list --thing robot-1 --state-dir state

``set-led`` and ``status`` are allowed; anything else is REJECTED with ``UNKNOWN_COMMAND``. A
client with the stub's identity can also publish ``{"correlationId": "1", "args": {...}}`` to
``cmd/robot-1/request/status`` and read the answer on ``cmd/robot-1/response/status``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from device_sdk import (
    CommandRequest,
    Commands,
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
)
from device_sdk.commands import CommandFailedError
from device_sdk.transport import TransportKind

STARTED = time.monotonic()
LED: dict[str, str] = {"color": "off"}


def endpoint_for(state_dir: Path) -> tuple[Endpoint, ConnectionOptions, TransportKind]:
    """The stub's endpoint; the embedded broker speaks MQTT 3.1.1 only (paho transport)."""
    path = state_dir / "endpoint.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: start 'cloud-stubs up --state-dir {state_dir}'")
    if json.loads(path.read_text()).get("broker") == "embedded":
        return Endpoint.from_json_file(path), ConnectionOptions(mqtt_version=3), "paho"
    return Endpoint.from_json_file(path), ConnectionOptions(), "auto"


async def set_led(request: CommandRequest) -> dict[str, Any]:
    """Set the (pretend) LED; FAILED with a reason for colours it does not have."""
    color = request.args.get("color")
    if color not in ("red", "green", "blue", "off"):
        raise CommandFailedError("UNSUPPORTED_COLOR", f"no {color!r} LED")
    await asyncio.sleep(0.2)  # the hardware takes a moment
    LED["color"] = color
    print(f"LED is now {color} (execution {request.execution.execution_id})")
    return {"color": color}


async def status(request: CommandRequest) -> dict[str, Any]:  # noqa: ARG001
    """Report uptime and LED state."""
    return {"uptime_s": round(time.monotonic() - STARTED, 1), "led": LED["color"], "ok": True}


async def main(args: argparse.Namespace) -> None:
    state: Path = args.state_dir
    endpoint, options, transport = endpoint_for(state)
    identity = DeviceIdentity.from_files(
        state / "things" / args.thing / "cert.pem",
        state / "things" / args.thing / "key.pem",
        endpoint.ca_file,
        thing_name=args.thing,
    )
    async with DeviceClient(identity, endpoint, transport=transport, options=options) as device:
        commands = Commands(device, allow={"set-led", "status"})
        commands.register("set-led", set_led, timeout_s=5)
        commands.register("status", status)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with commands, asyncio.TaskGroup() as tg:
            server = tg.create_task(commands.serve(), name="example.commands.serve")
            print(f"{args.thing}: waiting for commands (Ctrl-C to stop)", flush=True)
            await stop.wait()
            server.cancel()
    print("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".iot-state"))
    parser.add_argument("--thing", default="robot-1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(parser.parse_args()))
