"""The agent's run-time settings and how a shadow's desired state changes them (no I/O).

The settings shadow (``edge-agent-config`` by default) carries, in ``desired``::

    {"telemetry": {"system": {"interval_s": 30}, "wifi": {"enabled": false}}}

:meth:`RuntimeSettings.apply_desired` validates that document (pydantic, at the JSON edge)
and returns new settings plus the problems it found; :meth:`RuntimeSettings.reported`
is what the agent reports back, so ``delta`` empties once a change took effect.
Settings not present in ``desired`` fall back to the configuration file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import pydantic

__all__ = ["RuntimeSettings", "SourceSettings"]

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 86_400.0


@dataclasses.dataclass(frozen=True, slots=True)
class SourceSettings:
    """How one telemetry source runs."""

    interval_s: float
    enabled: bool


class _SourceDesired(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    interval_s: float | None = pydantic.Field(default=None, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    enabled: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Per-source settings: the configuration file's, with the shadow's overrides applied."""

    defaults: dict[str, SourceSettings]
    telemetry: dict[str, SourceSettings]

    @classmethod
    def from_defaults(cls, defaults: dict[str, SourceSettings]) -> Self:
        """Settings equal to the configuration file's."""
        return cls(dict(defaults), dict(defaults))

    def apply_desired(self, desired: dict[str, Any] | None) -> tuple[Self, list[str]]:
        """New settings from a full ``desired`` document, and the problems found in it.

        Invalid entries are ignored (and reported); the rest applies. A source missing from
        ``desired`` (or set to ``null``) returns to its configured settings.
        """
        problems: list[str] = []
        requested = (desired or {}).get("telemetry") or {}
        if not isinstance(requested, dict):
            return self, ["desired.telemetry: must be an object keyed by source name"]
        telemetry = dict(self.defaults)
        for name, raw in requested.items():
            if name not in self.defaults:
                problems.append(f"desired.telemetry.{name}: no such source")
                continue
            try:
                entry = _SourceDesired.model_validate(raw) if raw is not None else None
            except pydantic.ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                field = ".".join(str(p) for p in err["loc"])
                problems.append(f"desired.telemetry.{name}.{field}: {err['msg']}")
                continue
            if entry is None:
                continue
            base = self.defaults[name]
            telemetry[name] = SourceSettings(
                entry.interval_s if entry.interval_s is not None else base.interval_s,
                entry.enabled if entry.enabled is not None else base.enabled,
            )
        return type(self)(self.defaults, telemetry), problems

    def reported(self) -> dict[str, Any]:
        """The ``telemetry`` part of the reported state."""
        return {
            name: {"interval_s": _num(s.interval_s), "enabled": s.enabled}
            for name, s in sorted(self.telemetry.items())
        }


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
