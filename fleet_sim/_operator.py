"""The operator: cloud-side traffic towards the fleet on a local stub.

At the rates a scenario asks for (``commands.send_per_minute`` and
``shadow.desired_per_minute`` per group), the operator picks random devices of the group and
sends them a command (``cmd/<thing>/request/<name>``, answered on ``.../response/<name>``) or
changes their shadow's desired state (through the stub's shadow service, which then sends
the device its delta). What to send comes from the model (``sample_command`` /
``sample_desired``). It measures command round trips and counts outcomes; a command without
an answer within 10 s counts as ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from typing import Any

from device_sdk import LatencyHistogram
from fleet_sim._model import DeviceModel, load_model
from fleet_sim._mqtt_lite import LiteClient
from fleet_sim._plan import iter_devices
from fleet_sim._scenario import Scenario

__all__ = ["COMMAND_RESPONSES", "Operator"]

_log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 10.0
#: Where devices answer commands (the operator's subscription).
COMMAND_RESPONSES = "cmd/+/response/+"
_encode = json.JSONEncoder(separators=(",", ":")).encode


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

    @property
    def active(self) -> bool:
        """Whether the scenario asks for any operator traffic."""
        return any(
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
        """Send traffic until wall time ``until`` (Poisson arrivals per group and kind)."""
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
        return {
            "commands_sent": self.sent_commands,
            "desired_sent": self.sent_desired,
            "command_outcomes": dict(sorted(self.outcomes.items())),
            "command_rtt": self.rtt.to_dict(),
        }
