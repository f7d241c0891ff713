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
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

from fleet_sim._model import CommandResult, DeviceModel, ModelContext, ModelEvent

__all__ = ["EnvironmentSensor", "SensorParams"]

_DAY_S = 86400.0
_MIN_INTERVAL_S = 1.0
_MAX_INTERVAL_S = 3600.0
_SPIKES = {"temperature": 25.0, "humidity": 40.0, "co2": 3000.0, "noise": 40.0}
_SPIKE_NAMES = tuple(sorted(_SPIKES))
_TWO_PI = 2.0 * math.pi
_sin, _cos, _log, _sqrt = math.sin, math.cos, math.log, math.sqrt


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


def _chance_of(rate_per_s: float, seconds: float) -> float:
    """Probability of a Poisson arrival within ``seconds``; -1 (never below a draw) for rate 0."""
    return -math.expm1(-rate_per_s * seconds) if rate_per_s > 0 else -1.0


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
        self._fold_constants()

    # -- simulation ------------------------------------------------------------------------
    #
    # ``advance`` and ``telemetry`` run once per device per tick, so they are written for
    # speed: constants are folded in ``__init__`` (keeping the order of every floating-point
    # operation, so readings are bit-for-bit those of the plain formulas), and the Gaussian
    # draws inline ``random.Random.gauss`` (Box-Muller, one cached value in ``gauss_next``):
    # the same numbers from the same generator state as calling ``rng.gauss``.

    def _fold_constants(self) -> None:
        p = self.p
        sigma = p.noise_sigma
        self._temp_base = p.temperature_c + self.temp_offset
        self._humidity_base = p.humidity_pct + self.humidity_offset
        self._sd = (0.1 * sigma, 0.5 * sigma, 0.05 * sigma, 12.0 * sigma, 2.0 * sigma)
        self._utc_offset_s = p.utc_offset_h * 3600
        self._stuck_rate = p.stuck_per_day / _DAY_S
        self._dropout_rate = p.dropout_per_day / _DAY_S
        self._odds_for = -1.0  # the tick length that the odds below belong to
        self._stuck_odds = -1.0
        self._dropout_odds = -1.0
        self._spike_probability = p.spike_probability
        self._label_faults = p.label_faults
        # Inline Box-Muller needs the generator to be a plain random.Random.
        self._inline_gauss = type(self.rng) is random.Random

    def _gauss(self) -> float:
        """One standard normal draw, exactly as ``rng.gauss(0.0, 1.0)`` would make it."""
        if not self._inline_gauss:
            return self.rng.gauss(0.0, 1.0)
        rng: Any = self.rng  # typeshed does not know Random.gauss_next
        z: float | None = rng.gauss_next
        if z is None:
            x2pi = rng.random() * _TWO_PI
            g2rad = _sqrt(-2.0 * _log(1.0 - rng.random()))
            rng.gauss_next = _sin(x2pi) * g2rad
            return _cos(x2pi) * g2rad
        rng.gauss_next = None
        return z

    def _set_odds(self, seconds: float) -> None:
        """Chances of a stuck fault and of a dropout starting within ``seconds`` (Poisson).

        A uniform draw below the chance means an arrival; a rate of 0 never arrives.
        """
        self._odds_for = seconds
        self._stuck_odds = _chance_of(self._stuck_rate, seconds)
        self._dropout_odds = _chance_of(self._dropout_rate, seconds)

    def advance(self, now: float) -> list[ModelEvent]:
        """Drift, pressure random walk and fault arrivals up to ``now``."""
        seconds = now - self.now
        if not seconds > 0.0:  # as max(0.0, ...) == 0.0 before: going back, NaN
            self.now = now
            return []
        self.now = now
        p = self.p
        self.drift += self.drift_rate * seconds
        minutes = seconds / 60.0
        self.pressure += (p.pressure_hpa - self.pressure) * min(1.0, 0.002 * minutes)
        if self._inline_gauss:
            rng: Any = self.rng  # typeshed does not know Random.gauss_next
            z = rng.gauss_next
            if z is None:
                x2pi = rng.random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - rng.random()))
                z = _cos(x2pi) * g2rad
                rng.gauss_next = _sin(x2pi) * g2rad
            else:
                rng.gauss_next = None
        else:
            z = self._gauss()
        self.pressure += 0.0 + z * (0.05 * _sqrt(minutes))
        if now >= self.stuck_until and now >= self.dropout_until:
            self.fault = None
            random = self.rng.random
            if seconds != self._odds_for:
                self._set_odds(seconds)
            if random() < self._stuck_odds:
                self.stuck_until = now + self.rng.uniform(*p.stuck_minutes) * 60
                self.fault = "stuck"
                return [ModelEvent("fault", {"kind": "stuck"})]
            if random() < self._dropout_odds:
                self.dropout_until = now + self.rng.uniform(*p.dropout_minutes) * 60
                self.fault = "dropout"
        return []

    def _read(self) -> dict[str, Any]:
        p = self.p
        local = self.now + self._utc_offset_s
        hour = (local % _DAY_S) / 3600.0
        phase = _sin(_TWO_PI * (hour - 9.0) / 24.0)
        # Office occupancy: a sine bump from 08:00 to 19:00, 15 % of it at weekends.
        if 8.0 < hour < 19.0:  # noqa: PLR2004
            occ = _sin(math.pi * (hour - 8.0) / 11.0)
            if (int(local // _DAY_S) + 3) % 7 >= 5:  # noqa: PLR2004 - 1970-01-01 was a Thursday
                occ *= 0.15
        else:
            occ = 0.0
        # Five normal draws, in the order of the plain formulas (see the note above).
        if self._inline_gauss:
            rng: Any = self.rng  # typeshed does not know Random.gauss_next
            random = rng.random
            z = rng.gauss_next
            if z is None:
                x2pi = random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - random()))
                n1, n2 = _cos(x2pi) * g2rad, _sin(x2pi) * g2rad
                x2pi = random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - random()))
                n3, n4 = _cos(x2pi) * g2rad, _sin(x2pi) * g2rad
                x2pi = random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - random()))
                n5 = _cos(x2pi) * g2rad
                rng.gauss_next = _sin(x2pi) * g2rad
            else:
                n1 = z
                x2pi = random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - random()))
                n2, n3 = _cos(x2pi) * g2rad, _sin(x2pi) * g2rad
                x2pi = random() * _TWO_PI
                g2rad = _sqrt(-2.0 * _log(1.0 - random()))
                n4, n5 = _cos(x2pi) * g2rad, _sin(x2pi) * g2rad
                rng.gauss_next = None
        else:
            gauss = self._gauss
            n1, n2, n3, n4, n5 = gauss(), gauss(), gauss(), gauss(), gauss()
        sd_t, sd_h, sd_p, sd_c, sd_n = self._sd
        humidity = self._humidity_base - p.humidity_daily_amplitude * phase + (0.0 + n2 * sd_h)
        return {
            "temperature": round(
                self._temp_base
                + p.temperature_daily_amplitude * phase
                + self.drift
                + (0.0 + n1 * sd_t),
                2,
            ),
            "humidity": round(
                100.0 if humidity > 100.0 else (humidity if humidity > 0.0 else 0.0),  # noqa: PLR2004, FURB136
                1,
            ),
            "pressure": round(self.pressure + (0.0 + n3 * sd_p), 2),
            "co2": round(p.co2_ppm + p.co2_occupied_ppm * occ + (0.0 + n4 * sd_c)),
            "noise": round(p.noise_db + p.noise_occupied_db * occ + (0.0 + n5 * sd_n), 1),
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
            if self.rng.random() < self._spike_probability:
                name = self.rng.choice(_SPIKE_NAMES)
                reading = dict(reading)
                reading[name] = round(reading[name] + self.rng.choice((-1, 1)) * _SPIKES[name], 2)
                fault = "spike"
        if self._label_faults:
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
