"""Robot vacuum model: a seeded state machine with a battery, a bin and a room grid.

States (:class:`RobotState`)::

    docked ──start/schedule──▶ cleaning ──low battery / bin full / run done / dock──▶ returning
      ▲  ▲                      │   ▲  │                                                │
      │  └─ charging ◀──────────┼───┼──┼──────────── reaches the dock ◀─────────────────┘
      │       (battery 100 %)   │   │  └─ stop ─▶ idle (off the dock) ─ start ─▶ cleaning
      │                         │   └─ frees itself ── stuck ◀── random ─┘
      └── stop at the dock      └─ random fault / stuck too long / battery empty ─▶ error
                                                    (``stop`` clears it ─▶ idle)

Battery drains while cleaning or returning and charges on the dock; under ``low_battery_pct``
the robot emits ``low_battery`` once and docks by itself. The bin fills while cleaning; when
full it emits ``bin_full`` and docks, where the base empties it. Commands: ``start``,
``stop``, ``dock``, ``spot_clean``; anything else is rejected. The desired state may carry a
weekly ``schedule`` (``[{"days": ["mon", "thu"], "time": "09:30"}]``) that starts cleaning.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

from fleet_sim._model import CommandResult, DeviceModel, ModelContext, ModelEvent

__all__ = ["RobotParams", "RobotState", "RobotVacuum"]

_MAX_STEP_S = 5.0
_DOCK_EPS = 0.05
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_ERRORS = ("brush_jammed", "wheel_fault", "cliff_sensor")
_MAX_SCHEDULE = 21
_FULL = 100.0


class RobotState(enum.StrEnum):
    """What the robot is doing."""

    DOCKED = "docked"
    CHARGING = "charging"
    CLEANING = "cleaning"
    RETURNING = "returning"
    STUCK = "stuck"
    ERROR = "error"
    IDLE = "idle"


class RobotParams(pydantic.BaseModel):
    """Tunable behaviour of the robot vacuum (rates are per simulated minute or hour)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    room_width: int = pydantic.Field(default=12, ge=2, le=1000, description="grid cells")
    room_height: int = pydantic.Field(default=10, ge=2, le=1000, description="grid cells")
    cell_m2: float = pydantic.Field(default=0.25, gt=0, description="area of one grid cell")
    speed_cells_per_s: float = pydantic.Field(default=0.5, gt=0, le=100)
    battery_drain_per_min: float = pydantic.Field(default=1.0, ge=0, le=100)
    charge_per_min: float = pydantic.Field(default=2.0, gt=0, le=100)
    bin_fill_per_min: float = pydantic.Field(default=1.5, ge=0, le=100)
    low_battery_pct: float = pydantic.Field(default=20.0, gt=0, lt=100)
    min_start_battery_pct: float = pydantic.Field(default=30.0, ge=0, le=100)
    run_minutes: float = pydantic.Field(
        default=45.0, gt=0, description="length of a full cleaning run"
    )
    spot_clean_s: float = pydantic.Field(default=120.0, gt=0)
    stuck_per_hour: float = pydantic.Field(default=0.5, ge=0)
    unstuck_per_min: float = pydantic.Field(default=0.2, ge=0)
    stuck_timeout_s: float = pydantic.Field(default=600.0, gt=0)
    error_per_hour: float = pydantic.Field(default=0.05, ge=0)
    auto_start_per_hour: float = pydantic.Field(default=0.5, ge=0, description="user presses start")
    start_cleaning: float = pydantic.Field(
        default=0.5, ge=0, le=1, description="share cleaning at t=0"
    )
    firmware_version: str = "2.3.1"
    utc_offset_h: float = pydantic.Field(default=0.0, ge=-14, le=14, description="for the schedule")


def _chance_of(rate_per_s: float, seconds: float) -> float:
    """Probability of a Poisson arrival within ``seconds``; -1 (never below a draw) for rate 0."""
    return -math.expm1(-rate_per_s * seconds) if rate_per_s > 0 else -1.0


def parse_schedule(value: Any) -> list[dict[str, Any]]:
    """Validate a desired ``schedule``; return it normalised.

    Raises:
        ValueError: Not a list of ``{"days": [...], "time": "HH:MM"}`` entries.
    """
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list) or len(entries) > _MAX_SCHEDULE:
        raise ValueError(f"schedule must be a list of at most {_MAX_SCHEDULE} entries")
    out: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("schedule entries must be objects")  # noqa: TRY004
        days = entry.get("days", list(_DAYS))
        time = entry.get("time")
        if not isinstance(time, str) or _TIME.fullmatch(time) is None:
            raise ValueError(f"schedule time {time!r} is not HH:MM")
        if not isinstance(days, list) or not days or any(d not in _DAYS for d in days):
            raise ValueError(f"schedule days must be a non-empty list of {', '.join(_DAYS)}")
        out.append({"days": [d for d in _DAYS if d in days], "time": time})
    return out


