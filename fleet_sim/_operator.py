"""The operator: cloud-side traffic towards the fleet on a local stub.

At the rates a scenario asks for (``commands.send_per_minute`` and
``shadow.desired_per_minute`` per group), the operator picks random devices of the group and
sends them a command (``cmd/<thing>/request/<name>``, answered on ``.../response/<name>``) or
changes their shadow's desired state (through the stub's shadow service, which then sends
the device its delta). What to send comes from the model (``sample_command`` /
``sample_desired``). It measures command round trips and counts outcomes; a command without
an answer within 10 s counts as ``timeout``.

The scenario's ``deployments`` are OTA rollouts: ``at`` seconds after the fleet connected, the
operator uploads the firmware to the stub's store (``cloud-stubs firmware upload``; a seeded
random image unless ``firmware`` names a file) and creates a deployment of it to the listed
groups' devices (``cloud-stubs deployments create``). The stub's deployment engine runs it;
the operator follows its status until the run ends (``summary()["deployments"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from device_sdk import LatencyHistogram
from fleet_sim._model import DeviceModel, load_model
from fleet_sim._mqtt_lite import LiteClient
from fleet_sim._plan import iter_devices
from fleet_sim._scenario import DeploymentSpec, Scenario

__all__ = ["COMMAND_RESPONSES", "Operator"]

_log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 10.0
#: Where devices answer commands (the operator's subscription).
COMMAND_RESPONSES = "cmd/+/response/+"
_encode = json.JSONEncoder(separators=(",", ":")).encode
_DEPLOYMENT_POLL_S = 0.5


class Operator:
    """Sends commands and desired-state changes (see the module documentation).

    Args:
        scenario: The scenario (rates per group, models).
        seed: Seed of the operator's choices.
    """

    def __init__(self, scenario: Scenario, *, seed: int = 0) -> None:
        self.scenario = scenario
        self.rng = random.Random(f"{seed}:operator")  # noqa: S311 - simulation
        self.rtt = LatencyHistogram()
        self.outcomes: dict[str, int] = {}
        self.sent_commands = 0
        self.sent_desired = 0
        self._pending: dict[str, tuple[float, str]] = {}
        self._names: dict[str, list[str]] = {g.name: [] for g in scenario.groups}
        for dev in iter_devices(scenario):
            self._names[scenario.groups[dev.group].name].append(dev.name)
        self._answered: asyncio.Event | None = None
        self.deployments: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        """Whether the scenario asks for any operator traffic (or deployments)."""
        return bool(self.scenario.deployments) or any(
            g.count and (g.commands.send_per_minute or g.shadow.desired_per_minute)
            for g in self.scenario.groups
        )

    def on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        """Feed command responses (``cmd/+/response/+``) from the shared connection."""
        now = time.perf_counter()
        for topic, payload in batch:
            if not topic.startswith("cmd/"):
                continue
            try:
                body = json.loads(payload)
                token = body["correlationId"]
                status = str(body.get("status", "?"))
            except (ValueError, KeyError, TypeError):
                continue
            sent = self._pending.pop(token, None)
            if sent is None:
                continue
            self.rtt.record(now - sent[0])
            key = f"{sent[1]}:{status}"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
            if not self._pending and self._answered is not None:
                self._answered.set()

    def _expire(self) -> None:
        now = time.perf_counter()
        for token, (sent, name) in list(self._pending.items()):
            if now - sent > COMMAND_TIMEOUT_S:
                del self._pending[token]
                key = f"{name}:timeout"
                self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def _send_command(self, client: LiteClient, thing: str, model: type[DeviceModel]) -> None:
        sample = model.sample_command(self.rng)
        if sample is None:
            return
        name, args = sample
        token = uuid.uuid4().hex[:16]
        self._pending[token] = (time.perf_counter(), name)
        body = _encode({"correlationId": token, "args": args}).encode()
        client.publish(f"cmd/{thing}/request/{name}", body)
        self.sent_commands += 1

    def _send_desired(self, client: LiteClient, thing: str, model: type[DeviceModel]) -> None:
        desired = model.sample_desired(self.rng)
        if desired is None:
            return
        body = _encode({"state": {"desired": desired}, "clientToken": uuid.uuid4().hex}).encode()
        client.publish(f"$aws/things/{thing}/shadow/update", body)
        self.sent_desired += 1

    async def run(self, client: LiteClient, *, until: float) -> None:
        """Send traffic until wall time ``until`` (Poisson arrivals per group and kind).

        The scenario's deployments are created meanwhile (see the module documentation).
        """
        async with asyncio.TaskGroup() as tg:
            for k, spec in enumerate(self.scenario.deployments):
                tg.create_task(self._deploy(k, spec, until), name=f"fleet_sim.deployment[{k}]")
            await self._traffic(client, until)

    # -- deployments ------------------------------------------------------------------------

    def _device_type(self, spec: DeploymentSpec) -> str:
        if spec.device_type is not None:
            return spec.device_type
        group = next(g for g in self.scenario.groups if g.name == spec.groups[0])
        if group.ota is not None and group.ota.device_type is not None:
            return group.ota.device_type
        return load_model(group.model).ota_device_type()

    def _create(self, k: int, spec: DeploymentSpec, record: dict[str, Any]) -> str:
        """Upload (or reuse) the firmware and create the deployment (blocking)."""
        from cloud_stubs import StatePaths  # noqa: PLC0415 - local stub only
        from cloud_stubs.deployments import create_deployment  # noqa: PLC0415
        from cloud_stubs.firmware import FirmwareStore  # noqa: PLC0415

        paths = StatePaths.at(self.scenario.target.stub_dir)
        device_type = self._device_type(spec)
        with FirmwareStore(paths) as store, tempfile.TemporaryDirectory() as tmp:
            found = [
                m
                for m in store.list_firmware()
                if m.version == spec.version and m.device_type == device_type
            ]
            if found:
                manifest = found[0]
            else:
                image = spec.firmware
                if image is None:
                    rng = random.Random(f"{self.scenario.seed}:deployment:{k}")  # noqa: S311
                    image = Path(tmp) / f"{device_type}-{spec.version}.img"
                    image.write_bytes(rng.randbytes(spec.image_size))
                manifest = store.upload(image, version=spec.version, device_type=device_type)
        record["firmware_id"] = manifest.firmware_id
        things = [name for group in spec.groups for name in self._names.get(group, [])]
        deployment = create_deployment(
            paths,
            firmware_id=manifest.firmware_id,
            things=things,
            batch_size=spec.batch_size,
            success_threshold=spec.success_threshold,
            timeout_minutes=spec.timeout_minutes,
            batch_timeout_s=spec.batch_timeout,
        )
        return deployment.deployment_id

    def _status(self, deployment_id: str) -> tuple[str, str | None, bool]:
        from cloud_stubs import StatePaths  # noqa: PLC0415 - local stub only
        from cloud_stubs.deployments import DeploymentStore  # noqa: PLC0415

        with DeploymentStore(StatePaths.at(self.scenario.target.stub_dir)) as store:
            dep = store.get(deployment_id)
        return dep.status.value, dep.reason, dep.status.is_terminal

    async def _deploy(self, k: int, spec: DeploymentSpec, until: float) -> None:
        record: dict[str, Any] = {"version": spec.version, "groups": list(spec.groups)}
        self.deployments.append(record)
        delay = spec.at
        if time.time() + delay >= until:
            record["status"] = "NOT_STARTED"
            return
        await asyncio.sleep(delay)
        from cloud_stubs import CloudStubError  # noqa: PLC0415 - local stub only

        try:
            record["deployment_id"] = await asyncio.to_thread(self._create, k, spec, record)
            _log.info("deployment %s of %s created", record["deployment_id"], spec.version)
            while time.time() < until:
                status, reason, done = await asyncio.to_thread(
                    self._status, record["deployment_id"]
                )
                record["status"], record["reason"] = status, reason
                if done:
                    return
                await asyncio.sleep(_DEPLOYMENT_POLL_S)
        except (CloudStubError, OSError) as exc:
            record["status"], record["reason"] = "ERROR", str(exc)
            _log.warning("deployment of %s failed: %s", spec.version, exc)

    # -- commands and desired changes -------------------------------------------------------

    async def _traffic(self, client: LiteClient, until: float) -> None:
        plans: list[tuple[float, str, str]] = []
        for g in self.scenario.groups:
            if not self._names[g.name]:
                continue
            if g.commands.send_per_minute > 0:
                plans.append((g.commands.send_per_minute / 60.0, g.name, "command"))
            if g.shadow.desired_per_minute > 0:
                plans.append((g.shadow.desired_per_minute / 60.0, g.name, "desired"))
        if not plans:
            return
        models = {g.name: load_model(g.model) for g in self.scenario.groups}
        total = sum(rate for rate, _, _ in plans)
        weights = [rate for rate, _, _ in plans]
        while True:
            delay = self.rng.expovariate(total)
            if time.time() + delay >= until:
                break
            await asyncio.sleep(delay)
            _, group, kind = self.rng.choices(plans, weights)[0]
            thing = self.rng.choice(self._names[group])
            if kind == "command":
                self._send_command(client, thing, models[group])
            else:
                self._send_desired(client, thing, models[group])
            self._expire()
        if self._pending:
            self._answered = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    await self._answered.wait()
        self._pending_timeout()

    def _pending_timeout(self) -> None:
        for _, name in self._pending.values():
            key = f"{name}:timeout"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self._pending.clear()

    def summary(self) -> dict[str, Any]:
        """Counts and the command round-trip histogram."""
        out: dict[str, Any] = {
            "commands_sent": self.sent_commands,
            "desired_sent": self.sent_desired,
            "command_outcomes": dict(sorted(self.outcomes.items())),
            "command_rtt": self.rtt.to_dict(),
        }
        if self.deployments:
            out["deployments"] = [dict(d) for d in self.deployments]
        return out
