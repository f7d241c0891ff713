"""Shard worker processes (``--workers N``): one process per core, merged live.

The coordinator starts ``python -m fleet_sim._worker`` per shard and talks JSON lines:

* stdin, coordinator -> worker: ``{"type": "config", ...}`` (scenario, shard, target, run
  id, duration), later ``{"type": "go", "start_wall": ...}`` once every worker is ready (so all
  shards start together), and ``{"type": "stop"}`` to end early;
* stdout, worker -> coordinator: ``{"type": "ready"}``, then every second
  ``{"type": "sample", "point": ..., "totals": ...}``, and at the end
  ``{"type": "final", "snapshot": ...}``.

Logs go to stderr. SIGINT and SIGTERM end the run early; the devices still drain.

Workers lower their own scheduling priority a little (``nice`` +5): when the machine is
overloaded, the simulated devices should slow down, not the coordinator's sink (whose
subscription queue at the broker would overflow and look like message loss) or a broker on
the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from fleet_sim._engine import ShardConfig, run_shard
from fleet_sim._metrics import RunMetrics
from fleet_sim._plan import Shard
from fleet_sim._scenario import Scenario
from fleet_sim._shardproc import live_totals
from fleet_sim._target import Target

__all__ = ["main"]

_NICE = 5


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _read_line(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    data = json.loads(line)
    return data if isinstance(data, dict) else None


async def _worker() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = await _read_line(reader)
    if config is None or config.get("type") != "config":
        raise SystemExit("fleet_sim worker: expected a config line on stdin")
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    logging.basicConfig(
        level=int(config.get("log_level", logging.WARNING)),
        stream=sys.stderr,
        format=f"[shard {config['shard'][0]}] %(levelname)s %(name)s: %(message)s",
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    go: asyncio.Future[float] = loop.create_future()

    async def control() -> None:
        while True:
            msg = await _read_line(reader)
            if msg is None or msg.get("type") == "stop":
                stop.set()
                if not go.done():
                    go.set_result(0.0)
                return
            if msg.get("type") == "go" and not go.done():
                go.set_result(float(msg["start_wall"]))

    async def wait_go() -> float:
        _emit({"type": "ready"})
        return await go

    cfg = ShardConfig(
        Scenario.model_validate(config["scenario"]),
        Shard(*config["shard"]),
        Target.from_dict(config["target"]),
        str(config["run_id"]),
        0.0,
        float(config["duration_s"]),
        tick_s=float(config["tick_s"]),
        drain_timeout_s=float(config["drain_timeout_s"]),
    )

    def on_sample(metrics: RunMetrics, point: dict[str, Any]) -> None:
        _emit({"type": "sample", "point": point, "totals": live_totals(metrics)})

    controller = asyncio.create_task(control(), name="fleet_sim.worker.control")
    try:
        snapshot = await run_shard(cfg, on_sample=on_sample, stop=stop, start=wait_go)
    finally:
        controller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controller
    _emit({"type": "final", "snapshot": snapshot})


def main() -> None:
    """Entry point of ``python -m fleet_sim._worker``."""
    asyncio.run(_worker())


if __name__ == "__main__":
    main()
