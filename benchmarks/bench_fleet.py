"""fleet_sim against two naive load generators, side by side, on one local IoT Core (mosquitto).

Every contestant runs N devices, each with its own certificate and MQTT connection, publishing
one QoS 1 message per second for S seconds to ``dt/<thing>/telemetry``:

(a) ``fleet_sim``: ``python -m fleet_sim run`` (in-process engine, or ``--workers W``
    shard processes), no sink, no operator; real ``DeviceClient`` per device (CRT MQTT 5,
    durable outbox in one shared SQLite file);
(b) ``aiomqtt``: one asyncio task per device, ``await client.publish(qos=1)`` (paho under
    aiomqtt, MQTT 5, TCP_NODELAY set);
(c) ``awscrt``: one awscrt MQTT 5 client per device (``mqtt5_client_builder.mtls_from_path``),
    an asyncio task per device awaiting ``asyncio.wrap_future(client.publish(...))``.

The stub (``cloud-stubs up``, mosquitto) runs as its own process, each contestant as its own
child process, one after the other. Reported per contestant:

* achieved msg/s vs target (steady state: after every device connected);
* acked messages per simulator CPU-second (steady state; all threads of the process);
* publish-to-PUBACK p50 / p99 (steady state);
* RSS per device ((RSS once connected - RSS before connecting) / N);
* connects/s (N / time from the first connect attempt to the last CONNACK; at most
  ``--connect-concurrency`` attempts in flight, no rate limit);

and the ratios fleet_sim / baseline. ``--profile DIR`` also records a py-spy flame graph of
the fleet_sim process during the steady state.

Usage: python benchmarks/bench_fleet.py [--devices 1000] [--seconds 60] [--workers 0]
       [--only fleet_sim,fleet_sim:native,aiomqtt,awscrt] [--json out.json] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from cloud_stubs import ensure_things
from device_sdk import LatencyHistogram

ROOT = Path(__file__).resolve().parents[1]
CONNECT_CONCURRENCY = 256
PROFILE_RAW = os.environ.get("BENCH_PROFILE_FORMAT") == "raw"
"""``BENCH_PROFILE_FORMAT=raw``: write py-spy's collapsed stacks (``.txt``) instead of an SVG;
``BENCH_PROFILE_ARGS`` adds py-spy options (e.g. ``--gil --native``)."""
PAYLOAD_FILL = {
    "temperature": 21.53,
    "humidity": 45.2,
    "pressure": 1013.25,
    "co2": 612,
    "noise": 38.5,
}


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:  # noqa: PTH123
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- the stub ----------------------------------------------------------------------------------


def start_stub(state: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cloud_stubs.cli import main; main()",
            "up",
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--broker",
            "mosquitto",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (state / "endpoint.json").exists():
            return proc
        if proc.poll() is not None:
            raise SystemExit("cloud-stubs up exited; is mosquitto installed?")
        time.sleep(0.2)
    raise SystemExit("cloud-stubs up did not become ready")


def provision(state: Path, n: int) -> None:
    ensure_things(state, [f"bench-{i:05d}" for i in range(1, n + 1)])


# -- contestants (child processes) ---------------------------------------------------------------


async def _steady_phase(publishers: list[Any], seconds: float) -> dict[str, Any]:
    c0, t0 = cpu_s(), time.perf_counter()
    counts = await asyncio.gather(*publishers)
    cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    acked = sum(counts)
    return {"acked": acked, "cpu_s": cpu, "wall_s": wall, "seconds": seconds}


def _result(
    name: str,
    n: int,
    connect_s: float,
    rss0: int,
    rss1: int,
    steady: dict[str, Any],
    hist: LatencyHistogram,
    failures: int,
) -> dict[str, Any]:
    return {
        "name": name,
        "devices": n,
        "connected": n - failures,
        "connects_per_s": round((n - failures) / connect_s, 1) if connect_s > 0 else None,
        "achieved_per_s": round(steady["acked"] / steady["wall_s"], 1),
        "target_per_s": float(n),
        "acked_per_cpu_s": round(steady["acked"] / steady["cpu_s"], 1) if steady["cpu_s"] else None,
        "cpu_share": round(steady["cpu_s"] / steady["wall_s"], 3),
        "p50_ms": round(hist.quantile(0.5) * 1000, 2) if hist.count else None,
        "p99_ms": round(hist.quantile(0.99) * 1000, 2) if hist.count else None,
        "rss_per_device_kb": round((rss1 - rss0) / max(1, n - failures) / 1024, 1),
    }


async def run_aiomqtt(ep: dict[str, Any], state: Path, n: int, seconds: float) -> dict[str, Any]:
    names = [f"bench-{i:05d}" for i in range(1, n + 1)]
    rss0 = rss_bytes()
    hist = LatencyHistogram()
    clients: list[aiomqtt.Client] = []
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failures = 0

    async def connect(name: str) -> None:
        nonlocal failures
        async with sem:
            ctx = ssl.create_default_context(cafile=ep["ca_file"])
            ctx.load_cert_chain(
                state / "things" / name / "cert.pem", state / "things" / name / "key.pem"
            )
            client = aiomqtt.Client(
                ep["host"],
                ep["port"],
                identifier=name,
                tls_context=ctx,
                protocol=aiomqtt.ProtocolVersion.V5,
                socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            )
            try:
                await client.__aenter__()
            except aiomqtt.MqttError:
                failures += 1
                return
            clients.append(client)

    t0 = time.perf_counter()
    await asyncio.gather(*(connect(name) for name in names))
    connect_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 2 + seconds

    async def publisher(i: int, client: aiomqtt.Client) -> int:
        name = client.identifier
        next_t = loop.time() + 2 * i / len(clients) % 1.0
        seq = acked = 0
        while next_t < stop_at:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            seq += 1
            body = json.dumps(
                {**PAYLOAD_FILL, "device_id": name, "seq": seq, "ts": int(time.time() * 1000)}
            )
            started = time.perf_counter()
            await client.publish(f"dt/{name}/telemetry", body, qos=1)
            hist.record(time.perf_counter() - started)
            acked += 1
            next_t += 1.0
        return acked

    # warm-up second, then the measured window
    await asyncio.sleep(1.0)
    steady = await _steady_phase([publisher(i, c) for i, c in enumerate(clients)], seconds)
    for client in clients:
        await client.__aexit__(None, None, None)
    return _result("aiomqtt", n, connect_s, rss0, rss1, steady, hist, failures)


async def run_awscrt(ep: dict[str, Any], state: Path, n: int, seconds: float) -> dict[str, Any]:
    names = [f"bench-{i:05d}" for i in range(1, n + 1)]
    loop = asyncio.get_running_loop()
    rss0 = rss_bytes()
    hist = LatencyHistogram()
    clients: list[tuple[str, mqtt5.Client]] = []
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failures = 0

    async def connect(name: str) -> None:
        nonlocal failures
        async with sem:
            done: asyncio.Future[bool] = loop.create_future()

            def connected() -> None:
                if not done.done():
                    done.set_result(True)

            def refused() -> None:
                if not done.done():
                    done.set_result(False)

            def ok(_data: Any) -> None:
                loop.call_soon_threadsafe(connected)

            def fail(_data: Any) -> None:
                loop.call_soon_threadsafe(refused)

            client = mqtt5_client_builder.mtls_from_path(
                endpoint=ep["host"],
                port=ep["port"],
                cert_filepath=str(state / "things" / name / "cert.pem"),
                pri_key_filepath=str(state / "things" / name / "key.pem"),
                ca_filepath=ep["ca_file"],
                client_id=name,
                on_lifecycle_connection_success=ok,
                on_lifecycle_connection_failure=fail,
            )
            client.start()
            if await done:
                clients.append((name, client))
            else:
                failures += 1
                client.stop()

    t0 = time.perf_counter()
    await asyncio.gather(*(connect(name) for name in names))
    connect_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    stop_at = loop.time() + 2 + seconds

    async def publisher(i: int, name: str, client: mqtt5.Client) -> int:
        next_t = loop.time() + 2 * i / len(clients) % 1.0
        seq = acked = 0
        while next_t < stop_at:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            seq += 1
            body = json.dumps(
                {**PAYLOAD_FILL, "device_id": name, "seq": seq, "ts": int(time.time() * 1000)}
            )
            started = time.perf_counter()
            await asyncio.wrap_future(
                client.publish(
                    mqtt5.PublishPacket(
                        topic=f"dt/{name}/telemetry",
                        payload=body.encode(),
                        qos=mqtt5.QoS.AT_LEAST_ONCE,
                    )
                )
            )
            hist.record(time.perf_counter() - started)
            acked += 1
            next_t += 1.0
        return acked

    await asyncio.sleep(1.0)
    steady = await _steady_phase(
        [publisher(i, nm, c) for i, (nm, c) in enumerate(clients)], seconds
    )
    for _, client in clients:
        client.stop()
    return _result("awscrt", n, connect_s, rss0, rss1, steady, hist, failures)


def child_main(kind: str, state: Path, n: int, seconds: float) -> None:
    ep = json.loads((state / "endpoint.json").read_text())
    runner = run_aiomqtt if kind == "aiomqtt" else run_awscrt
    result = asyncio.run(runner(ep, state, n, seconds))
    sys.stdout.write(json.dumps(result) + "\n")


# -- fleet_sim ---------------------------------------------------------------------------------


def fleet_scenario(state: Path, n: int, seconds: float, transport: str = "auto") -> str:
    # The duration covers the ramp (unlimited rate, CONNECT_CONCURRENCY in flight), the
    # steady window and the drain.
    return f"""\
