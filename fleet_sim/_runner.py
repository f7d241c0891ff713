"""``fleet_sim.run(SimConfig)``: a whole run, in this process or in N shard processes.

Order of events: apply the overrides to the scenario, open the target (start a local stub
in-process when none runs and the scenario allows it), provision the identities up front, open
the sink and the operator (local stub only), start the shard(s) together, show progress every
second, stop at the deadline (devices drain their outboxes), let the sink settle, then build
the report (and write it as JSON and HTML when asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fleet_sim._engine import ShardConfig, run_shard
from fleet_sim._errors import FleetSimError
from fleet_sim._live import LiveAggregator, LiveState, Observer
from fleet_sim._metrics import RunMetrics, merge_snapshots
from fleet_sim._mqtt_lite import LiteClient, LiteError
from fleet_sim._operator import COMMAND_RESPONSES, Operator
from fleet_sim._plan import Shard, iter_devices
from fleet_sim._report import build_report, write_report
from fleet_sim._scenario import Scenario, TargetSpec, scale_counts
from fleet_sim._shardproc import live_totals, worker_config
from fleet_sim._sink import Sink, telemetry_filters
from fleet_sim._target import (
    Target,
    check_identities,
    provision_identities,
    resolve_target,
    running_stub,
    start_stub,
    stub_target,
)

__all__ = ["SimConfig", "run"]

_log = logging.getLogger(__name__)
_READY_TIMEOUT_S = 600.0
_LINE_LIMIT = 1 << 28
_OPERATOR_TAIL_S = 3.0


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """A run: a scenario plus the command line's overrides.

    Attributes:
        scenario: The validated scenario.
        devices: Scale the groups to this many devices in total.
        duration_s: Override ``scenario.duration``.
        target: Override ``scenario.target``.
        workers: 0 runs the devices in this process; N >= 1 runs N shard processes.
        shard: Run only this shard (e.g. one pod of a Kubernetes Indexed Job).
        run_id: Id of the run (default: random; shards of one run should share it).
        sink: Count loss with a sink (default: on for local stubs, off for ``shard``).
        operator: Send the scenario's commands and desired changes (default as ``sink``).
        tick_s: Scheduler granularity in wall seconds.
        drain_timeout_s: How long devices may take to deliver their outboxes at the end.
        report_path: Write the JSON report here.
        html_path: Write the HTML report here.
    """

    scenario: Scenario
    devices: int | None = None
    duration_s: float | None = None
    target: TargetSpec | None = None
    workers: int = 0
    shard: Shard | None = None
    run_id: str | None = None
    sink: bool | None = None
    operator: bool | None = None
    tick_s: float = 0.02
    drain_timeout_s: float = 10.0
    report_path: Path | None = None
    html_path: Path | None = None

    def effective_scenario(self) -> Scenario:
        """The scenario with the overrides applied."""
        s = self.scenario
        if self.devices is not None:
            s = scale_counts(s, self.devices)
        update: dict[str, Any] = {}
        if self.duration_s is not None:
            update["duration"] = self.duration_s
        if self.target is not None:
            update["target"] = self.target
        return s.model_copy(update=update) if update else s


class _Quiet:
    def on_event(self, text: str) -> None:
        _log.info("%s", text)

    def on_progress(self, state: LiveState) -> None:
        pass


@contextlib.asynccontextmanager
async def _open_target(spec: TargetSpec, observer: Observer) -> AsyncIterator[tuple[Target, Any]]:
    """Yield the resolved target and, if this process started a stub, the stub."""
    running = await asyncio.to_thread(running_stub, spec.stub_dir) if spec.is_stub else None
    if spec.is_stub and running is None and spec.start_stub:
        async with start_stub(spec) as core:
            ep = core.endpoint
            observer.on_event(
                f"started a local IoT Core on {ep.host}:{ep.port} "
                f"(broker: {ep.broker}, state: {ep.state_dir})"
            )
            yield stub_target(spec, ep.to_dict()), core
        return
    target = await asyncio.to_thread(resolve_target, spec)
    observer.on_event(
        f"target: {target.kind} {target.endpoint.host}:{target.endpoint.port} "
        f"(broker: {target.broker}, transport: {target.transport})"
    )
    yield target, None


async def _run_workers(
    configs: list[ShardConfig],
    live: LiveAggregator,
    observer: Observer,
    stop: asyncio.Event,
) -> list[dict[str, Any]]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleet_sim._worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        for _ in configs
    ]
    finals: dict[int, dict[str, Any]] = {}
    ready = [asyncio.Event() for _ in configs]

    def send(i: int, message: dict[str, Any]) -> None:
        stdin = procs[i].stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write((json.dumps(message) + "\n").encode())

    async def read(i: int) -> None:
        stdout = procs[i].stdout
        assert stdout is not None  # noqa: S101 - created with a pipe
        while line := await stdout.readline():
            msg = json.loads(line)
            kind = msg.get("type")
            if kind == "ready":
                ready[i].set()
            elif kind == "sample":
                live.update(i, msg["point"], msg["totals"])
            elif kind == "final":
                finals[i] = msg["snapshot"]
        ready[i].set()

    async def forward_stop() -> None:
        await stop.wait()
        for i in range(len(procs)):
            send(i, {"type": "stop"})

    try:
        async with asyncio.TaskGroup() as tg:
            readers = [
                tg.create_task(read(i), name=f"fleet_sim.worker[{i}]") for i in range(len(procs))
            ]
            stopper = tg.create_task(forward_stop(), name="fleet_sim.workers.stop")
            for i, cfg in enumerate(configs):
                send(i, worker_config(cfg))
            observer.on_event(f"starting {len(procs)} shard processes")
            async with asyncio.timeout(_READY_TIMEOUT_S):
                await asyncio.gather(*(r.wait() for r in ready))
            start_wall = live.start()
            for i in range(len(procs)):
                send(i, {"type": "go", "start_wall": start_wall})
            await asyncio.gather(*readers)
            stopper.cancel()
        codes = [await p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.returncode is None:
                p.terminate()
        raise
    missing = [i for i in range(len(procs)) if i not in finals]
    if missing:
        raise FleetSimError(
            f"shard process(es) {missing} ended without a result (exit codes {codes}); "
            "see their messages above"
        )
    return [finals[i] for i in range(len(procs))]


async def _progress(live: LiveAggregator, observer: Observer, sink: Sink | None) -> None:
    while True:
        await asyncio.sleep(1.0)
        if live.start_wall is None or not live.sampled:
            continue
        if sink is not None:
            live.received = sink.tracker.received
        observer.on_progress(live.state())


async def run(
    config: SimConfig,
    *,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run a simulation and return its report (also written to the configured paths).

    Args:
        config: Scenario and overrides.
        observer: Receives status lines and live progress.
        stop: Set it to end the run early; devices still drain, the report is still built.

    Raises:
        TargetError: The target cannot be used.
        FleetSimError: A shard process failed.
    """
    obs = observer or _Quiet()
    stop = stop or asyncio.Event()
    scenario = config.effective_scenario()
    run_id = config.run_id or uuid.uuid4().hex[:8]
    if config.shard is not None:
        shards = [config.shard]
    else:
        count = max(1, config.workers)
        shards = [Shard(i, count) for i in range(count)]
    names = [d.name for d in iter_devices(scenario) if any(s.owns(d.n) for s in shards)]
    async with _open_target(scenario.target, obs) as (target, core):
        if target.kind == "stub":
            assert target.state_dir is not None  # noqa: S101 - stub targets have one
            obs.on_event(f"provisioning {len(names)} device identities")
            issued = await provision_identities(target.state_dir, names)
            if core is not None and issued:
                await core.reload()
        else:
            check_identities(target, names)
        cloud = target.kind == "stub" and config.shard is None
        use_sink = config.sink if config.sink is not None else cloud
        use_operator = config.operator if config.operator is not None else cloud
        return await _run_with_target(
            config,
            scenario,
            run_id,
            shards,
            target,
            obs,
            stop,
            use_sink,
            use_operator,
            stub_in_process=core is not None,
        )


