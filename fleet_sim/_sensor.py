"""Environment sensor model: temperature, humidity, pressure, CO2 and noise with faults.

Signals follow a daily cycle (temperature peaks mid-afternoon, humidity opposite, CO2 and noise
rise with office occupancy on weekdays), plus Gaussian noise and a slow per-device drift of
the temperature reading. Faults, each a Poisson process:

* **stuck value**: every reading repeats the last one exactly for a while;
* **spike**: one reading of one signal is wildly off;
* **dropout**: nothing is sent for a while (the device skips its ticks).

The sampling interval is the group's telemetry interval until the shadow's desired state sets
``sampling_interval_s`` (1..3600); the device then reports the value it uses. ``calibrate``
resets the drift; other commands are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

from fleet_sim._model import CommandResult, DeviceModel, ModelContext, ModelEvent

__all__ = ["EnvironmentSensor", "SensorParams"]

_DAY_S = 86400.0
_MIN_INTERVAL_S = 1.0
_MAX_INTERVAL_S = 3600.0
_SPIKES = {"temperature": 25.0, "humidity": 40.0, "co2": 3000.0, "noise": 40.0}


class SensorParams(pydantic.BaseModel):
    """Tunable behaviour of the environment sensor."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    temperature_c: float = 21.0
    temperature_daily_amplitude: float = pydantic.Field(default=2.0, ge=0)
    humidity_pct: float = pydantic.Field(default=45.0, ge=0, le=100)
    humidity_daily_amplitude: float = pydantic.Field(default=6.0, ge=0)
    pressure_hpa: float = pydantic.Field(default=1013.0, gt=0)
    co2_ppm: float = pydantic.Field(default=420.0, ge=0)
    co2_occupied_ppm: float = pydantic.Field(
        default=600.0, ge=0, description="extra at peak occupancy"
    )
    noise_db: float = pydantic.Field(default=32.0, ge=0)
    noise_occupied_db: float = pydantic.Field(default=18.0, ge=0)
    noise_sigma: float = pydantic.Field(
        default=1.0, ge=0, description="scales every signal's noise"
    )
    drift_c_per_day: float = pydantic.Field(
        default=0.05, ge=0, description="sigma of per-device drift"
    )
    stuck_per_day: float = pydantic.Field(default=0.3, ge=0)
    stuck_minutes: tuple[float, float] = (10.0, 90.0)
    spike_probability: float = pydantic.Field(default=0.002, ge=0, le=1, description="per reading")
    dropout_per_day: float = pydantic.Field(default=0.5, ge=0)
    dropout_minutes: tuple[float, float] = (1.0, 15.0)
    label_faults: bool = pydantic.Field(
        default=False, description="add a 'fault' field (ground truth)"
    )
    utc_offset_h: float = pydantic.Field(default=0.0, ge=-14, le=14)
    firmware_version: str = "1.8.0"

    @pydantic.field_validator("stuck_minutes", "dropout_minutes")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0 < lo <= hi:
            raise ValueError("give [min, max] minutes with 0 < min <= max")
        return value


def _chance(draw: float, rate_per_s: float, seconds: float) -> bool:
    return rate_per_s > 0 and draw < -math.expm1(-rate_per_s * seconds)


