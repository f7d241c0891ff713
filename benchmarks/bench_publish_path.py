"""DeviceClient's QoS 1 publish path: the awaited path against the pipelined one, side by side.

One local IoT Core (``cloud-stubs up``, real mosquitto with mTLS) serves every run. Each run is
its own child process: N ``DeviceClient`` s (one certificate and MQTT connection each, one shared
SQLite outbox database like fleet_sim) publish one QoS 1 message per second each for S seconds
to ``dt/<thing>/telemetry``. Variants:

(a) ``awaited``: one Task and one ``asyncio.timeout`` per message around ``transport.publish``
    (the path every non-pipelined transport uses; forced here with a private switch);
(b) ``pipelined``: ``start_publish`` futures, one ack-timeout timer per client.

on the ``crt`` transport (and ``native`` when ``create_transport(kind="native")`` exists).
Reported per run (steady state, after every device connected and one warm-up second):
acked messages per client-process CPU-second (all threads), achieved msg/s, p50/p99
publish-to-PUBACK latency (the clients' ``puback_latency``), and the ratio (b)/(a).

Usage: python benchmarks/bench_publish_path.py [--devices 1000,2000] [--seconds 20]
       [--transports crt,native] [--variants awaited,pipelined] [--commit-delay-ms 0]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fleet import provision, start_stub  # noqa: E402
from device_sdk import (  # noqa: E402
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    LatencyHistogram,
    OutboxConfig,
    OutboxDatabase,
)

PAYLOAD = (
    b'{"temperature":21.5,"humidity":45.2,"pressure":1013.25,"co2":612,"noise":38.5,'
    b'"battery":3.71,"seq":0}'
)
CONNECT_CONCURRENCY = 100


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds per thread name (Linux ``/proc``; empty elsewhere)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    py_names = {t.native_id: t.name for t in threading.enumerate()}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            name = py_names.get(int(task.name)) or (task / "comm").read_text().strip()
        except OSError:
            continue
        name = name.split("[", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def run_variant(
    state: Path,
    n: int,
    seconds: float,
    transport: str,
    *,
    pipelined: bool,
    commit_delay_s: float = 0.0,
) -> dict[str, Any]:
    ep = json.loads((state / "endpoint.json").read_text())
    endpoint = Endpoint(ep["host"], ep["port"], Path(ep["ca_file"]))
    names = [f"bench-{i:05d}" for i in range(1, n + 1)]
    options = ConnectionOptions()
    with tempfile.TemporaryDirectory(prefix="bench-publish-path-") as tmp:
        extra: dict[str, Any] = {"commit_delay_s": commit_delay_s} if commit_delay_s else {}
        db = await OutboxDatabase.open(Path(tmp) / "outbox.db", synchronous="normal", **extra)
        boxes = await asyncio.gather(
            *(db.outbox(name, OutboxConfig(max_messages=1000)) for name in names)
        )
        clients: list[DeviceClient] = []
        for name, box in zip(names, boxes, strict=True):
            d = state / "things" / name
            identity = DeviceIdentity.from_files(d / "cert.pem", d / "key.pem", thing_name=name)
            client = DeviceClient(
                identity,
                endpoint,
                transport=transport,  # type: ignore[arg-type]
                outbox=box,
                options=options,
            )
            client._pipelined = pipelined  # noqa: SLF001 - the benchmark's private switch
            clients.append(client)
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def enter(client: DeviceClient) -> None:
            async with sem:
                await client.__aenter__()

        t0 = time.perf_counter()
        await asyncio.gather(*(enter(c) for c in clients))
        connect_s = time.perf_counter() - t0
        loop = asyncio.get_running_loop()
        start = loop.time() + 1.0
        stop_at = start + 1.0 + seconds

        async def publisher(i: int, client: DeviceClient) -> None:
            topic = f"dt/{client.thing_name}/telemetry"
            next_t = start + i / n
            while next_t < stop_at:
                await asyncio.sleep(max(0.0, next_t - loop.time()))
                await client.publish(topic, PAYLOAD)
                next_t += 1.0

        threads: dict[str, float] = {}

        async def measure() -> tuple[int, float, float, list[LatencyHistogram]]:
            await asyncio.sleep(start + 1.0 - loop.time())  # one warm-up second
            base = [c.metrics() for c in clients]
            t0 = thread_cpu_s()
            c0, w0 = cpu_s(), time.perf_counter()
            await asyncio.sleep(stop_at - loop.time())
            cpu, wall = cpu_s() - c0, time.perf_counter() - w0
            for name, used in thread_cpu_s().items():
                threads[name] = round(used - t0.get(name, 0.0), 2)
            after = [c.metrics() for c in clients]
            acked = sum(
                a.counters["acked"] - b.counters["acked"] for a, b in zip(after, base, strict=True)
            )
            hists = [a.puback_latency for a in after]  # includes the warm-up second
            return acked, cpu, wall, hists

        async with asyncio.TaskGroup() as tg:
            measuring = tg.create_task(measure())
            for i, c in enumerate(clients):
                tg.create_task(publisher(i, c))
        acked, cpu, wall, hists = measuring.result()
        hist = LatencyHistogram.merged(hists)
        timeouts = sum(c.metrics().counters["ack_timeouts"] for c in clients)
        await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))
        await asyncio.gather(*(b.aclose() for b in boxes))
        await db.aclose()
    return {
        "transport": transport,
        "variant": "pipelined" if pipelined else "awaited",
        "devices": n,
        "commit_delay_ms": commit_delay_s * 1000,
        "connect_s": round(connect_s, 1),
        "acked": acked,
        "achieved_per_s": round(acked / wall, 1),
        "acked_per_cpu_s": round(acked / cpu, 1) if cpu else None,
        "cpu_share": round(cpu / wall, 3),
        "p50_ms": round(hist.quantile(0.5) * 1000, 2) if hist.count else None,
        "p99_ms": round(hist.quantile(0.99) * 1000, 2) if hist.count else None,
        "ack_timeouts": timeouts,
        "thread_cpu_s": threads,
    }


def run_child(
    state: Path, n: int, seconds: float, transport: str, variant: str, commit_delay_ms: float
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            f"{transport}:{variant}",
            "--state",
            str(state),
            "--devices",
            str(n),
            "--seconds",
            str(seconds),
            "--commit-delay-ms",
            str(commit_delay_ms),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:] or ["failed"]
        return {"transport": transport, "variant": variant, "devices": n, "error": tail}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def native_available() -> bool:
    from device_sdk.transport import _factory  # noqa: PLC0415

    return "native" in str(getattr(_factory, "TransportKind", ""))


def print_table(results: list[dict[str, Any]], seconds: float) -> None:
    print(f"\nQoS 1, 1 msg/s per device, {seconds:.0f} s steady state, shared SQLite outbox\n")
    head = (
        f"{'transport':10s}{'devices':>8s}{'variant':>11s}{'msg/s':>10s}{'acked/CPU-s':>13s}"
        f"{'CPU':>7s}{'p50 ms':>9s}{'p99 ms':>9s}{'timeouts':>10s}"
    )
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['transport']:10s}{r['devices']:8d}{r['variant']:>11s}  error: {r['error']}")
            continue
        print(
            f"{r['transport']:10s}{r['devices']:8d}{r['variant']:>11s}{r['achieved_per_s']:10,.0f}"
            f"{r['acked_per_cpu_s'] or 0:13,.0f}{r['cpu_share']:7.2f}"
            f"{r['p50_ms'] or 0:9.2f}{r['p99_ms'] or 0:9.2f}{r['ack_timeouts']:10d}"
        )
    by_key = {(r["transport"], r["devices"], r["variant"]): r for r in results}
    print()
    for (transport, n, variant), b in by_key.items():
        a = by_key.get((transport, n, "awaited"))
        if variant != "pipelined" or a is None or "error" in a or "error" in b:
            continue
        if a.get("acked_per_cpu_s") and b.get("acked_per_cpu_s"):
            ratio = b["acked_per_cpu_s"] / a["acked_per_cpu_s"]
            print(f"{transport} x {n}: pipelined / awaited acked per CPU-s = {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1000,2000", help="comma-separated device counts")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", default="crt,native")
    parser.add_argument("--variants", default="awaited,pipelined")
    parser.add_argument(
        "--commit-delay-ms",
        type=float,
        default=0.0,
        help="OutboxDatabase group-commit window (default 0: commit as soon as possible)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    if args.child:
        transport, _, variant = args.child.partition(":")
        result = asyncio.run(
            run_variant(
                args.state,
                counts[0],
                args.seconds,
                transport,
                pipelined=variant == "pipelined",
                commit_delay_s=args.commit_delay_ms / 1000,
            )
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    transports = [t for t in args.transports.split(",") if t != "native" or native_available()]
    state = Path(tempfile.mkdtemp(prefix="bench-publish-path-state-"))
    stub = start_stub(state)
    try:
        provision(state, max(counts))
        results = []
        for n in counts:
            for transport in transports:
                for variant in args.variants.split(","):
                    print(f"running {transport} x {n} {variant} ...", flush=True)
                    results.append(
                        run_child(state, n, args.seconds, transport, variant, args.commit_delay_ms)
                    )
                    print(json.dumps(results[-1]), flush=True)
                    time.sleep(1)
        print_table(results, args.seconds)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        stub.terminate()
        stub.wait(timeout=30)


if __name__ == "__main__":
    main()
