"""Shadow service throughput and latency through the local IoT Core (mosquitto backend).

Runs `cloud-stubs up` as its own process (so the service's CPU is its own), then drives it with
MQTT 5 device clients, each with its own certificate:

1. throughput: D devices pipeline `shadow/update` requests (a window of W in flight each) for
   S seconds; reports accepted updates per second and the CPU seconds (and CPU per update) of
   the stub process, of mosquitto (the stub's child) and of this load generator. Each accepted
   response sends the device's next request. The load generator shares the machine, so it must
   be cheap: by default (`--load lean`) each device is a minimal asyncio MQTT 5 session (the
   stub's own `_Session`, with the device's certificate and client id); `--load awscrt` drives
   awscrt MQTT 5 clients from their callback threads instead (0.25-0.45 ms of load generator
   CPU per update, which caps the rate at about 1,600-2,000/s on 2 cores).
2. latency: 1,000 idle (awscrt) devices stay connected while one device (aiomqtt) does
   sequential update round trips (publish -> `/update/accepted`); reports p50/p99.

Baseline, side by side in the same run: the same round trip through the same broker with no
service in the path (a service-identity echo client republishes `dt/<thing>/ping` to
`dt/<thing>/pong`), so the ratio shows what the shadow service adds.

Usage: python benchmarks/bench_shadow.py [--devices 20] [--window 50] [--seconds 10] [--idle 1000]
       [--load lean|awscrt]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from cloud_stubs._paths import StatePaths
from cloud_stubs._service_client import NODELAY, ConnectSettings, service_client, tls_context
from cloud_stubs._state import ensure_state, issue_things, load_ca
from cloud_stubs.services._runtime import Outgoing, _Session


class Dev:
    def __init__(self, ep: dict[str, Any], ident: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.ready = loop.create_future()
        self.name = ident.thing_name
        #: When set, called on awscrt's thread for every message instead of filling `inbox`.
        self.on_message: Callable[[str, bytes], None] | None = None

        def on_pub(d: mqtt5.PublishReceivedData) -> None:
            if self.on_message is not None:
                self.on_message(d.publish_packet.topic, d.publish_packet.payload)
                return
            loop.call_soon_threadsafe(
                self.inbox.put_nowait, (d.publish_packet.topic, d.publish_packet.payload)
            )

        def set_ready() -> None:
            if not self.ready.done():
                self.ready.set_result(True)

        def on_ok(_: Any) -> None:
            loop.call_soon_threadsafe(set_ready)

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
        return asyncio.wrap_future(self.send(topic, payload))

    def send(self, topic: str, payload: bytes) -> Any:
        """Publish at QoS 1 without an asyncio future (the PUBACK is not waited for)."""
        return self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU of this process, all threads (awscrt's event loop threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Pump:
    """One device's closed loop: every accepted update sends the next request."""

    def __init__(self, dev: Dev, window: int) -> None:
        self.dev = dev
        self.window = window
        self.topic = f"$aws/things/{dev.name}/shadow/update"
        self.seq = 0
        self.accepted = 0
        self.in_flight = 0
        self.running = False
        self.drained = threading.Event()
        dev.on_message = self.on_response

    def send_next(self) -> None:
        self.seq += 1
        self.in_flight += 1
        self.dev.send(self.topic, b'{"state": {"reported": {"seq": %d}}}' % self.seq)

    def start(self) -> None:
        self.running = True
        for _ in range(self.window):
            self.send_next()

    def on_response(self, topic: str, payload: bytes) -> None:  # noqa: ARG002
        self.accepted += 1
        self.in_flight -= 1
        if self.running:
            self.send_next()
        elif self.in_flight <= 0:
            self.drained.set()

    async def wait_drained(self) -> None:
        if self.in_flight > 0:
            await asyncio.to_thread(self.drained.wait, 10)
        self.dev.on_message = None
        self.dev.client.stop()


