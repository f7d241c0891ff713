"""Helpers for the fleet_sim tests."""

from __future__ import annotations

from typing import Any

import pydantic

from fleet_sim import DeviceModel, ModelContext, device_rng


def make_model(
    cls: type[DeviceModel],
    name: str = "dev-1",
    *,
    seed: int = 1,
    params: dict[str, Any] | None = None,
    start: float = 1_700_000_000.0,
    interval: float = 1.0,
) -> Any:
    """A model instance as the engine would create it."""
    p: pydantic.BaseModel = cls.Params.model_validate(params or {})
    return cls(ModelContext(name, "g", 1, device_rng(seed, name), p, start, interval))


def run_for(model: DeviceModel, seconds: float, step: float = 1.0) -> list[str]:
    """Advance ``model`` in ``step`` increments; return the event names."""
    names: list[str] = []
    t = model.now
    end = t + seconds
    while t < end:
        t = min(end, t + step)
        names += [e.name for e in model.advance(t)]
    return names
