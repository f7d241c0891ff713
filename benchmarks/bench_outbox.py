"""Outbox throughput: enqueue (durable commit) + take + ack (delete) of N messages.

Run: ``python benchmarks/bench_outbox.py [--messages 100000] [--dir /tmp]``

Scenarios, each with ``synchronous=NORMAL`` and ``FULL`` (WAL):

* ``pipelined``  one device, up to ``--concurrency`` enqueues awaited together (a busy
  device or many producer tasks), a consumer taking and acking concurrently;
* ``sequential`` one device, each enqueue awaited before the next (one commit per message:
  the latency-bound worst case);
* ``shared``     ``--devices`` outboxes in one database file, each device awaiting its own
  enqueues (the fleet-simulator layout: group commit across devices).

Reports messages/s (enqueue+ack, all deletes committed), transactions, and the worst
event-loop lag seen by a 10 ms ticker (the loop must not block on SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from device_sdk import OutboxConfig, OutboxDatabase
from device_sdk._outbox import Outbox
from device_sdk._outbox_store import Synchronous

PAYLOAD = b'{"temp":21.5,"humidity":40.2,"battery":3.71,"ts":1700000000000,"seq":123456}' * 2


class LagMeter:
    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t0 - 0.01)


async def consume(box: Outbox, total: int) -> None:
    for _ in range(total):
        rec = await box.take()
        box.ack(rec.id)


async def pipelined(db: OutboxDatabase, total: int, concurrency: int) -> None:
    box = await db.outbox("dev-0", OutboxConfig(max_messages=total + 1, max_bytes=1 << 30))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(consume(box, total))
        for start in range(0, total, concurrency):
            n = min(concurrency, total - start)
            await asyncio.gather(*(box.enqueue("t/dev-0", PAYLOAD) for _ in range(n)))
    await box.aclose()


async def sequential(db: OutboxDatabase, total: int) -> None:
    box = await db.outbox("dev-0", OutboxConfig(max_messages=total + 1, max_bytes=1 << 30))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(consume(box, total))
        for _ in range(total):
            await box.enqueue("t/dev-0", PAYLOAD)
    await box.aclose()


async def shared(db: OutboxDatabase, total: int, devices: int) -> None:
    per_device = total // devices

    async def device(i: int) -> None:
        box = await db.outbox(f"dev-{i}")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(consume(box, per_device))
            for _ in range(per_device):
                await box.enqueue(f"t/dev-{i}", PAYLOAD)
        await box.aclose()

    async with asyncio.TaskGroup() as tg:
        for i in range(devices):
            tg.create_task(device(i))


async def run_one(name: str, sync: Synchronous, directory: Path, args: argparse.Namespace) -> None:
    total = args.messages if name != "sequential" else args.sequential_messages
    path = directory / f"bench-{name}-{sync}.db"  # a fresh file in a fresh directory
    db = await OutboxDatabase.open(path, synchronous=sync)
    lag = LagMeter()
    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(lag.run())
        t0 = time.perf_counter()
        if name == "pipelined":
            await pipelined(db, total, args.concurrency)
        elif name == "sequential":
            await sequential(db, total)
        else:
            await shared(db, total, args.devices)
        elapsed = time.perf_counter() - t0
        ticker.cancel()
    stats = db.statistics()
    await db.aclose()
    print(
        f"{name:10s} {sync:6s} {total:7d} msgs {elapsed:7.2f}s {total / elapsed:9.0f} msg/s  "
        f"tx={stats.transactions:6d} max_batch={stats.max_batch_jobs:4d} "
        f"writer_busy={stats.busy_s:5.2f}s loop_lag_max={lag.worst * 1000:5.1f}ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sequential-messages", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--sync", choices=("normal", "full", "both"), default="both")
    parser.add_argument(
        "--only", choices=("pipelined", "sequential", "shared"), action="append", default=None
    )
    args = parser.parse_args()
    syncs: tuple[Synchronous, ...] = ("normal", "full") if args.sync == "both" else (args.sync,)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name in args.only or ("pipelined", "sequential", "shared"):
            for sync in syncs:
                await run_one(name, sync, Path(tmp), args)


if __name__ == "__main__":
    asyncio.run(main())