class LeanPump:
    """The same closed loop over a minimal asyncio MQTT 5 session (one per device)."""

    def __init__(self, ep: dict[str, Any], ident: Any, window: int) -> None:
        self.name = ident.thing_name
        self.settings = ConnectSettings(
            ep["host"],
            ep["port"],
            ident.thing_name,
            tls_context(ident.ca_file, ident.cert_file, ident.key_file),
            mqtt5=True,
        )
        self.window = window
        self.topic = f"$aws/things/{self.name}/shadow/update"
        self.seq = 0
        self.accepted = 0
        self.in_flight = 0
        self.running = False
        self.session: _Session | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.session = _Session(self.settings)
        await self.session.open([f"{self.topic}/accepted"])

    def requests(self, n: int) -> list[Outgoing]:
        out = []
        for _ in range(n):
            self.seq += 1
            out.append(Outgoing(self.topic, b'{"state": {"reported": {"seq": %d}}}' % self.seq))
        self.in_flight += n
        return out

    def start(self) -> None:
        self.running = True
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        assert self.session is not None  # noqa: S101 - connected first
        session = self.session
        session.publish(self.requests(self.window))
        while self.running or self.in_flight > 0:
            n = len(await session.next_batch(10_000))
            self.accepted += n
            self.in_flight -= n
            if self.running:
                session.publish(self.requests(n))
            await session.drain()

    async def wait_drained(self) -> None:
        if self.task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.task, 10)
        if self.session is not None:
            await self.session.close()


async def throughput(pumps: list[Any], seconds: float, pid: int) -> dict[str, float]:
    mosquitto = children(pid)
    procs = {"stub": [pid], "mosquitto": mosquitto}

    def cpu() -> dict[str, float]:
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in procs.items()}
        out["load generator"] = own_cpu_seconds()
        return out

    cpu0, t0 = cpu(), time.perf_counter()
    for p in pumps:
        p.start()
    await asyncio.sleep(seconds)
    total = sum(p.accepted for p in pumps)
    wall = time.perf_counter() - t0
    cpu1 = cpu()
    for p in pumps:
        p.running = False
    for p in pumps:  # let what is in flight finish before the latency phase
        await p.wait_drained()
    used = {name: cpu1[name] - cpu0[name] for name in cpu0}
    unanswered = sum(p.in_flight for p in pumps)
    return {
        "updates": total,
        "wall": wall,
        "updates_per_s": total / wall,
        "unanswered": unanswered,
    } | {f"cpu:{name}": value for name, value in used.items()}


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
    ap.add_argument("--load", choices=("lean", "awscrt"), default="lean")
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
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
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
            if proc.stdout is None:
                raise RuntimeError("no stdout from `cloud-stubs up`")
            ep = json.loads(await asyncio.to_thread(proc.stdout.readline))
            pumps: list[Any]
            if args.load == "awscrt":
                workers = [Dev(ep, i, loop) for i in idents[: args.devices]]
                await asyncio.gather(*(w.start() for w in workers))
                for w in workers:
                    await w.sub(f"$aws/things/{w.name}/shadow/update/accepted")
                pumps = [Pump(w, args.window) for w in workers]
            else:
                pumps = [LeanPump(ep, i, args.window) for i in idents[: args.devices]]
                await asyncio.gather(*(p.connect() for p in pumps))
            tp = await throughput(pumps, args.seconds, proc.pid)
            n = max(tp["updates"], 1)
            print(
                f"throughput: {tp['updates_per_s']:.0f} shadow updates/s "
                f"({tp['updates']:.0f} in {args.seconds:.0f}s, "
                f"{args.devices} {args.load} devices x window {args.window}); "
                f"stub process {1000 * tp['cpu:stub'] / n:.3f} ms CPU per update"
            )
            if tp["unanswered"]:
                print(f"WARNING: {tp['unanswered']:.0f} requests never answered")
            names = ("stub", "mosquitto", "load generator")
            print(
                f"CPU seconds in {tp['wall']:.1f}s ({os.cpu_count()} cores): "
                + ", ".join(f"{name} {tp['cpu:' + name]:.2f}" for name in names)
            )
            print(
                "CPU ms per update: "
                + ", ".join(f"{name} {1000 * tp['cpu:' + name] / n:.3f}" for name in names)
            )
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
                    f"{label} with {len(idle)} idle devices: "
                    f"p50 {pct(vals, 50):.2f} ms, p99 {pct(vals, 99):.2f} ms"
                )
            print(
                f"ratio shadow/baseline: p50 {pct(shadow, 50) / pct(base, 50):.2f}x, "
                f"p99 {pct(shadow, 99) / pct(base, 99):.2f}x"
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
