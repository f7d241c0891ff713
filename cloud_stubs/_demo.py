"""The quick-start demo: a local IoT Core, one device with its own certificate, telemetry.

Until ``fleet_sim`` lands this is the README's main command (``./scripts/demo``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
from rich.console import Console
from rich.table import Table

from cloud_stubs._core import LocalIoTCore
from cloud_stubs._service_client import NODELAY, tls_context
from cloud_stubs.broker import BrokerKind

__all__ = ["run_demo"]


async def run_demo(
    state_dir: Path, *, count: int = 10, broker: BrokerKind = "auto", console: Console
) -> bool:
    """Run the demo; return True when the stub received every telemetry message."""
    thing = "demo-robot-1"
    topic = f"dt/{thing}/telemetry"
    async with LocalIoTCore(state_dir, broker=broker, port=0) as core:
        ep = core.endpoint
        console.print(
            f"[bold green]local IoT Core[/] on {ep.host}:{ep.port} (broker: {ep.broker}, "
            f"state: {ep.state_dir})"
        )
        ident = core.create_thing(thing)
        console.print(
            f"thing [bold]{thing}[/] registered, certificate {ident.certificate_id[:16]}…"
        )
        received: list[dict[str, object]] = []
        presence: list[str] = []
        mqtt5 = ep.broker == "mosquitto"
        async with core.service_client("demo-sink") as sink:
            await sink.subscribe("dt/#", qos=1)
            await sink.subscribe("$aws/events/presence/+/+", qos=1)

            async def collect() -> None:
                async for msg in sink.messages:
                    body = json.loads(bytes(msg.payload))  # type: ignore[arg-type,unused-ignore]
                    if str(msg.topic).startswith("$aws/events/presence/"):
                        presence.append(f"{body['eventType']} {body['clientId']}")
                    else:
                        received.append(body)
                    if len(received) >= count and len(presence) >= 2:  # noqa: PLR2004
                        return

            collector = asyncio.create_task(collect(), name="demo.collect")
            device = aiomqtt.Client(
                ep.host,
                ep.port,
                identifier=thing,
                protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
                tls_context=tls_context(ident.ca_file, ident.cert_file, ident.key_file),
                socket_options=NODELAY,
            )
            async with device:
                console.print(f"device connected with client id {thing} (mutual TLS)")
                for seq in range(1, count + 1):
                    payload = {
                        "thing": thing,
                        "seq": seq,
                        "battery": 100 - seq % 100,
                        "ts": int(time.time() * 1000),
                    }
                    await device.publish(topic, json.dumps(payload), qos=1)
            try:
                await asyncio.wait_for(collector, timeout=15)
            except TimeoutError:
                collector.cancel()
        table = Table(title=f"what the stub received on {topic}")
        table.add_column("seq", justify="right")
        table.add_column("battery", justify="right")
        for body in received[:20]:
            table.add_row(str(body["seq"]), str(body["battery"]))
        console.print(table)
        for line in presence:
            console.print(f"presence event: {line}")
        ok = len(received) == count
        console.print(
            f"[bold {'green' if ok else 'red'}]{len(received)}/{count} telemetry messages "
            "received by the stub[/]"
        )
        return ok
