"""OTA participation of simulated devices: ``device_sdk.ota`` on every virtual device that asks.

A group with an ``ota:`` block runs real OTA jobs: each of its devices subscribes to its
``jobs/notify-next`` topic only. When a job arrives, the device creates (lazily, so idle
devices cost one subscription and a small object) a :class:`~device_sdk.jobs.JobsClient`, a
:class:`~device_sdk.jobs.JobRunner` and an :class:`~device_sdk.ota.OtaAgent` with a
:class:`~device_sdk.ota.SimulatedInstaller` whose journal lives in the device's state
directory. The agent downloads the image over HTTP(S) with Range requests, verifies it,
"installs" it, asks for a reboot; the device then waits ``reboot_s`` simulated seconds and
boots again: a new agent (new boot id) and a new runner resume the job from the journals, run
the trial-boot health checks and commit or roll back. The running version is reported in the
device's shadow as ``firmware_version`` (the new one, or the old one after a rollback). When
the runner has been idle for a moment the objects are dropped again (the installer, i.e. the
device's "flash", stays).

Injected failures (``ota.failures``) are exact: ``round(fraction * count)`` devices of the
group (half up), chosen by ranking the group's devices on SHA-256 of
``"<seed>:<thing>:ota:<step>"``, so the same devices fail in every shard and every run with the
same seed (:func:`failing_devices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from device_sdk import ClosedError, DeviceClient, DeviceSdkError, Subscription
from device_sdk.jobs import JobContext, JobHandler, JobRunner, JobsClient
from device_sdk.ota import (
    FaultPlan,
    FaultRule,
    HealthCheck,
    OtaAgent,
    OtaConfig,
    OtaResult,
    SimulatedInstaller,
    key_id_of,
    ota_job_handler,
)
from fleet_sim._errors import FleetSimError
from fleet_sim._metrics import RunMetrics
from fleet_sim._model import load_model
from fleet_sim._plan import iter_devices
from fleet_sim._scenario import OtaSpec, Scenario

__all__ = [
    "FAILURE_STEPS",
    "DeviceOta",
    "FleetOta",
    "GroupOta",
    "failing_devices",
    "failure_count",
    "initial_version",
]

_log = logging.getLogger("fleet_sim.ota")
#: The steps of ``ota.failures``.
FAILURE_STEPS: tuple[str, ...] = ("health_check", "download", "install", "verify_boot")
DEFAULT_VERSION = "1.0.0"
#: Wall seconds a device's job runner may stay idle before its objects are dropped.
IDLE_S = 2.0
_POLL_S = 0.25
VersionCallback = Callable[[str | None], Awaitable[None]]


def failure_count(fraction: float, count: int) -> int:
    """How many of ``count`` devices fail for ``fraction``: ``round(fraction * count)``, half up."""
    return min(count, math.floor(fraction * count + 0.5))


def failing_devices(scenario: Scenario, group_index: int, step: str) -> frozenset[str]:
    """Thing names of the devices of group ``group_index`` whose ``step`` fails.

    Exactly :func:`failure_count` devices, the same in any shard (see the module docs).

    Raises:
        ValueError: ``step`` is not one of :data:`FAILURE_STEPS`.
    """
    if step not in FAILURE_STEPS:
        raise ValueError(f"unknown OTA failure step {step!r}; use one of {FAILURE_STEPS}")
    group = scenario.groups[group_index]
    spec = group.ota
    if spec is None or not spec.enabled:
        return frozenset()
    k = failure_count(float(getattr(spec.failures, step)), group.count)
    if k == 0:
        return frozenset()
    names = [d.name for d in iter_devices(scenario) if d.group == group_index]

    def rank(name: str) -> bytes:
        return hashlib.sha256(f"{scenario.seed}:{name}:ota:{step}".encode()).digest()

    return frozenset(sorted(names, key=rank)[:k])


@dataclasses.dataclass(frozen=True, slots=True)
class GroupOta:
    """The OTA settings of one group, resolved for a shard.

    Attributes:
        spec: The group's ``ota`` block.
        device_type: Device type the job documents must name.
        trusted_keys: Pinned code-signing keys (key id -> PEM).
        failing: Failure step -> thing names that fail it.
    """

    spec: OtaSpec
    device_type: str
    trusted_keys: Mapping[str, bytes]
    failing: Mapping[str, frozenset[str]]

    def fails(self, thing: str, step: str) -> bool:
        """Whether ``thing`` fails ``step``."""
        return thing in self.failing.get(step, frozenset())


def _read_keys(paths: list[Path], group: str) -> dict[str, bytes]:
    keys = {}
    for path in paths:
        try:
            pem = path.read_bytes()
            keys[key_id_of(pem)] = pem
        except (OSError, ValueError) as exc:
            raise FleetSimError(
                f"group {group!r}: ota.trusted_keys: cannot use {path} as a PEM public key: {exc}"
            ) from None
    return keys


def _stub_keys(state_dir: Path) -> dict[str, bytes]:
    from cloud_stubs import StatePaths  # noqa: PLC0415 - only stub targets need cloud_stubs
    from cloud_stubs.firmware import OtaPaths, public_key_pem  # noqa: PLC0415

    pem = public_key_pem(OtaPaths.of(StatePaths.at(state_dir)))
    return {key_id_of(pem): pem}


class FleetOta:
    """What the OTA devices of one shard share (settings per group, directories, metrics).

    Args:
        groups: Group name -> its resolved settings (only groups taking part).
        state_root: Devices keep their OTA state in ``<state_root>/<thing>``.
        ca_file: CA bundle for HTTPS downloads.
        time_scale: Simulated seconds per wall second (scales ``reboot_s``).
        metrics: The shard's metrics (``ota_*`` counters).
    """

    def __init__(
        self,
        groups: Mapping[str, GroupOta],
        *,
        state_root: Path,
        ca_file: Path | None,
        time_scale: float,
        metrics: RunMetrics,
    ) -> None:
        self.groups = dict(groups)
        self.state_root = state_root
        self.ca_file = ca_file
        self.time_scale = time_scale
        self.metrics = metrics

    @classmethod
    def build(
        cls,
        scenario: Scenario,
        *,
        state_root: Path,
        ca_file: Path | None,
        stub_dir: Path | None,
        metrics: RunMetrics,
    ) -> FleetOta | None:
        """The shard's OTA settings, or ``None`` when no group takes part.

        Raises:
            FleetSimError: A trusted key file is unusable, or no key is given and the target
                is not a local stub.
        """
        groups: dict[str, GroupOta] = {}
        stub_keys: dict[str, bytes] | None = None
        for i, group in enumerate(scenario.groups):
            spec = group.ota
            if spec is None or not spec.enabled or group.count == 0:
                continue
            if spec.trusted_keys is not None:
                keys = _read_keys(spec.trusted_keys, group.name)
            elif stub_dir is not None:
                stub_keys = stub_keys if stub_keys is not None else _stub_keys(stub_dir)
                keys = stub_keys
            else:
                raise FleetSimError(
                    f"group {group.name!r}: ota.trusted_keys is required unless the target "
                    "is a local stub"
                )
            device_type = spec.device_type or load_model(group.model).ota_device_type()
            failing = {step: failing_devices(scenario, i, step) for step in FAILURE_STEPS}
            groups[group.name] = GroupOta(spec, device_type, keys, failing)
        if not groups:
            return None
        return cls(
            groups,
            state_root=state_root,
            ca_file=ca_file,
            time_scale=scenario.time_scale,
            metrics=metrics,
        )

    def device(self, thing: str, group: str, client: DeviceClient) -> DeviceOta | None:
        """The (still empty) OTA side of a device of ``group``, if the group takes part."""
        settings = self.groups.get(group)
        if settings is None:
            return None
        return DeviceOta(thing, client, self, settings)


class DeviceOta:
    """One device's OTA side (see the module documentation).

    It is a port of the device runner: :attr:`topic_filter` is subscribed while connected and
    :meth:`serve` reads job notifications; a session (runner + agent) starts on demand.

    Args:
        thing: Thing name.
        client: The device's client.
        fleet: Shard-wide settings.
        group: The group's settings.
    """

    __slots__ = (
        "_again",
        "_closed",
        "_fleet",
        "_group",
        "_installer",
        "_session",
        "client",
        "initial_version",
        "on_version",
        "thing",
    )

    def __init__(self, thing: str, client: DeviceClient, fleet: FleetOta, group: GroupOta) -> None:
        self.thing = thing
        self.client = client
        self._fleet = fleet
        self._group = group
        self._installer: SimulatedInstaller | None = None
        self._session: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        self.initial_version = group.spec.version
        self.on_version: VersionCallback | None = None

    # -- what the device runner uses --------------------------------------------------------

    @property
    def topic_filter(self) -> str:
        """``$aws/things/<thing>/jobs/notify-next`` (shared with the JobsClient's)."""
        return f"$aws/things/{self.thing}/jobs/notify-next"

    @property
    def version(self) -> str | None:
        """The running firmware version once an update touched the device, else ``None``."""
        return None if self._installer is None else self._installer.current_version()

    @property
    def active(self) -> bool:
        """Whether a session (runner + agent) exists now."""
        return self._session is not None and not self._session.done()

    async def serve(self, subscription: Subscription) -> None:
        """Start a session for every notification that names an execution."""
        try:
            async for message in subscription:
                try:
                    body = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(body, dict) and isinstance(body.get("execution"), dict):
                    self.wake()
        finally:
            await self.close()

    def wake(self) -> None:
        """A job is waiting: start a session, or keep the running one for another round."""
        if self._closed:
            return
        if self.active:
            self._again = True
            return
        self._session = asyncio.create_task(self._run(), name=f"fleet_sim[{self.thing}].ota")

    async def close(self) -> None:
        """Stop the session for good (the journals stay; nothing is rolled back)."""
        self._closed = True
        task, self._session = self._session, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the session ------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        return self._fleet.state_root / self.thing

    def _installer_now(self) -> SimulatedInstaller:
        if self._installer is None:
            failures = {}
            if self._group.fails(self.thing, "install"):
                failures["install"] = 1.0
            if self._group.fails(self.thing, "verify_boot"):
                failures["verify_reboot"] = 1.0
            self._installer = SimulatedInstaller(
                self.initial_version or DEFAULT_VERSION,
                download_dir=self._dir / "downloads",
                failures=failures,
                reboot=True,
            )
        return self._installer

    def _config(self) -> OtaConfig:
        healthy = not self._group.fails(self.thing, "health_check")

        async def app() -> bool:
            return healthy

        plan = None
        if self._group.fails(self.thing, "download"):
            rule = FaultRule(
                point="download.before_request", action="raise:DOWNLOAD_FAILED", once=False
            )
            plan = FaultPlan(faults=[rule])
        return OtaConfig(
            device_type=self._group.device_type,
            trusted_keys=self._group.trusted_keys,
            state_dir=self._dir / "ota",
            ca_file=self._fleet.ca_file,
            health_checks=[HealthCheck("fleet_sim", app, required=True, timeout_s=10)],
            fault_plan=plan,
            progress_interval_s=5.0,
            retry_delay_s=0.2,
        )

    async def _run(self) -> None:
        counters = self._fleet.metrics.counters
        counters["ota_sessions"] += 1
        try:
            while True:
                self._again = False
                while await self._boot():
                    counters["ota_reboots"] += 1
                    await asyncio.sleep(self._group.spec.reboot_s / self._fleet.time_scale)
                if not self._again:
                    return
        except ClosedError:
            _log.debug("%s: OTA session ended: the device closed", self.thing)
        except DeviceSdkError as exc:
            self._fleet.metrics.error(f"ota:{type(exc).__name__}")
            _log.debug("%s: OTA session ended: %s", self.thing, exc)
        except Exception:  # noqa: BLE001 - one device's bug must not stop the shard
            self._fleet.metrics.error("ota:internal")
            _log.exception("%s: OTA session failed", self.thing)
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir / "downloads")

    async def _boot(self) -> bool:
        """One "boot" of the device's OTA side; whether it asked for a reboot."""
        loop = asyncio.get_running_loop()
        installer = self._installer_now()
        agent = OtaAgent(installer, self._config(), logger=_log)
        state = {"busy": 0, "last": loop.time()}
        async with JobsClient(self.client) as jobs:
            inner = ota_job_handler(agent, jobs, on_version=self._ended)

            async def handle(ctx: JobContext) -> Any:
                state["busy"] += 1
                try:
                    return await inner.run(ctx)
                finally:
                    state["busy"] -= 1
                    state["last"] = loop.time()

            runner = JobRunner(
                self.client,
                {"ota": JobHandler(handle, resumable=True, timeout_s=inner.timeout_s)},
                journal_path=self._dir / "jobs.journal",
                jobs=jobs,
                logger=_log,
            )
            task = asyncio.ensure_future(runner.run())
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=_POLL_S)
                    if (
                        not task.done()
                        and not state["busy"]
                        and loop.time() - state["last"] > IDLE_S
                    ):
                        return False  # idle: drop the runner (cancelled below)
                return task.result().reboot_requested
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, DeviceSdkError):
                        await task
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved (re-raised above when it ended the boot)

    async def _ended(self, version: str | None, result: OtaResult) -> None:
        self._fleet.metrics.counters[f"ota_{result.outcome}"] += 1
        if self.on_version is not None:
            await self.on_version(version)


def initial_version(reported: Mapping[str, Any]) -> str | None:
    """The firmware version a model reports (``firmware_version``), if it is a string."""
    value = reported.get("firmware_version")
    return value if isinstance(value, str) and value else None
