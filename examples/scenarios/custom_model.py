"""A custom device model for fleet_sim: a refrigerated-container (cold chain) tracker.

A model is a pure, seeded state machine: no I/O, no awaits, randomness only from
``context.rng``. Use it in a scenario in one of two ways:

1. Directly by file or module path (handy while developing)::

       groups:
         - name: reefers
           model: "examples/scenarios/custom_model.py:ColdChainTracker"

2. By name, once your package registers it under the ``fleet_sim.models`` entry-point group
   (``pyproject.toml`` of *your* package)::

       [project.entry-points."fleet_sim.models"]
       cold_chain_tracker = "my_models.cold_chain:ColdChainTracker"

   then ``model: cold_chain_tracker``; ``fleet-sim models`` lists it.

``tracker_payload`` below is an example payload generator (``payload.generator``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

from fleet_sim import CommandResult, DeviceModel, ModelContext, ModelEvent


class ColdChainParams(pydantic.BaseModel):
    """Validated from the group's ``params`` (unknown keys are errors)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    setpoint_c: float = -18.0
    speed_kmh: float = pydantic.Field(default=70.0, gt=0)
    door_open_per_hour: float = pydantic.Field(default=0.2, ge=0)
    warm_up_c_per_min: float = pydantic.Field(default=0.8, ge=0)


class ColdChainTracker(DeviceModel):
    """Drives along a circle, keeps its cargo cold, sometimes has its door opened."""

    kind: ClassVar[str] = "cold_chain_tracker"
    Params: ClassVar[type[pydantic.BaseModel]] = ColdChainParams
    commands: ClassVar[tuple[str, ...]] = ("set_setpoint",)

    def __init__(self, context: ModelContext) -> None:
        super().__init__(context)
        p = context.params
        if not isinstance(p, ColdChainParams):
            raise TypeError("params must be ColdChainParams")
        self.p = p
        self.setpoint = p.setpoint_c
        self.temperature = p.setpoint_c + self.rng.uniform(-0.5, 0.5)
        self.angle = self.rng.uniform(0, 2 * math.pi)
        self.door_open_s = 0.0

    def advance(self, now: float) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        seconds = max(0.0, now - self.now)
        self.now = now
        self.angle += self.p.speed_kmh / 3600 * seconds / 50.0  # 50 km radius
        if self.door_open_s > 0:
            self.door_open_s = max(0.0, self.door_open_s - seconds)
            self.temperature += self.p.warm_up_c_per_min * seconds / 60
            if self.door_open_s == 0:
                events.append(
                    ModelEvent("door_closed", {"temperature": round(self.temperature, 1)})
                )
        elif self.rng.random() < -math.expm1(-self.p.door_open_per_hour / 3600 * seconds):
            self.door_open_s = self.rng.uniform(60, 600)
            events.append(ModelEvent("door_opened", {}))
        else:
            self.temperature += (self.setpoint - self.temperature) * min(1.0, seconds / 600)
        return events

    def telemetry(self) -> dict[str, Any]:
        return {
            "lat": round(52.0 + 0.45 * math.sin(self.angle), 5),
            "lon": round(13.0 + 0.7 * math.cos(self.angle), 5),
            "temperature": round(self.temperature + self.rng.gauss(0, 0.05), 2),
            "door_open": self.door_open_s > 0,
        }

    def reported_state(self) -> dict[str, Any]:
        return {"setpoint_c": self.setpoint}

    def apply_desired(self, desired: Mapping[str, Any]) -> None:
        value = desired.get("setpoint_c")
        if isinstance(value, int | float) and -30 <= value <= 10:  # noqa: PLR2004
            self.setpoint = float(value)

    def handle_command(self, name: str, args: Mapping[str, Any]) -> CommandResult:
        if name != "set_setpoint":
            return CommandResult.rejected(f"unknown command {name!r}")
        value = args.get("celsius")
        if not isinstance(value, int | float) or not -30 <= value <= 10:  # noqa: PLR2004
            return CommandResult.rejected("celsius must be a number within -30..10")
        self.setpoint = float(value)
        return CommandResult.ok({"setpoint_c": self.setpoint})

    @classmethod
    def sample_command(cls, rng: Any) -> tuple[str, dict[str, Any]]:
        return "set_setpoint", {"celsius": rng.choice((-25, -20, -18, 2, 4))}


def tracker_payload(telemetry: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A payload generator: any callable ``(telemetry, context) -> dict`` works.

    ``context`` holds ``thing``, ``group`` and ``index``. The simulator adds ``device_id``,
    ``seq``, ``ts`` and ``run`` afterwards.
    """
    return {
        "kind": "env",
        "group": context["group"],
        "celsius": telemetry.get("temperature"),
        "fahrenheit": round(telemetry.get("temperature", 0.0) * 9 / 5 + 32, 2),
    }
