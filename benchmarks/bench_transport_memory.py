"""Memory per idle MQTT connection and raw QoS 1 throughput: native vs CRT vs paho, side by side.

One local IoT Core (``cloud-stubs up``: real mosquitto with mTLS and the IoT Core plugin) serves
every run. Each transport kind runs in its own child process, which

1. connects one warm-up transport (loads lazy state: CRT's event-loop threads, the thread pool
   used for TLS context loading) and records the baseline RSS;
2. connects N more transports (one certificate and MQTT 5 connection each, TLS contexts of
   their own), lets them sit idle for a few seconds, and records RSS again:
   ``(RSS after - baseline) / N`` is the cost of one idle connection;
3. (``--burst K``) sends K QoS 1 messages on every connection at once and reports acked
   messages per client-process CPU-second (all threads): ``publish()`` awaited per message on
   every kind, and ``start_publish()`` futures on the native transport.

Usage: python benchmarks/bench_transport_memory.py [--connections 1000] [--kinds native,crt,paho]
       [--burst 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fleet import provision, rss_bytes, start_stub  # noqa: E402
from device_sdk import ConnectionOptions, DeviceIdentity, Endpoint, create_transport  # noqa: E402
from device_sdk.transport import Transport  # noqa: E402

CONNECT_CONCURRENCY = 100
SETTLE_S = 3.0
PAYLOAD = b'{"temperature":21.5,"humidity":45.2,"pressure":1013.25,"seq":0}'


def _malloc_trim() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    return True


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _burst(
    transports: list[Transport], names: list[str], k: int, *, pipelined: bool
) -> dict[str, Any]:
    async def one(t: Transport, name: str) -> int:
        topic = f"dt/{name}/telemetry"
        if pipelined:
            futures = [t.start_publish(topic, PAYLOAD, 1) for _ in range(k)]  # type: ignore[attr-defined]
            results = await asyncio.gather(*futures, return_exceptions=True)
        else:
            results = await asyncio.gather(
                *(t.publish(topic, PAYLOAD, 1) for _ in range(k)), return_exceptions=True
            )
        return sum(1 for r in results if r is None)

    c0, w0 = cpu_s(), time.perf_counter()
    acked = sum(await asyncio.gather(*(one(t, n) for t, n in zip(transports, names, strict=True))))
    cpu, wall = cpu_s() - c0, time.perf_counter() - w0
    return {
        "acked": acked,
        "sent": k * len(transports),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "acked_per_cpu_s": round(acked / cpu) if cpu else None,
        "acked_per_s": round(acked / wall) if wall else None,
    }


async def _paced(
    transports: list[Transport], names: list[str], seconds: float, *, pipelined: bool
) -> dict[str, Any]:
    """Every connection publishes one QoS 1 message per second, spread over 100 ticks/s."""
    loop = asyncio.get_running_loop()
    acked = 0
    tasks: set[asyncio.Future[None]] = set()

    def done(fut: asyncio.Future[None]) -> None:
        nonlocal acked
        tasks.discard(fut)
        if not fut.cancelled() and fut.exception() is None:
            acked += 1

    ticks = 100
    c0, w0 = cpu_s(), time.perf_counter()
    start = loop.time()
    for tick in range(int(seconds * ticks)):
        await asyncio.sleep(max(0.0, start + tick / ticks - loop.time()))
        for i in range(tick % ticks, len(transports), ticks):
            t, topic = transports[i], f"dt/{names[i]}/telemetry"
            fut: asyncio.Future[None]
            if pipelined:
                fut = t.start_publish(topic, PAYLOAD, 1)  # type: ignore[attr-defined]
            else:
                fut = loop.create_task(t.publish(topic, PAYLOAD, 1))
            tasks.add(fut)
            fut.add_done_callback(done)
    if tasks:
        await asyncio.wait(set(tasks))
    cpu, wall = cpu_s() - c0, time.perf_counter() - w0
    return {
        "acked": acked,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / wall, 3),
        "acked_per_cpu_s": round(acked / cpu) if cpu else None,
    }


async def child(state: Path, kind: str, n: int, burst: int, paced: float) -> dict[str, Any]:
    ep = json.loads((state / "endpoint.json").read_text())
    endpoint = Endpoint(ep["host"], ep["port"], Path(ep["ca_file"]))
    names = [f"bench-{i:05d}" for i in range(1, n + 2)]
    options = ConnectionOptions(connect_timeout_s=60)
    identities = []
    for name in names:
        d = state / "things" / name
        identities.append(DeviceIdentity.from_files(d / "cert.pem", d / "key.pem", thing_name=name))
    warm = create_transport(identities[0], endpoint, kind, options)  # type: ignore[arg-type]
    await warm.__aenter__()
    gc.collect()
    await asyncio.sleep(1.0)
    rss0 = rss_bytes()
    transports = [
        create_transport(ident, endpoint, kind, options)  # type: ignore[arg-type]
        for ident in identities[1:]
    ]
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failures = 0

    async def enter(t: Transport) -> bool:
        async with sem:
            try:
                await t.__aenter__()
            except Exception:  # noqa: BLE001 - counted and reported
                return False
            return True

    t0 = time.perf_counter()
    ok = await asyncio.gather(*(enter(t) for t in transports))
    connect_s = time.perf_counter() - t0
    failures = ok.count(False)
    connected = [t for t, up in zip(transports, ok, strict=True) if up]
    gc.collect()
    await asyncio.sleep(SETTLE_S)
    rss1 = rss_bytes()
    result: dict[str, Any] = {
        "kind": kind,
        "connections": len(connected),
        "failures": failures,
        "connect_s": round(connect_s, 1),
        "baseline_rss_mb": round(rss0 / 2**20, 1),
        "rss_mb": round(rss1 / 2**20, 1),
        "kb_per_connection": round((rss1 - rss0) / max(1, len(connected)) / 1024, 1),
    }
    if burst:
        live = [n for n, up in zip(names[1:], ok, strict=True) if up]
        result["burst_publish"] = await _burst(connected, live, burst, pipelined=False)
        if kind == "native":
            result["burst_start_publish"] = await _burst(connected, live, burst, pipelined=True)
        gc.collect()
        await asyncio.sleep(SETTLE_S)
        result["rss_after_burst_mb"] = round(rss_bytes() / 2**20, 1)
        if _malloc_trim():  # freed-but-retained heap (glibc) vs memory still in use
            result["rss_after_burst_trimmed_mb"] = round(rss_bytes() / 2**20, 1)
    if paced:
        live = [n for n, up in zip(names[1:], ok, strict=True) if up]
        result["paced_publish"] = await _paced(connected, live, paced, pipelined=False)
        if kind == "native":
            result["paced_start_publish"] = await _paced(connected, live, paced, pipelined=True)
    await asyncio.gather(
        *(t.__aexit__(None, None, None) for t in connected), return_exceptions=True
    )
    await warm.__aexit__(None, None, None)
    return result


def run_child(state: Path, kind: str, n: int, burst: int, paced: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--state", str(state)]
    cmd += ["--connections", str(n), "--burst", str(burst), "--paced", str(paced)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"kind": kind, "error": out.stderr.strip().splitlines()[-3:] or ["failed"]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    ok = [r for r in results if "error" not in r]
    native = next((r for r in ok if r["kind"] == "native"), None)
    print()
    print(
        "acked QoS 1 messages per client CPU-second: burst (all at once) and paced (1 msg/s each)"
    )
    print(f"{'kind':8} {'conns':>6} {'KB/conn':>8} {'vs native':>9}", end="")
    print(
        f" {'burst publish':>14} {'burst start_p':>14} {'paced publish':>14} {'paced start_p':>14}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['kind']:8} error: {r['error']}")
            continue
        ratio = r["kb_per_connection"] / native["kb_per_connection"] if native else float("nan")
        cols = [
            r.get(key, {}).get("acked_per_cpu_s")
            for key in (
                "burst_publish",
                "burst_start_publish",
                "paced_publish",
                "paced_start_publish",
            )
        ]
        print(
            f"{r['kind']:8} {r['connections']:>6} {r['kb_per_connection']:>8} {ratio:>8.2f}x",
            *(f"{c if c is not None else '-':>14}" for c in cols),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="<= 2000 (open files)")
    parser.add_argument("--kinds", default="native,crt,paho")
    parser.add_argument("--burst", type=int, default=20, help="QoS 1 messages per connection")
    parser.add_argument(
        "--paced", type=float, default=10.0, help="seconds of 1 msg/s per connection (0: skip)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.child:
        result = asyncio.run(
            child(args.state, args.child, args.connections, args.burst, args.paced)
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    if args.connections > 2000:
        raise SystemExit("use at most 2000 connections (the open-files limit is shared)")
    state = Path(tempfile.mkdtemp(prefix="bench-transport-memory-"))
    stub = start_stub(state)
    try:
        provision(state, args.connections + 1)
        results = []
        for kind in args.kinds.split(","):
            print(f"running {kind} x {args.connections} ...", flush=True)
            results.append(run_child(state, kind, args.connections, args.burst, args.paced))
            print(json.dumps(results[-1]), flush=True)
            time.sleep(1)
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        stub.terminate()
        stub.wait(timeout=30)


if __name__ == "__main__":
    main()
