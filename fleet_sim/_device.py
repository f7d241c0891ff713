"""One virtual device: a model driving a real :class:`~device_sdk.DeviceClient`.

Lifecycle: wait for the ramp (a shard-wide token bucket and a cap on attempts in progress),
connect (retrying with full-jitter backoff; authorization failures are final), subscribe for
shadow and commands, read the shadow once, then tick: advance the model, publish its events
and telemetry through the durable outbox, report the shadow when due. When the run ends the
device drains its outbox (bounded wait) and disconnects cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from device_sdk import (
    AuthorizationError,
    ClosedError,
    DeviceClient,
    DeviceSdkError,
    OutboxDatabase,
    Subscription,
    TokenBucket,
)
from fleet_sim._adapters import CommandPort, ShadowPort, TopicCommands, TopicShadow
from fleet_sim._clock import Scheduler, SimClock
from fleet_sim._metrics import RunMetrics
from fleet_sim._model import CommandResult, DeviceModel
from fleet_sim._ota import DEFAULT_VERSION, DeviceOta, initial_version
from fleet_sim._payload import PayloadBuilder, encode_event
from fleet_sim._plan import SplitMix
from fleet_sim._scenario import GroupSpec
from fleet_sim._transport import error_kind

__all__ = ["DeviceEnv", "VirtualDevice"]

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 30.0


@dataclasses.dataclass(slots=True)
class DeviceEnv:
    """What every device of a shard shares."""

    metrics: RunMetrics
    clock: SimClock
    scheduler: Scheduler
    ramp: TokenBucket
    limiter: asyncio.Semaphore
    database: OutboxDatabase
    run_id: str
    drain_timeout_s: float = 10.0
    stopping: bool = False
    first_connects: int = 0

    def halted(self) -> bool:
        """Whether the run is ending (checked again after every wait)."""
        return self.stopping


class VirtualDevice:
    """A simulated device (see the module documentation).

    Args:
        name: Thing name.
        group: Its scenario group.
        model: The model instance (seeded).
        client: The device's client (transport wrapped for measurement, shared outbox).
        payload: Builds its telemetry messages.
        rng: Scheduling randomness (phase, jitter, backoff), separate from the model's.
        metrics: The shard's metrics.
        ota: The device's OTA side (groups with an ``ota`` block), reporting the firmware
            version it runs as the shadow's ``firmware_version``.
    """

    __slots__ = (
        "_clock",
        "_force_report",
        "_rng",
        "client",
        "commands",
        "group",
        "model",
        "name",
        "ota",
        "payload",
        "phase",
        "seq",
        "shadow",
    )

    def __init__(
        self,
        name: str,
        group: GroupSpec,
        model: DeviceModel,
        client: DeviceClient,
        payload: PayloadBuilder,
        rng: SplitMix,
        metrics: RunMetrics,
        ota: DeviceOta | None = None,
    ) -> None:
        self.name = name
        self.group = group
        self.model = model
        self.client = client
        self.payload = payload
        self._rng = rng
        self.seq = 0
        self.phase = "waiting"
        self._force_report = True
        self._clock: SimClock | None = None
        self.shadow: ShadowPort | None = (
            TopicShadow(client, metrics, self._on_desired) if group.shadow.enabled else None
        )
        self.commands: CommandPort | None = (
            TopicCommands(client, metrics, self._on_command) if group.commands.enabled else None
        )
        self.ota = ota
        if ota is not None:
            if ota.initial_version is None:
                ota.initial_version = initial_version(model.reported_state()) or DEFAULT_VERSION
            ota.on_version = self._on_firmware

    # -- callbacks from the adapters ---------------------------------------------------------

    def _on_desired(self, desired: Mapping[str, Any]) -> None:
        self.model.apply_desired(desired)
        self._force_report = True

    def _on_command(self, name: str, args: Mapping[str, Any]) -> CommandResult:
        self.model.advance(self._now_wall())
        self._force_report = True
        return self.model.handle_command(name, args)

    async def _on_firmware(self, version: str | None) -> None:  # noqa: ARG002 - in reported()
        """An OTA update ended: report the running version now (before the job's status)."""
        self._force_report = True
        if self.shadow is not None:
            await self.shadow.report(self.reported_state())

    def reported_state(self) -> dict[str, Any]:
        """The model's reported state, with the OTA-installed ``firmware_version``."""
        reported = self.model.reported_state()
        version = self.ota.version if self.ota is not None else None
        if version is not None:
            reported["firmware_version"] = version
        return reported

    def _now_wall(self) -> float:
        return self.model.now if self._clock is None else self._clock.wall()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, env: DeviceEnv) -> None:
        """Connect, simulate until the run ends, drain and disconnect."""
        self._clock = env.clock
        try:
            if not await self._connect(env):
                return
            self.phase = "running"
            env.first_connects += 1
            await self._connected(env)
        except Exception as exc:  # noqa: BLE001 - one broken device must not stop the shard
            env.metrics.error(f"device:{type(exc).__name__}")
            _log.debug("%s stopped on an error", self.name, exc_info=True)
        finally:
            self.phase = "done"

    async def _connect(self, env: DeviceEnv) -> bool:
        attempt = 0
        while not env.halted():
            async with env.limiter:
                await env.ramp.acquire()
                if env.halted():
                    return False
                self.phase = "connecting"
                try:
                    await self.client.__aenter__()
                except AuthorizationError:
                    return False  # counted by the transport wrapper; retrying will not help
                except DeviceSdkError:
                    pass
                else:
                    return True
                finally:
                    if self.phase == "connecting":
                        self.phase = "waiting"
            attempt += 1
            delay = self._rng.uniform(0.0, min(_MAX_BACKOFF_S, 2.0**attempt))
            if not await env.scheduler.sleep(delay * env.clock.scale):
                return False
        return False

    async def _connected(self, env: DeviceEnv) -> None:
        subs: list[Subscription] = []
        try:
            async with asyncio.TaskGroup() as tg:
                serving: list[asyncio.Task[None]] = []
                for port in (self.shadow, self.commands, self.ota):
                    if port is None:
                        continue
                    sub = self.client.subscribe(port.topic_filter, max_buffer=100)
                    await sub.__aenter__()
                    subs.append(sub)
                    serving.append(
                        tg.create_task(port.serve(sub), name=f"fleet_sim[{self.name}].inbound")
                    )
                try:
                    if self.shadow is not None and self.group.shadow.sync_on_connect:
                        await self.shadow.sync()
                    await self._tick_loop(env)
                finally:
                    if self.ota is not None:
                        await self.ota.close()  # before the client closes: no job requests then
                    await self._finish(env)
                    for task in serving:
                        task.cancel()
        finally:
            for sub in subs:
                await sub.__aexit__(None, None, None)

    async def _finish(self, env: DeviceEnv) -> None:
        client = self.client
        try:
            async with asyncio.timeout(env.drain_timeout_s):
                await client.drain()
        except TimeoutError:
            env.metrics.error("drain_timeout")
            env.metrics.counters["undelivered"] += client.outbox.depth
        except DeviceSdkError as exc:
            env.metrics.error(f"drain:{error_kind(exc)}")
        finally:
            await client.__aexit__(None, None, None)

    # -- the simulation ----------------------------------------------------------------------

    async def _publish(self, env: DeviceEnv, topic: str, data: bytes) -> bool:
        qos = self.group.telemetry.qos
        try:
            if qos:
                await self.client.publish(topic, data)
            else:
                await self.client.publish(topic, data, 0)
        except ClosedError:
            raise
        except DeviceSdkError as exc:
            env.metrics.error(f"publish:{error_kind(exc)}")
            return False
        self.seq += 1
        env.metrics.counters["sent"] += 1
        if not qos:
            env.metrics.counters["sent_qos0"] += 1
        return True

    async def _tick_loop(self, env: DeviceEnv) -> None:
        if self.group.telemetry.qos:
            await _Ticker(self, env).run()
            return
        await self._awaited_tick_loop(env)

    async def _awaited_tick_loop(self, env: DeviceEnv) -> None:
        """The tick loop for QoS 0 telemetry (sent at once, so awaited)."""
        model, clock, sched, rng = self.model, env.clock, env.scheduler, self._rng
        spec = self.group
        topic = spec.telemetry.topic.format(thing=self.name, group=spec.name)
        events_topic = f"dt/{self.name}/events" if spec.telemetry.events else None
        jitter = spec.telemetry.jitter
        shadow = self.shadow
        report_every = spec.shadow.interval
        periodic = spec.shadow.report == "periodic"
        last_report = -math.inf
        last_reported: dict[str, Any] | None = None
        next_t = clock.now() + rng.uniform(0.0, model.telemetry_interval_s)
        counters = env.metrics.counters
        while await sched.wait_until(next_t):
            now = clock.now()
            events = model.advance(clock.wall())
            ts = int(time.time() * 1000)
            if events:
                counters["events"] += len(events)
                if events_topic is not None:
                    for event in events:
                        data = encode_event(
                            self.name, event.name, event.data, self.seq + 1, ts, env.run_id
                        )
                        await self._publish(env, events_topic, data)
            fields = model.telemetry()
            if fields is not None:
                await self._publish(env, topic, self.payload.encode(fields, self.seq + 1, ts))
            else:
                counters["skipped_ticks"] += 1
            if shadow is not None:
                due = now - last_report >= report_every
                if periodic and due:
                    await shadow.report(self.reported_state())
                    last_report = now
                elif not periodic and (due or self._force_report):
                    reported = self.reported_state()
                    if reported != last_reported:
                        await shadow.report(reported)
                        last_reported = reported
                        last_report = now
                    self._force_report = False
            interval = model.telemetry_interval_s
            next_t += interval * (1.0 + rng.uniform(-jitter, jitter)) if jitter else interval
            next_t = max(next_t, now)  # fell behind (overloaded): skip, do not burst