async def _run_with_target(
    config: SimConfig,
    scenario: Scenario,
    run_id: str,
    shards: list[Shard],
    target: Target,
    obs: Observer,
    stop: asyncio.Event,
    use_sink: bool,
    use_operator: bool,
    *,
    stub_in_process: bool,
) -> dict[str, Any]:
    operator = Operator(scenario, seed=scenario.seed) if use_operator else None
    if operator is not None and not operator.active:
        operator = None
    sink: Sink | None = None
    if use_sink or operator is not None:
        if target.state_dir is None:
            raise FleetSimError("the sink and the operator need a local stub target")
        sink = Sink(
            target.state_dir,
            target.endpoint.host,
            target.endpoint.port,
            run_id,
            filters=telemetry_filters(scenario),
            other_filters=[COMMAND_RESPONSES] if operator is not None else [],
            on_other=operator.on_messages if operator is not None else None,
        )
        try:
            await sink.start()
        except LiteError as exc:
            raise FleetSimError(f"cannot connect the sink: {exc}") from exc
    devices = sum(1 for d in iter_devices(scenario) if any(s.owns(d.n) for s in shards))
    live = LiveAggregator(devices, scenario.duration)
    in_process = config.workers == 0 or config.shard is not None
    configs = [
        ShardConfig(
            scenario,
            shard,
            target,
            run_id,
            0.0,
            scenario.duration,
            tick_s=config.tick_s,
            drain_timeout_s=config.drain_timeout_s,
        )
        for shard in shards
    ]
    started_at = time.time()
    try:
        async with asyncio.TaskGroup() as tg:
            progress = tg.create_task(_progress(live, obs, sink), name="fleet_sim.progress")
            op_task = None
            if operator is not None and sink is not None and sink.client is not None:
                op_task = tg.create_task(
                    _operate(operator, sink.client, live, scenario), name="fleet_sim.operator"
                )
            if in_process:
                snapshots = [await _run_in_process(configs[0], live, stop)]
            else:
                snapshots = await _run_workers(configs, live, obs, stop)
            progress.cancel()
            if op_task is not None and stop.is_set():
                op_task.cancel()  # stopped early: the devices are gone, do not wait
            if op_task is not None:
                await asyncio.wait({op_task})  # does not re-raise the task's cancellation
        if live.sampled:
            if sink is not None:
                live.received = sink.tracker.received
            obs.on_progress(live.state(final=True))
        started_at = live.start_wall or started_at
        ended_at = time.time()
        snapshot = merge_snapshots(snapshots)
        sink_summary = None
        if sink is not None:
            sent = int(snapshot["counters"].get("sent", 0))
            await sink.settle(sent)
            if use_sink:
                sink_summary = sink.summary(expected=sent)
    finally:
        if sink is not None:
            await sink.stop()
    report = build_report(
        run_id=run_id,
        scenario=scenario,
        target={**target.to_dict(), "stub_in_process": stub_in_process},
        shards=[
            {"index": s.index, "count": s.count, "devices": snap["devices"]}
            for s, snap in zip(shards, snapshots, strict=True)
        ],
        snapshot=snapshot,
        started_at=started_at,
        ended_at=ended_at,
        sink=sink_summary,
        operator=operator.summary() if operator is not None else None,
    )
    if config.report_path is not None:
        write_report(report, config.report_path)
    if config.html_path is not None:
        from fleet_sim._html import write_html  # noqa: PLC0415

        write_html(report, config.html_path)
    return report


async def _run_in_process(
    cfg: ShardConfig, live: LiveAggregator, stop: asyncio.Event
) -> dict[str, Any]:
    def on_sample(metrics: RunMetrics, point: dict[str, Any]) -> None:
        live.update(0, point, live_totals(metrics))

    async def start() -> float:
        return live.start()

    return await run_shard(cfg, on_sample=on_sample, stop=stop, start=start)


async def _operate(
    operator: Operator, client: LiteClient, live: LiveAggregator, scenario: Scenario
) -> None:
    """Start once every device is connected (or the ramp should be over), stop near the end."""
    await live.started.wait()
    start = live.start_wall or time.time()
    deadline = start + scenario.duration - _OPERATOR_TAIL_S
    ramp_s = live.devices / scenario.ramp_up.connects_per_second + 5.0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, min(deadline, start + ramp_s) - time.time())):
            await live.all_connected.wait()
    if time.time() < deadline:
        await operator.run(client, until=deadline)
