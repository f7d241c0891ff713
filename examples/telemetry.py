"""Send telemetry from one device through the durable outbox.

Run against the local IoT Core (three terminals, or background the first)::

    cloud-stubs up --state-dir state
    cloud-stubs thing create robot-1 --state-dir state
    python examples/telemetry.py --state-dir state --thing robot-1 --count 5

The device connects with its own certificate (``state/things/<thing>/``; ``--cert``/``--key``
for others) to the endpoint in ``state/endpoint.json``, with client id = thing name, and
publishes ``{"seq", "temp", "ts"}`` to ``dt/<thing>/telemetry`` at QoS 1. Each message is first
stored in the SQLite outbox (``state/outbox-<thing>.db``): whatever is not acknowledged when the
program stops is sent on the next run. Watch the messages arrive with the stub's identity, e.g.
``cloud-stubs`` tests or any MQTT client using ``state/service/service.pem``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

from device_sdk import ConnectionOptions, DeviceClient, DeviceIdentity, Endpoint, OutboxConfig
from device_sdk.transport import TransportKind


def endpoint_for(state_dir: Path) -> tuple[Endpoint, ConnectionOptions, TransportKind]:
    """The stub's endpoint; the embedded broker speaks MQTT 3.1.1 only (paho transport)."""
    path = state_dir / "endpoint.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: start 'cloud-stubs up --state-dir {state_dir}'")
    if json.loads(path.read_text()).get("broker") == "embedded":
        return Endpoint.from_json_file(path), ConnectionOptions(mqtt_version=3), "paho"
    return Endpoint.from_json_file(path), ConnectionOptions(), "auto"


async def main(args: argparse.Namespace) -> None:
    state: Path = args.state_dir
    endpoint, options, transport = endpoint_for(state)
    cert = args.cert or state / "things" / args.thing / "cert.pem"
    key = args.key or state / "things" / args.thing / "key.pem"
    identity = DeviceIdentity.from_files(cert, key, endpoint.ca_file, thing_name=args.thing)
    outbox = OutboxConfig(path=state / f"outbox-{args.thing}.db")
    topic = f"dt/{args.thing}/telemetry"
    async with DeviceClient(
        identity, endpoint, transport=transport, options=options, outbox=outbox
    ) as device:
        print(f"{args.thing}: connected to {endpoint.host}:{endpoint.port}")
        for seq in range(1, args.count + 1):
            reading = {"seq": seq, "temp": round(random.uniform(18, 25), 2), "ts": time.time()}
            msg_id = await device.publish(topic, reading)  # durable once this returns
            print(f"queued {msg_id} -> {topic}: {reading}")
            await asyncio.sleep(args.interval)
        await device.drain()  # wait until the broker acknowledged everything
        stats = device.outbox_statistics()
        print(f"all acknowledged (outbox depth {stats.depth}); metrics: {device.metrics()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".iot-state"))
    parser.add_argument("--thing", default="robot-1")
    parser.add_argument("--cert", type=Path, help="certificate (default: the stub's layout)")
    parser.add_argument("--key", type=Path, help="private key (default: the stub's layout)")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between messages")
    asyncio.run(main(parser.parse_args()))