name: bench-fleet
seed: 1
duration: {seconds + 12 + n / 400:.0f}
ramp_up: {{connects_per_second: 100000, max_in_progress: {CONNECT_CONCURRENCY}}}
target: {{state_dir: "{state}", start_stub: false, transport: {transport}}}
groups:
  - name: bench
    model: environment_sensor
    count: {n}
    name_pattern: "bench-{{index:05d}}"
    telemetry: {{interval: 1, jitter: 0, events: false}}
    shadow: {{enabled: false}}
    commands: {{enabled: false}}
    params: {{stuck_per_day: 0, dropout_per_day: 0, spike_probability: 0}}
"""


def run_fleet_sim(
    state: Path, n: int, seconds: float, workers: int, profile: Path | None, transport: str
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    scenario = tmp / "scenario.yaml"
    scenario.write_text(fleet_scenario(state, n, seconds, transport))
    report_path = tmp / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "fleet_sim",
        "run",
        str(scenario),
        "--no-sink",
        "--no-operator",
        "--report",
        str(report_path),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if profile is not None and py_spy is not None:
        profile.mkdir(parents=True, exist_ok=True)
        time.sleep(8 + n / 400)
        target = proc.pid
        if workers:
            out = subprocess.run(
                ["pgrep", "-f", "fleet_sim._worker"], capture_output=True, text=True, check=False
            )
            pids = out.stdout.split()
            target = int(pids[0]) if pids else proc.pid
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "-p",
                str(target),
                "-d",
                str(int(min(20, seconds))),
                "-o",
                str(profile / f"fleet_sim-{n}.{'txt' if PROFILE_RAW else 'svg'}"),
                *(["--format", "raw"] if PROFILE_RAW else []),
                *os.environ.get("BENCH_PROFILE_ARGS", "").split(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    proc.wait()
    if spy is not None:
        spy.wait()
    report = json.loads(report_path.read_text())
    s = report["summary"]
    series = report["metrics"]["series"]
    done = report["metrics"]["all_connected_at"]
    start = round(done - report["started_at"]) if done else 0
    steady = [p for p in series if start + 2 <= p["t"] < series[-1]["t"] - 1]
    hist = LatencyHistogram.merged(
        [LatencyHistogram.from_dict(p["puback"]) for p in steady if p.get("puback")]
    )
    acked = sum(p["acked"] for p in steady)
    cpu = sum(p["cpu"] for p in steady)
    return {
        "name": f"fleet_sim[{transport}]" + (f" (--workers {workers})" if workers else ""),
        "devices": n,
        "connected": s["connects"]["ok"],
        "connects_per_s": s["connects"]["per_second"],
        "achieved_per_s": round(acked / len(steady), 1) if steady else None,
        "target_per_s": float(n),
        "acked_per_cpu_s": round(acked / cpu, 1) if cpu else None,
        "cpu_share": round(cpu / len(steady), 3) if steady else None,
        "p50_ms": round(hist.quantile(0.5) * 1000, 2) if hist.count else None,
        "p99_ms": round(hist.quantile(0.99) * 1000, 2) if hist.count else None,
        "rss_per_device_kb": round(s["process"]["rss_per_device_bytes"] / 1024, 1)
        if s["process"]["rss_per_device_bytes"] is not None
        else None,
        "errors": s["errors"]["total"],
        "report": str(report_path),
    }


def run_child(kind: str, state: Path, n: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--state",
            str(state),
            "--devices",
            str(n),
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"name": kind, "error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- report -----------------------------------------------------------------------------------

COLUMNS = [
    ("achieved msg/s", "achieved_per_s", True),
    ("acked msgs per CPU-s", "acked_per_cpu_s", True),
    ("CPU (cores)", "cpu_share", False),
    ("p50 PUBACK ms", "p50_ms", False),
    ("p99 PUBACK ms", "p99_ms", False),
    ("RSS per device KB", "rss_per_device_kb", False),
    ("connects/s", "connects_per_s", True),
]


def print_table(results: list[dict[str, Any]], n: int, seconds: float) -> None:
    print(f"\n{n} devices x 1 msg/s QoS 1 for {seconds:.0f} s (target {n} msg/s)")
    print("one certificate and connection per device\n")
    names = [r["name"] for r in results]
    width = max(22, *(len(x) + 2 for x in names))
    print("".ljust(24) + "".join(x.rjust(width) for x in names))
    for label, key, _ in COLUMNS:
        row = label.ljust(24)
        for r in results:
            v = r.get(key)
            row += ("—" if v is None else f"{v:,}").rjust(width)
        print(row)
    for fs in results:
        if not fs["name"].startswith("fleet_sim") or "error" in fs:
            continue
        for base in results:
            if base["name"].startswith("fleet_sim") or "error" in base:
                continue
            parts = []
            for label, key, _ in COLUMNS:
                a, b = fs.get(key), base.get(key)
                if a and b:
                    parts.append(f"{label}: {a / b:.2f}x")
            print(f"\n{fs['name']} / {base['name']}: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--workers", type=int, default=0, help="fleet_sim shard processes (0: in-process)"
    )
    parser.add_argument(
        "--only",
        default="fleet_sim,aiomqtt,awscrt",
        help="contestants, comma-separated: fleet_sim[:TRANSPORT] (crt, paho, native), "
        "aiomqtt, awscrt",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--profile", type=Path, help="py-spy flame graph of fleet_sim into this directory"
    )
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.state, args.devices, args.seconds)
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    state = Path(tempfile.mkdtemp(prefix="bench-fleet-state-"))
    stub = start_stub(state)
    try:
        t0 = time.perf_counter()
        provision(state, args.devices)
        took = time.perf_counter() - t0
        print(f"provisioned {args.devices} identities in {took:.1f} s; stub pid {stub.pid}")
        results = []
        for kind in args.only.split(","):
            print(f"running {kind} ...", flush=True)
            if kind.startswith("fleet_sim"):
                _, _, transport = kind.partition(":")
                results.append(
                    run_fleet_sim(
                        state,
                        args.devices,
                        args.seconds,
                        args.workers,
                        args.profile,
                        transport or "auto",
                    )
                )
            else:
                results.append(run_child(kind, state, args.devices, args.seconds))
            print(json.dumps(results[-1]), flush=True)
            time.sleep(2)
        print_table(results, args.devices, args.seconds)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"devices": args.devices, "seconds": args.seconds, "results": results}, indent=2
                )
                + "\n"
            )
    finally:
        stub.send_signal(signal.SIGTERM)
        stub.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