class _Ticker:
    """The tick loop of a QoS 1 device, without a task: the scheduler calls :meth:`tick`.

    Each tick advances the model and queues its events and telemetry with
    :meth:`DeviceClient.publish_nowait <device_sdk.DeviceClient.publish_nowait>` (the outbox
    commits them in the background, together with every other device's messages of the
    same tick, before sending), then schedules the next tick. So a message costs no task
    switch. Shadow reports still need an answer: they run as a task, one at a time.
    :meth:`run` waits until the scheduler stops or the client closes.
    """

    __slots__ = (
        "_device",
        "_env",
        "_error",
        "_events_topic",
        "_last_report",
        "_last_reported",
        "_next_t",
        "_report_task",
        "_stop",
        "_topic",
    )

    def __init__(self, device: VirtualDevice, env: DeviceEnv) -> None:
        self._device = device
        self._env = env
        spec = device.group
        self._topic = spec.telemetry.topic.format(thing=device.name, group=spec.name)
        self._events_topic = f"dt/{device.name}/events" if spec.telemetry.events else None
        self._last_report = -math.inf
        self._last_reported: dict[str, Any] | None = None
        self._next_t = 0.0
        self._report_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        # Resolved with False when the scheduler stops (or by _halt).
        self._stop = env.scheduler.wait_until(math.inf)

    async def run(self) -> None:
        device, env = self._device, self._env
        self._next_t = env.clock.now() + device._rng.uniform(  # noqa: SLF001 - companion
            0.0, device.model.telemetry_interval_s
        )
        env.scheduler.call_at(self._next_t, self.tick)
        try:
            await self._stop
        finally:
            if not self._stop.done():  # cancelled: stop ticking
                self._stop.set_result(False)
            task = self._report_task
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self._error is not None:
            raise self._error

    def _halt(self, error: BaseException | None = None) -> None:
        self._error = error
        if not self._stop.done():
            self._stop.set_result(False)

    def _publish(self, topic: str, data: bytes) -> bool:
        device, env = self._device, self._env
        try:
            device.client.publish_nowait(topic, data)
        except ClosedError as exc:
            self._halt(exc)
            return False
        except DeviceSdkError as exc:
            env.metrics.error(f"publish:{error_kind(exc)}")
            return True
        device.seq += 1
        env.metrics.counters["sent"] += 1
        return True

    def tick(self) -> None:
        """One tick (called by the scheduler)."""
        if self._stop.done():
            return
        device, env = self._device, self._env
        model, clock = device.model, env.clock
        counters = env.metrics.counters
        now = clock.now()
        events = model.advance(clock.wall())
        ts = int(time.time() * 1000)
        if events:
            counters["events"] += len(events)
            events_topic = self._events_topic
            if events_topic is not None:
                for event in events:
                    data = encode_event(
                        device.name, event.name, event.data, device.seq + 1, ts, env.run_id
                    )
                    if not self._publish(events_topic, data):
                        return
        fields = model.telemetry()
        if fields is not None:
            if not self._publish(self._topic, device.payload.encode(fields, device.seq + 1, ts)):
                return
        else:
            counters["skipped_ticks"] += 1
        if device.shadow is not None and self._report_task is None:
            self._maybe_report(now)
        interval = model.telemetry_interval_s
        jitter = device.group.telemetry.jitter
        rng = device._rng  # noqa: SLF001 - companion class
        next_t = self._next_t
        next_t += interval * (1.0 + rng.uniform(-jitter, jitter)) if jitter else interval
        self._next_t = next_t = max(next_t, now)  # fell behind (overloaded): skip, do not burst
        env.scheduler.call_at(next_t, self.tick)

    def _maybe_report(self, now: float) -> None:
        device = self._device
        spec = device.group.shadow
        due = now - self._last_report >= spec.interval
        if spec.report == "periodic":
            if due:
                self._start_report(device.reported_state())
                self._last_report = now
        elif due or device._force_report:  # noqa: SLF001 - companion class
            reported = device.reported_state()
            if reported != self._last_reported:
                self._start_report(reported)
                self._last_reported = reported
                self._last_report = now
            device._force_report = False  # noqa: SLF001

    def _start_report(self, reported: dict[str, Any]) -> None:
        shadow = self._device.shadow
        if shadow is None:
            return
        task = asyncio.get_running_loop().create_task(shadow.report(reported))
        self._report_task = task
        task.add_done_callback(self._reported)

    def _reported(self, task: asyncio.Task[None]) -> None:
        self._report_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ClosedError):
            self._halt(exc)
        elif isinstance(exc, DeviceSdkError):
            self._env.metrics.error(f"shadow:{error_kind(exc)}")
        elif exc is not None:
            self._halt(exc)