class EnvironmentSensor(DeviceModel):
    """An indoor environment sensor (see the module documentation)."""

    kind: ClassVar[str] = "environment_sensor"
    device_type: ClassVar[str] = "environment-sensor"
    Params: ClassVar[type[pydantic.BaseModel]] = SensorParams
    commands: ClassVar[tuple[str, ...]] = ("calibrate",)

    def __init__(self, context: ModelContext) -> None:
        """Give the device its own offsets and drift rate."""
        super().__init__(context)
        p = context.params
        assert isinstance(p, SensorParams)  # noqa: S101 - validated by the scenario
        self.p = p
        rng = self.rng
        self.interval_s = context.telemetry_interval_s
        self.temp_offset = rng.gauss(0.0, 0.8)
        self.humidity_offset = rng.gauss(0.0, 3.0)
        self.drift_rate = rng.gauss(0.0, p.drift_c_per_day) / _DAY_S
        self.drift = 0.0
        self.pressure = p.pressure_hpa + rng.gauss(0.0, 2.0)
        self.stuck_until = 0.0
        self.dropout_until = 0.0
        self.fault: str | None = None
        self.last: dict[str, Any] | None = None
        self.calibrated_at: float | None = None

    # -- simulation ------------------------------------------------------------------------

    def advance(self, now: float) -> list[ModelEvent]:
        """Drift, pressure random walk and fault arrivals up to ``now``."""
        events: list[ModelEvent] = []
        seconds = max(0.0, now - self.now)
        self.now = now
        if seconds == 0.0:
            return events
        p, rng = self.p, self.rng
        self.drift += self.drift_rate * seconds
        minutes = seconds / 60.0
        self.pressure += (p.pressure_hpa - self.pressure) * min(1.0, 0.002 * minutes)
        self.pressure += rng.gauss(0.0, 0.05 * math.sqrt(minutes))
        if now >= self.stuck_until and now >= self.dropout_until:
            self.fault = None
            if _chance(rng.random(), p.stuck_per_day / _DAY_S, seconds):
                self.stuck_until = now + rng.uniform(*p.stuck_minutes) * 60
                self.fault = "stuck"
                events.append(ModelEvent("fault", {"kind": "stuck"}))
            elif _chance(rng.random(), p.dropout_per_day / _DAY_S, seconds):
                self.dropout_until = now + rng.uniform(*p.dropout_minutes) * 60
                self.fault = "dropout"
        return events

    def _occupancy(self, local_s: float) -> float:
        day = int(local_s // _DAY_S)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        hour = (local_s % _DAY_S) / 3600.0
        if not 8.0 < hour < 19.0:  # noqa: PLR2004
            return 0.0
        bump = math.sin(math.pi * (hour - 8.0) / 11.0)
        return bump * (0.15 if weekday >= 5 else 1.0)  # noqa: PLR2004

    def _read(self) -> dict[str, Any]:
        p, rng, sigma = self.p, self.rng, self.p.noise_sigma
        local = self.now + p.utc_offset_h * 3600
        phase = math.sin(2 * math.pi * ((local % _DAY_S) / 3600.0 - 9.0) / 24.0)
        occ = self._occupancy(local)
        return {
            "temperature": round(
                p.temperature_c
                + self.temp_offset
                + p.temperature_daily_amplitude * phase
                + self.drift
                + rng.gauss(0.0, 0.1 * sigma),
                2,
            ),
            "humidity": round(
                min(
                    100.0,
                    max(
                        0.0,
                        p.humidity_pct
                        + self.humidity_offset
                        - p.humidity_daily_amplitude * phase
                        + rng.gauss(0.0, 0.5 * sigma),
                    ),
                ),
                1,
            ),
            "pressure": round(self.pressure + rng.gauss(0.0, 0.05 * sigma), 2),
            "co2": round(p.co2_ppm + p.co2_occupied_ppm * occ + rng.gauss(0.0, 12.0 * sigma)),
            "noise": round(p.noise_db + p.noise_occupied_db * occ + rng.gauss(0.0, 2.0 * sigma), 1),
        }

    def telemetry(self) -> dict[str, Any] | None:
        """A reading, a repeated one (stuck), one with a spike, or ``None`` (dropout)."""
        if self.now < self.dropout_until:
            return None
        fault: str | None = None
        if self.now < self.stuck_until and self.last is not None:
            reading = dict(self.last)
            fault = "stuck"
        else:
            reading = self._read()
            self.last = reading
            if self.rng.random() < self.p.spike_probability:
                name = self.rng.choice(sorted(_SPIKES))
                reading = dict(reading)
                reading[name] = round(reading[name] + self.rng.choice((-1, 1)) * _SPIKES[name], 2)
                fault = "spike"
        if self.p.label_faults:
            reading["fault"] = fault
        return reading

    # -- shadow and commands ---------------------------------------------------------------

    @property
    def telemetry_interval_s(self) -> float:
        """The sampling interval in use."""
        return self.interval_s

    def reported_state(self) -> dict[str, Any]:
        """Sampling interval, firmware version and last calibration."""
        return {
            "sampling_interval_s": self.interval_s,
            "firmware_version": self.p.firmware_version,
            "calibrated_at": self.calibrated_at,
        }

    def apply_desired(self, desired: Mapping[str, Any]) -> None:
        """Accept ``sampling_interval_s`` within 1..3600 s; ignore anything else."""
        value = desired.get("sampling_interval_s")
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and _MIN_INTERVAL_S <= value <= _MAX_INTERVAL_S
        ):
            self.interval_s = float(value)

    def handle_command(self, name: str, args: Mapping[str, Any]) -> CommandResult:  # noqa: ARG002
        """``calibrate`` zeroes the drift."""
        if name != "calibrate":
            return CommandResult.rejected(f"unknown command {name!r}; supported: calibrate")
        removed = self.drift
        self.drift = 0.0
        self.calibrated_at = round(self.now)
        return CommandResult.ok({"drift_removed_c": round(removed, 3)})

    @classmethod
    def sample_command(cls, rng: Any) -> tuple[str, dict[str, Any]]:
        """Mostly ``calibrate``; sometimes an unsupported ``reboot``."""
        return ("calibrate", {}) if rng.random() < 0.9 else ("reboot", {})  # noqa: PLR2004

    @classmethod
    def sample_desired(cls, rng: Any) -> dict[str, Any]:
        """A new sampling interval."""
        return {"sampling_interval_s": rng.choice((5, 10, 30, 60, 300))}