class RobotVacuum(DeviceModel):
    """A robot vacuum cleaner (see the module documentation)."""

    kind: ClassVar[str] = "robot_vacuum"
    device_type: ClassVar[str] = "robot-vacuum"
    Params: ClassVar[type[pydantic.BaseModel]] = RobotParams
    commands: ClassVar[tuple[str, ...]] = ("start", "stop", "dock", "spot_clean")

    def __init__(self, context: ModelContext) -> None:
        """Place the robot on its dock (or already cleaning, per ``start_cleaning``)."""
        super().__init__(context)
        p = context.params
        assert isinstance(p, RobotParams)  # noqa: S101 - validated by the scenario
        self.p = p
        rng = self.rng
        self.state = RobotState.DOCKED
        self.mode: str | None = None
        self.battery = _FULL
        self.bin_level = rng.uniform(0, 40)
        self.x = 0.0
        self.y = 0.0
        self.target = (0.0, 0.0)
        self.session_s = 0.0
        self.total_cleaning_s = 0.0
        self.run_left_s = 0.0
        self.stuck_s = 0.0
        self.error: str | None = None
        self.low_battery_sent = False
        self.schedule: list[dict[str, Any]] = []
        self.schedule_error: str | None = None
        self._odds_for = -1.0  # the step length that _odds belong to
        self._odds = (-1.0, -1.0, -1.0, -1.0)
        self._reading_key: tuple[Any, ...] | None = None  # inputs of _reading (see telemetry)
        self._reading: dict[str, Any] = {}
        if rng.random() < p.start_cleaning:
            self.battery = rng.uniform(40, 100)
            self._start("auto", [])
            self.x, self.y = self._random_cell()

    # -- helpers ---------------------------------------------------------------------------

    def _random_cell(self) -> tuple[float, float]:
        return (
            float(self.rng.randrange(self.p.room_width)),
            float(self.rng.randrange(self.p.room_height)),
        )

    def _start(self, mode: str, events: list[ModelEvent]) -> None:
        self.state = RobotState.CLEANING
        self.mode = mode
        self.session_s = 0.0
        self.run_left_s = self.p.spot_clean_s if mode == "spot" else self.p.run_minutes * 60
        self.target = (self.x, self.y) if mode == "spot" else self._random_cell()
        events.append(ModelEvent("cleaning_started", {"mode": mode}))

    def _return(self, reason: str, events: list[ModelEvent]) -> None:
        self.state = RobotState.RETURNING
        self.target = (0.0, 0.0)
        events.append(ModelEvent("returning", {"reason": reason}))

    def _fail(self, code: str, events: list[ModelEvent]) -> None:
        self.state = RobotState.ERROR
        self.mode = None
        self.error = code
        events.append(ModelEvent("error", {"code": code}))

    def _move(self, seconds: float) -> bool:
        """Move towards the target; True when it is reached."""
        tx, ty = self.target
        dx, dy = tx - self.x, ty - self.y
        dist = math.hypot(dx, dy)
        step = self.p.speed_cells_per_s * seconds
        if dist <= step or dist < _DOCK_EPS:
            self.x, self.y = tx, ty
            return True
        self.x += dx / dist * step
        self.y += dy / dist * step
        return False

    def _can_start(self) -> str | None:
        if self.state in (RobotState.STUCK, RobotState.ERROR):
            return f"robot is {self.state}" + (f" ({self.error})" if self.error else "")
        if self.battery < self.p.min_start_battery_pct:
            return f"battery too low ({self.battery:.0f} %)"
        return None

    # -- simulation ------------------------------------------------------------------------

    def advance(self, now: float) -> list[ModelEvent]:
        """Integrate in steps of at most 5 simulated seconds."""
        events: list[ModelEvent] = []
        while self.now < now:
            step = now - self.now
            if step > _MAX_STEP_S:  # noqa: PLR1730 - hot path: cheaper than min()
                step = _MAX_STEP_S
            if self.schedule and self._schedule_due(self.now, self.now + step):
                self._scheduled_start(events)
            self.now += step
            self._step(step, events)
        return events

    def _set_odds(self, s: float) -> None:
        """Per-step chances of the Poisson arrivals for steps of ``s`` seconds.

        Steps are nearly always the same length (the telemetry interval, or 5 s), so these
        are computed once per length rather than once per step; a uniform draw below a chance
        is an arrival, and a chance of -1 (rate 0) never is.
        """
        p = self.p
        self._odds_for = s
        self._odds = (
            _chance_of(p.error_per_hour / 3600, s),
            _chance_of(p.stuck_per_hour / 3600, s),
            _chance_of(p.unstuck_per_min / 60, s),
            _chance_of(p.auto_start_per_hour / 3600, s),
        )

    def _step(self, s: float, events: list[ModelEvent]) -> None:
        p, rng, state = self.p, self.rng, self.state
        minutes = s / 60.0
        if s != self._odds_for:
            self._set_odds(s)
        error_odds, stuck_odds, unstuck_odds, start_odds = self._odds
        if state is RobotState.CLEANING:
            self.battery -= p.battery_drain_per_min * minutes
            self.bin_level = min(_FULL, self.bin_level + p.bin_fill_per_min * minutes)
            self.session_s += s
            self.total_cleaning_s += s
            self.run_left_s -= s
            if self._move(s):
                self.target = (
                    (self.x + rng.uniform(-1.5, 1.5), self.y + rng.uniform(-1.5, 1.5))
                    if self.mode == "spot"
                    else self._random_cell()
                )
                self.target = (
                    min(max(self.target[0], 0.0), p.room_width - 1.0),
                    min(max(self.target[1], 0.0), p.room_height - 1.0),
                )
            if self.battery <= 0:
                self.battery = 0.0
                self._fail("battery_depleted", events)
            elif self.battery < p.low_battery_pct:
                if not self.low_battery_sent:
                    self.low_battery_sent = True
                    events.append(ModelEvent("low_battery", {"battery": round(self.battery, 1)}))
                self._return("low_battery", events)
            elif self.bin_level >= _FULL:
                events.append(ModelEvent("bin_full", {}))
                self._return("bin_full", events)
            elif self.run_left_s <= 0:
                events.append(
                    ModelEvent("cleaning_finished", {"cleaning_time_s": round(self.session_s)})
                )
                self._return("finished", events)
            elif rng.random() < error_odds:
                self._fail(rng.choice(_ERRORS), events)
            elif rng.random() < stuck_odds:
                self.state = RobotState.STUCK
                self.stuck_s = 0.0
                events.append(ModelEvent("stuck", {"x": round(self.x, 1), "y": round(self.y, 1)}))
        elif state is RobotState.RETURNING:
            self.battery -= p.battery_drain_per_min * minutes
            if self._move(s):
                self.state = RobotState.CHARGING
                self.mode = None
                events.append(ModelEvent("docked", {"battery": round(self.battery, 1)}))
                if self.bin_level > 0:
                    self.bin_level = 0.0
                    events.append(ModelEvent("bin_emptied", {}))
            elif self.battery <= 0:
                self.battery = 0.0
                self._fail("battery_depleted", events)
        elif state is RobotState.STUCK:
            self.battery = max(0.0, self.battery - 0.2 * p.battery_drain_per_min * minutes)
            self.stuck_s += s
            if self.stuck_s >= p.stuck_timeout_s:
                self._fail("stuck", events)
            elif rng.random() < unstuck_odds:
                self.state = RobotState.CLEANING
                events.append(ModelEvent("unstuck", {"after_s": round(self.stuck_s)}))
        elif state in (RobotState.DOCKED, RobotState.CHARGING):
            if self.battery < _FULL:
                self.state = RobotState.CHARGING
                self.battery = min(_FULL, self.battery + p.charge_per_min * minutes)
                if self.battery >= p.low_battery_pct:
                    self.low_battery_sent = False
            if self.battery >= _FULL and self.state is RobotState.CHARGING:
                self.state = RobotState.DOCKED
                events.append(ModelEvent("charged", {}))
            if rng.random() < start_odds and self._can_start() is None:
                self._start("auto", events)
        elif state is RobotState.IDLE:
            self.battery = max(0.0, self.battery - 0.05 * p.battery_drain_per_min * minutes)
            if self.battery < p.low_battery_pct:
                self._return("low_battery", events)
        # ERROR: nothing happens until ``stop`` clears it.

    # -- schedule --------------------------------------------------------------------------

    def _schedule_due(self, t0: float, t1: float) -> bool:
        """Whether a scheduled start time lies in ``(t0, t1]``."""
        offset = self.p.utc_offset_h * 3600
        start = dt.datetime.fromtimestamp(t0 + offset, tz=dt.UTC)
        day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
        for k in range(int((t1 - t0) // 86400) + 2):
            day = day0 + dt.timedelta(days=k)
            name = _DAYS[day.weekday()]
            for entry in self.schedule:
                if name not in entry["days"]:
                    continue
                hh, mm = entry["time"].split(":")
                at = (day + dt.timedelta(hours=int(hh), minutes=int(mm))).timestamp() - offset
                if t0 < at <= t1:
                    return True
        return False

    def _scheduled_start(self, events: list[ModelEvent]) -> None:
        if self.state in (RobotState.DOCKED, RobotState.CHARGING, RobotState.IDLE):
            reason = self._can_start()
            if reason is None:
                self._start("scheduled", events)
            else:
                events.append(ModelEvent("schedule_skipped", {"reason": reason}))

    # -- outputs ---------------------------------------------------------------------------

    def telemetry(self) -> dict[str, Any]:
        """State, battery, position, bin and cleaning time."""
        state = self.state
        if state is RobotState.DOCKED or state is RobotState.ERROR:
            # Nothing changes tick after tick in these states: reuse the last reading when
            # every input is the same (a new dict each time: callers may change it).
            key = (
                state,
                self.mode,
                self.battery,
                self.x,
                self.y,
                self.bin_level,
                self.session_s,
                self.error,
            )
            if key == self._reading_key:
                return dict(self._reading)
            reading = self._telemetry()
            self._reading_key = key
            self._reading = dict(reading)
            return reading
        return self._telemetry()

    def _telemetry(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "mode": self.mode,
            "battery": round(self.battery, 1),
            "x": round(self.x, 2),
            "y": round(self.y, 2),
            "bin_level": round(self.bin_level, 1),
            "bin_full": self.bin_level >= _FULL,
            "cleaning_time_s": round(self.session_s),
            "area_m2": round(self.session_s * self.p.speed_cells_per_s * self.p.cell_m2, 1),
            "error": self.error,
        }

    def reported_state(self) -> dict[str, Any]:
        """Coarse state for the shadow: battery in 10 % steps, so reports stay infrequent."""
        out: dict[str, Any] = {
            "state": str(self.state),
            "battery": int(self.battery // 10 * 10),
            "bin_full": self.bin_level >= _FULL,
            "error": self.error,
            "firmware_version": self.p.firmware_version,
            "schedule": self.schedule,
        }
        if self.schedule_error is not None:
            out["schedule_error"] = self.schedule_error
        return out

    def apply_desired(self, desired: Mapping[str, Any]) -> None:
        """Accept a valid ``schedule``; remember why an invalid one was refused."""
        if "schedule" not in desired:
            return
        value = desired["schedule"]
        if value is None:
            self.schedule, self.schedule_error = [], None
            return
        try:
            self.schedule = parse_schedule(value)
            self.schedule_error = None
        except ValueError as exc:
            self.schedule_error = str(exc)

    def handle_command(self, name: str, args: Mapping[str, Any]) -> CommandResult:
        """``start``, ``stop``, ``dock`` and ``spot_clean``; anything else is rejected."""
        events: list[ModelEvent] = []
        state = self.state
        if name == "start":
            if state is RobotState.CLEANING:
                return CommandResult.rejected("already cleaning")
            reason = self._can_start()
            if reason is not None:
                return CommandResult.rejected(reason)
            self._start("auto", events)
        elif name == "spot_clean":
            reason = self._can_start()
            if reason is not None:
                return CommandResult.rejected(reason)
            duration = args.get("duration_s")
            self._start("spot", events)
            if isinstance(duration, int | float) and 0 < duration <= 3600:  # noqa: PLR2004
                self.run_left_s = float(duration)
        elif name == "stop":
            if state in (RobotState.DOCKED, RobotState.CHARGING, RobotState.IDLE):
                return CommandResult.rejected(f"nothing to stop: robot is {state}")
            self.error = None
            self.mode = None
            at_dock = self.x == 0.0 and self.y == 0.0
            self.state = RobotState.CHARGING if at_dock else RobotState.IDLE
        elif name == "dock":
            if state in (RobotState.DOCKED, RobotState.CHARGING, RobotState.RETURNING):
                return CommandResult.rejected(f"already {state}")
            if state in (RobotState.STUCK, RobotState.ERROR):
                return CommandResult.rejected(f"robot is {state}; send stop first")
            self._return("command", events)
        else:
            return CommandResult.rejected(
                f"unknown command {name!r}; supported: {', '.join(self.commands)}"
            )
        return CommandResult.ok({"state": str(self.state)})

    # -- operator side ---------------------------------------------------------------------

    @classmethod
    def sample_command(cls, rng: Any) -> tuple[str, dict[str, Any]]:
        """Mostly valid commands, and now and then one the robot does not know."""
        roll = rng.random()
        if roll < 0.35:  # noqa: PLR2004
            return "start", {}
        if roll < 0.55:  # noqa: PLR2004
            return "dock", {}
        if roll < 0.75:  # noqa: PLR2004
            return "spot_clean", {"duration_s": rng.choice((60, 120, 300))}
        if roll < 0.95:  # noqa: PLR2004
            return "stop", {}
        return "self_destruct", {}

    @classmethod
    def sample_desired(cls, rng: Any) -> dict[str, Any]:
        """A new weekly schedule."""
        days = sorted(rng.sample(_DAYS, rng.randint(1, 5)), key=_DAYS.index)
        time = f"{rng.randint(6, 20):02d}:{rng.choice((0, 15, 30, 45)):02d}"
        return {"schedule": [{"days": days, "time": time}]}
