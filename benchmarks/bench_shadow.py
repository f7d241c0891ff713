"""Shadow service throughput and latency through the local IoT Core (mosquitto backend).

Runs `cloud-stubs up` as its own process (so the service's CPU is its own), then drives it with
awscrt MQTT 5 device clients, each with its own certificate:

1. throughput: D devices pipeline `shadow/update` requests (a window of W in flight each) for
   S seconds; reports accepted updates per second and the stub process's CPU per update.
2. latency: 1,000 idle devices stay connected while one device does sequential update round
   trips (publish -> `/update/accepted`); reports p50/p99.

Baseline, side by side in the same run: the same round trip through the same broker with no
service in the path (a service-identity echo client republishes `dt/<thing>/ping` to
`dt/<thing>/pong`), so the ratio shows what the shadow service adds.

Usage: python benchmarks/bench_shadow.py [--devices 20] [--window 50] [--seconds 10] [--idle 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs._service_client import NODELAY, service_client, tls_context
from cloud_stubs._state import ensure_state, issue_things, load_ca


class Dev:
    def __init__(self, ep: dict[str, Any], ident: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.ready = loop.create_future()
        self.name = ident.thing_name

        def on_pub(d: mqtt5.PublishReceivedData) -> None:
            loop.call_soon_threadsafe(
                self.inbox.put_nowait, (d.publish_packet.topic, d.publish_packet.payload)
            )

        def on_ok(_: Any) -> None:
            loop.call_soon_threadsafe(lambda: self.ready.done() or self.ready.set_result(True))

        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=ep["host"],
            port=ep["port"],
            cert_filepath=str(ident.cert_file),
            pri_key_filepath=str(ident.key_file),
            ca_filepath=str(ident.ca_file),
            client_id=ident.thing_name,
            on_publish_received=on_pub,
            on_lifecycle_connection_success=on_ok,
        )

    async def start(self) -> None:
        self.client.start()
        await asyncio.wait_for(self.ready, 60)

    async def sub(self, flt: str) -> None:
        f = self.client.subscribe(
            mqtt5.SubscribePacket([mqtt5.Subscription(flt, mqtt5.QoS.AT_LEAST_ONCE)])
        )
        await asyncio.wrap_future(f)

    def pub(self, topic: str, payload: bytes) -> asyncio.Future[Any]:
        return asyncio.wrap_future(
            self.client.publish(
                mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
            )
        )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    ep: dict[str, Any], devs: list[Dev], window: int, seconds: float, pid: int
) -> dict[str, float]:
    for d in devs:
        await d.sub(f"$aws/things/{d.name}/shadow/update/accepted")
    stop_at = time.perf_counter() + seconds
    counts = [0] * len(devs)

    async def drive(i: int, d: Dev) -> None:
        seq = 0
        in_flight = 0
        topic = f"$aws/things/{d.name}/shadow/update"
        while time.perf_counter() < stop_at:
            while in_flight < window:
                seq += 1
                d.pub(topic, json.dumps({"state": {"reported": {"seq": seq}}}).encode())
                in_flight += 1
            await d.inbox.get()
            in_flight -= 1
            counts[i] += 1

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(drive(i, d) for i, d in enumerate(devs)))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    total = sum(counts)
    return {
        "updates": total,
        "updates_per_s": total / wall,
        "stub_cpu_ms_per_update": 1000 * cpu / max(total, 1),
    }


async def round_trips(
    d: Dev, req_topic: str, resp_filter: str, payload_fn: Any, n: int
) -> list[float]:
    await d.sub(resp_filter)
    while not d.inbox.empty():
        d.inbox.get_nowait()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await d.pub(req_topic, payload_fn(i))
        await asyncio.wait_for(d.inbox.get(), 10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def aio_round_trips(
    c: aiomqtt.Client, req: str, resp: str, payload_fn: Any, n: int
) -> list[float]:
    await c.subscribe(resp, qos=1)
    it = c.messages.__aiter__()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await c.publish(req, payload_fn(i), qos=1)
        await asyncio.wait_for(it.__anext__(), 10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--round-trips", type=int, default=500)
    args = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        paths = StatePaths.at(Path(tmp) / "state")
        reg = ensure_state(paths)
        ca = load_ca(paths)
        t0 = time.perf_counter()
        idents = issue_things(reg, ca, [f"bench-{i}" for i in range(args.devices + args.idle + 1)])
        print(f"issued {len(idents)} identities in {time.perf_counter() - t0:.1f}s")
        reg.close()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from cloud_stubs.cli import main; main()",
                "up",
                "--state-dir",
                str(paths.root),
                "--port",
                "0",
                "--broker",
                "mosquitto",
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ep = json.loads(await asyncio.to_thread(proc.stdout.readline))
            workers = [Dev(ep, i, loop) for i in idents[: args.devices]]
            await asyncio.gather(*(w.start() for w in workers))
            tp = await throughput(ep, workers, args.window, args.seconds, proc.pid)
            print(
                f"throughput: {tp['updates_per_s']:.0f} shadow updates/s "
                f"({tp['updates']} in {args.seconds:.0f}s, {args.devices} devices x window {args.window}); "
                f"stub process {tp['stub_cpu_ms_per_update']:.3f} ms CPU per update"
            )
            for w in workers:
                w.client.stop()
            idle = [Dev(ep, i, loop) for i in idents[args.devices : args.devices + args.idle]]
            t0 = time.perf_counter()
            for k in range(0, len(idle), 100):
                await asyncio.gather(*(d.start() for d in idle[k : k + 100]))
            print(f"{len(idle)} idle devices connected in {time.perf_counter() - t0:.1f}s")
            # Latency probe: aiomqtt with TCP_NODELAY. (awscrt 0.36 leaves Nagle on, which with
            # the broker's delayed ACK adds ~40 ms to every request/response pair.)
            probe_id = idents[-1]
            name = probe_id.thing_name
            probe = aiomqtt.Client(
                ep["host"],
                ep["port"],
                identifier=name,
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_context=tls_context(probe_id.ca_file, probe_id.cert_file, probe_id.key_file),
                socket_options=NODELAY,
            )
            async with probe:
                shadow = await aio_round_trips(
                    probe,
                    f"$aws/things/{name}/shadow/update",
                    f"$aws/things/{name}/shadow/update/accepted",
                    lambda i: json.dumps({"state": {"reported": {"n": i}}}).encode(),
                    args.round_trips,
                )
                # Baseline: same broker and path, a trivial echo instead of the shadow service.
                async with service_client(paths, ep["host"], ep["port"], purpose="echo") as echo:
                    await echo.subscribe(f"dt/{name}/ping", qos=1)

                    async def run_echo() -> None:
                        async for m in echo.messages:
                            await echo.publish(f"dt/{name}/pong", m.payload, qos=1)

                    task = asyncio.create_task(run_echo())
                    base = await aio_round_trips(
                        probe,
                        f"dt/{name}/ping",
                        f"dt/{name}/pong",
                        lambda i: b'{"n": %d}' % i,
                        args.round_trips,
                    )
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task
            for label, vals in (
                ("shadow update round trip", shadow),
                ("baseline echo round trip", base),
            ):
                print(
                    f"{label} with {len(idle)} idle devices: p50 {pct(vals, 50):.2f} ms, p99 {pct(vals, 99):.2f} ms"
                )
            print(
                f"ratio shadow/baseline: p50 {pct(shadow, 50) / pct(base, 50):.2f}x, p99 {pct(shadow, 99) / pct(base, 99):.2f}x"
            )
            for d in idle:
                d.client.stop()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except aiomqtt.MqttError as exc:
        raise SystemExit(f"benchmark failed: {exc}") from exc
