"""The shard engine: run one shard's devices against a resolved target.

One event loop per process (one core). Every device is a real :class:`~device_sdk.DeviceClient`
with its own connection and certificate; all devices of the shard share one
:class:`~device_sdk.OutboxDatabase` file (one writer thread, group commit). The engine owns one
task group holding the tick scheduler, the one-second sampler, the deadline and one task per
device; connects are paced by a token bucket (the shard's share of ``ramp_up``) and capped by a
semaphore (``ramp_up.max_in_progress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from device_sdk import DeviceClient, OutboxConfig, OutboxDatabase, TokenBucket, create_transport
from fleet_sim._checks import model_params
from fleet_sim._clock import Scheduler, SimClock
from fleet_sim._device import DeviceEnv, VirtualDevice
from fleet_sim._metrics import RunMetrics
from fleet_sim._model import ModelContext, load_model
from fleet_sim._ota import FleetOta
from fleet_sim._payload import PayloadBuilder
from fleet_sim._plan import Shard, SplitMix, device_rng, plan_shard
from fleet_sim._proc import freeze_heap, rss_bytes, thaw_heap, trust_only
from fleet_sim._scenario import Scenario
from fleet_sim._target import Target
from fleet_sim._transport import measured

__all__ = ["ShardConfig", "run_shard"]

_log = logging.getLogger(__name__)
_device_log = logging.getLogger("fleet_sim.device")
_FREEZE_EVERY_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class ShardConfig:
    """Everything one shard process needs.

    Attributes:
        scenario: The (possibly rescaled) scenario.
        shard: Which part of the fleet this process runs.
        target: Resolved target.
        run_id: Identifier shared by all shards of the run (also in every payload).
        start_wall: Wall-clock start of the run (time series align on it).
        duration_s: Wall-clock seconds from ``start_wall`` to the stop.
        tick_s: Scheduler granularity (wall seconds).
        drain_timeout_s: How long a device may take to deliver its outbox at the end.
        tune_process: Apply the process-wide tuning in :mod:`fleet_sim._proc`.
    """

    scenario: Scenario
    shard: Shard
    target: Target
    run_id: str
    start_wall: float
    duration_s: float
    tick_s: float = 0.02
    drain_timeout_s: float = 10.0
    tune_process: bool = True


SampleHook = Callable[[RunMetrics, dict[str, Any]], None]


def _outbox_path(cfg: ShardConfig, tmp: Path) -> Path:
    spec = cfg.scenario.outbox.path
    if spec is None:
        return tmp / f"outbox-{cfg.shard.index}.db"
    return Path(str(spec).replace("{shard}", str(cfg.shard.index)))


async def _build_devices(
    cfg: ShardConfig,
    metrics: RunMetrics,
    db: OutboxDatabase,
    clock: SimClock,
    ota: FleetOta | None = None,
) -> list[VirtualDevice]:
    scenario, target = cfg.scenario, cfg.target
    specs = plan_shard(scenario, cfg.shard)
    models = {g.name: load_model(g.model) for g in scenario.groups}
    params = {g.name: model_params(models[g.name], g.params) for g in scenario.groups}
    options = target.options()
    box_config = OutboxConfig(max_messages=scenario.outbox.max_messages, overflow="drop_oldest")
    boxes = await asyncio.gather(*(db.outbox(d.name, box_config) for d in specs))
    start = clock.wall()
    devices = []
    for spec, box in zip(specs, boxes, strict=True):
        group = scenario.groups[spec.group]
        ctx = ModelContext(
            spec.name,
            group.name,
            spec.index,
            device_rng(scenario.seed, spec.name),
            params[group.name],
            start,
            group.telemetry.interval,
        )
        identity = target.identity(spec.name)
        transport = measured(
            create_transport(identity, target.endpoint, target.transport, options), metrics
        )
        client = DeviceClient(
            identity,
            target.endpoint,
            transport=transport,
            outbox=box,
            options=options,
            logger=_device_log,
            metrics=metrics.client_metrics,  # PUBACK latency without a callback per message
        )
        payload = PayloadBuilder(
            group.payload, thing=spec.name, group=group.name, index=spec.index, run_id=cfg.run_id
        )
        devices.append(
            VirtualDevice(
                spec.name,
                group,
                models[group.name](ctx),
                client,
                payload,
                SplitMix(scenario.seed, spec.name),
                metrics,
                ota.device(spec.name, group.name, client) if ota is not None else None,
            )
        )
    return devices


async def _sampler(env: DeviceEnv, devices: int, on_sample: SampleHook | None) -> None:
    metrics = env.metrics
    last_freeze = time.monotonic()
    next_at = time.monotonic()
    while True:
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if metrics.all_connected_at is None and env.first_connects >= devices:
            metrics.all_connected_at = time.time()
            metrics.rss_connected = rss_bytes()
            freeze_heap()
        elif metrics.all_connected_at is None and time.monotonic() - last_freeze > _FREEZE_EVERY_S:
            freeze_heap()
            last_freeze = time.monotonic()
        point = metrics.sample()
        if on_sample is not None:
            on_sample(metrics, point)


async def run_shard(
    cfg: ShardConfig,
    *,
    on_sample: SampleHook | None = None,
    stop: asyncio.Event | None = None,
    metrics: RunMetrics | None = None,
    start: Callable[[], Awaitable[float]] | None = None,
) -> dict[str, Any]:
    """Run the shard until its deadline (or ``stop``); return its metrics snapshot.

    Args:
        cfg: The shard's configuration.
        on_sample: Called every second with the metrics and the new time-series point.
        stop: Set it to end the run early (devices still drain and disconnect).
        metrics: Metrics object to fill (default: a new one).
        start: Awaited once the devices are built; returns the run's start (wall clock),
            e.g. when every worker process is ready. Default: ``cfg.start_wall`` or now.
    """
    with contextlib.ExitStack() as stack:
        if cfg.tune_process and cfg.target.endpoint.ca_file is not None:
            stack.enter_context(trust_only(cfg.target.endpoint.ca_file))
        return await _run_shard(cfg, on_sample, stop, metrics, start)


async def _run_shard(
    cfg: ShardConfig,
    on_sample: SampleHook | None,
    stop: asyncio.Event | None,
    metrics: RunMetrics | None,
    start: Callable[[], Awaitable[float]] | None,
) -> dict[str, Any]:
    scenario = cfg.scenario
    clock = SimClock(scenario.time_scale)
    scheduler = Scheduler(clock, tick_s=cfg.tick_s)
    rate = scenario.ramp_up.connects_per_second / cfg.shard.count
    with tempfile.TemporaryDirectory(prefix="fleet_sim-") as tmp:
        db = await OutboxDatabase.open(
            _outbox_path(cfg, Path(tmp)),
            synchronous=scenario.outbox.synchronous,
            # Group commit: thousands of devices share one writer; 2 ms of extra latency per
            # save halves the writer's CPU (benchmarks/bench_publish_path.py).
            commit_delay_s=0.002,
        )
        try:
            m = metrics or RunMetrics(0, cfg.start_wall)
            ota = FleetOta.build(
                scenario,
                state_root=Path(tmp) / "ota",
                ca_file=cfg.target.endpoint.ca_file,
                stub_dir=cfg.target.state_dir if cfg.target.kind == "stub" else None,
                metrics=m,
            )
            devices = await _build_devices(cfg, m, db, clock, ota)
            m.devices = len(devices)
            env = DeviceEnv(
                m,
                clock,
                scheduler,
                TokenBucket(rate, max(1.0, rate / 20)),
                asyncio.Semaphore(scenario.ramp_up.max_in_progress),
                db,
                cfg.run_id,
                cfg.drain_timeout_s,
            )
            if cfg.tune_process:
                freeze_heap()
            start_wall = await start() if start is not None else cfg.start_wall or time.time()
            m.start_wall = start_wall
            _log.info("shard %s: %d devices, %.0f connects/s", cfg.shard, len(devices), rate)
            if stop is None or not stop.is_set():
                await _run_devices(env, devices, start_wall + cfg.duration_s, on_sample, stop)
            m.sample()
            return m.snapshot()
        finally:
            await db.aclose()
            if cfg.tune_process:
                thaw_heap()


async def _run_devices(
    env: DeviceEnv,
    devices: list[VirtualDevice],
    deadline: float,
    on_sample: SampleHook | None,
    stop: asyncio.Event | None,
) -> None:
    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(env.scheduler.run(), name="fleet_sim.scheduler")
        sampler = tg.create_task(_sampler(env, len(devices), on_sample), name="fleet_sim.sampler")
        tasks = [tg.create_task(dev.run(env), name=f"fleet_sim[{dev.name}]") for dev in devices]
        waiter = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            pending = {waiter} if waiter is not None else set()
            timeout = max(0.0, deadline - time.time())
            if pending:
                await asyncio.wait(pending, timeout=timeout)
            else:
                await asyncio.sleep(timeout)
        finally:
            if waiter is not None:
                waiter.cancel()
            env.stopping = True
            env.scheduler.stop()
            # The live view's last state is the run as it ended, not a sample taken halfway
            # through the drain (run_shard's final sample covers the drain in the report).
            sampler.cancel()
            for dev, task in zip(devices, tasks, strict=True):
                if dev.phase in ("waiting", "connecting"):
                    task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
