"""The per-tick fast paths of the models and the payload encoder give exactly what the plain
formulas gave: the same readings, events and random draws, and the same JSON bytes."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fleet_sim import EnvironmentSensor, ModelContext, PayloadSpec, RobotVacuum, device_rng
from fleet_sim._model import ModelEvent
from fleet_sim._payload import PayloadBuilder, encode_event
from fleet_sim._robot import _ERRORS, _FULL, _MAX_STEP_S, RobotState
from fleet_sim._sensor import _DAY_S, _SPIKES

EXAMPLE = Path(__file__).parents[2] / "examples" / "scenarios" / "custom_model.py"
_reference_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _chance(draw: float, rate_per_s: float, seconds: float) -> bool:
    return rate_per_s > 0 and draw < -math.expm1(-rate_per_s * seconds)


class ReferenceSensor(EnvironmentSensor):
    """The sensor's original per-tick code (rng.gauss, no folded constants)."""

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
        if not 8.0 < hour < 19.0:
            return 0.0
        bump = math.sin(math.pi * (hour - 8.0) / 11.0)
        return bump * (0.15 if weekday >= 5 else 1.0)

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


class ReferenceRobot(RobotVacuum):
    """The robot's original per-tick code."""

    def advance(self, now: float) -> list[ModelEvent]:
        """Integrate in steps of at most 5 simulated seconds."""
        events: list[ModelEvent] = []
        while self.now < now:
            step = min(_MAX_STEP_S, now - self.now)
            if self.schedule and self._schedule_due(self.now, self.now + step):
                self._scheduled_start(events)
            self.now += step
            self._step(step, events)
        return events

    def _step(self, s: float, events: list[ModelEvent]) -> None:
        p, rng, state = self.p, self.rng, self.state
        minutes = s / 60.0
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
            elif _chance(rng.random(), p.error_per_hour / 3600, s):
                self._fail(rng.choice(_ERRORS), events)
            elif _chance(rng.random(), p.stuck_per_hour / 3600, s):
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
            elif _chance(rng.random(), p.unstuck_per_min / 60, s):
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
            if _chance(rng.random(), p.auto_start_per_hour / 3600, s) and self._can_start() is None:
                self._start("auto", events)
        elif state is RobotState.IDLE:
            self.battery = max(0.0, self.battery - 0.05 * p.battery_drain_per_min * minutes)
            if self.battery < p.low_battery_pct:
                self._return("low_battery", events)
        # ERROR: nothing happens until ``stop`` clears it.


# -- models ------------------------------------------------------------------------------


def _pair(fast: type[Any], ref: type[Any], trial: int, params: dict[str, Any]) -> tuple[Any, Any]:
    start = 1.6e9 + trial * 7_777.7
    made = []
    for cls in (fast, ref):
        p = cls.Params.model_validate(params)
        ctx = ModelContext(f"d-{trial}", "g", 1, device_rng(trial, f"d-{trial}"), p, start, 1.0)
        made.append(cls(ctx))
    return made[0], made[1]


def _same(a: Any, b: Any) -> None:
    assert a == b
    assert repr(a) == repr(b)  # also tells -0.0 from 0.0


SENSOR_PARAMS: list[dict[str, Any]] = [
    {},
    {"stuck_per_day": 3000.0, "dropout_per_day": 3000.0, "spike_probability": 0.2},
    {"label_faults": True, "stuck_per_day": 500.0, "spike_probability": 0.05},
    {"noise_sigma": 0.0, "utc_offset_h": 5.5, "stuck_per_day": 0.0, "dropout_per_day": 0.0},
    {"humidity_pct": 99.0, "humidity_daily_amplitude": 20.0, "noise_sigma": 3.0},
    {"humidity_pct": 0.0, "utc_offset_h": -9.0, "drift_c_per_day": 2.0},
]
STEPS = (1.0, 1.0, 1.0, 1.0, 5.0, 0.0, -3.0, 0.37, 60.0, 3600.0)


@pytest.mark.parametrize("params", SENSOR_PARAMS)
def test_sensor_matches_the_reference(params: dict[str, Any]) -> None:
    steps = random.Random(7)
    for trial in range(8):
        fast, ref = _pair(EnvironmentSensor, ReferenceSensor, trial, params)
        t = fast.now
        for i in range(1_500):
            t += steps.choice(STEPS)
            _same(fast.advance(t), ref.advance(t))
            _same(fast.telemetry(), ref.telemetry())
            _same((fast.fault, fast.pressure, fast.drift), (ref.fault, ref.pressure, ref.drift))
            if i % 500 == 0:
                _same(fast.handle_command("calibrate", {}), ref.handle_command("calibrate", {}))
        assert fast.rng.getstate() == ref.rng.getstate()


ROBOT_PARAMS: list[dict[str, Any]] = [
    {},
    {"stuck_per_hour": 30.0, "error_per_hour": 5.0, "auto_start_per_hour": 20.0},
    {"unstuck_per_min": 2.0, "stuck_per_hour": 60.0, "bin_fill_per_min": 20.0},
    {"stuck_per_hour": 0.0, "error_per_hour": 0.0, "auto_start_per_hour": 0.0, "start_cleaning": 1},
    {"battery_drain_per_min": 5.0, "unstuck_per_min": 0.0, "utc_offset_h": 3.0},
]


@pytest.mark.parametrize("params", ROBOT_PARAMS)
def test_robot_matches_the_reference(params: dict[str, Any]) -> None:
    rnd = random.Random(11)
    for trial in range(8):
        fast, ref = _pair(RobotVacuum, ReferenceRobot, trial, params)
        t = fast.now
        for i in range(1_500):
            t += rnd.choice((*STEPS[:6], 7.3, 600.0))
            if i % 97 == 0:
                name, args = RobotVacuum.sample_command(rnd)
                _same(fast.handle_command(name, args), ref.handle_command(name, args))
            if i % 301 == 0:
                desired = RobotVacuum.sample_desired(rnd)
                fast.apply_desired(desired)
                ref.apply_desired(desired)
            _same(fast.advance(t), ref.advance(t))
            _same(fast.telemetry(), ref.telemetry())
            _same(fast.reported_state(), ref.reported_state())
        assert fast.rng.getstate() == ref.rng.getstate()


# -- payloads ----------------------------------------------------------------------------


def reference_encode(
    builder: PayloadBuilder, telemetry: dict[str, Any], seq: Any, ts: Any
) -> bytes:
    """The original ``PayloadBuilder.encode``: the fields, then the tracking fields set on them."""
    body = builder.fields(telemetry)
    body["device_id"] = builder._context["thing"]
    body["seq"] = seq
    body["ts"] = ts
    if builder._run is not None:
        body["run"] = builder._run
    data = _reference_encode(body)
    if builder._pad and len(data) < builder._pad:
        body["pad"] = "x" * max(0, builder._pad - len(data) - 9)
        data = _reference_encode(body)
    return data.encode()


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 2 else 9)
    if kind == 0:
        return rng.uniform(-1e6, 1e6)
    if kind == 1:
        return round(rng.gauss(20.0, 5.0), rng.randrange(4))
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 5e-324])
    if kind == 3:
        return rng.randrange(-(10**20), 10**20)
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.choice(["", "a", "é ü", "\u2603", 'q"uote', "back\\slash", "nl\n", "${x}"])
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind in (7, 8):
        return rng.randrange(1000)
    if kind == 9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return _fields(rng, depth + 1)


KEYS = ["temperature", "humidity", "co2", "state", "x", "é", "", "value", "nested", 'k"q']
RESERVED = ["device_id", "seq", "ts", "run", "pad"]


def _fields(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    keys = KEYS + (RESERVED if rng.random() < 0.15 else [])
    return {rng.choice(keys): _value(rng, depth) for _ in range(rng.randrange(7))}


def _template(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(8 if depth < 2 else 5)
    if roll == 0:
        return "${" + rng.choice([*KEYS[:5], "thing", "group", "index", "missing"]) + "}"
    if roll == 1:
        return "dev ${thing}/${temperature} ${nope}"
    if roll in (2, 3, 4):
        return _value(rng, 2)
    if roll == 5:
        return [_template(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS + RESERVED): _template(rng, depth + 1) for _ in range(4)}


def _builders(rng: random.Random) -> list[PayloadBuilder]:
    out = []
    for run in (None, "run-1", 'r"x\u00e9'):
        for thing in ("sensor-00001", 'we"ird\u2603'):
            kw: dict[str, Any] = {"thing": thing, "group": "g", "index": 3, "run_id": run}
            out.append(PayloadBuilder(PayloadSpec(), **kw))
            out.append(PayloadBuilder(PayloadSpec(pad_to_bytes=rng.randrange(50, 400)), **kw))
            out.append(
                PayloadBuilder(
                    PayloadSpec(
                        template={k: _template(rng, 1) for k in rng.sample(KEYS + RESERVED, 5)}
                    ),
                    **kw,
                )
            )
            out.append(PayloadBuilder(PayloadSpec(template={"t": "${temperature}"}), **kw))
            gen = PayloadSpec(generator=f"{EXAMPLE}:tracker_payload")
            out.append(PayloadBuilder(gen, **kw))
    return out


def test_payload_bytes_match_the_reference() -> None:
    rng = random.Random(3)
    builders = _builders(rng)
    checked = 0
    for i in range(30_000):
        b = builders[i % len(builders)]
        if b._generator is not None:
            fields: dict[str, Any] = {"temperature": rng.uniform(-40, 60)}
            if rng.random() < 0.5:
                fields.update(_fields(rng))
        else:
            fields = _fields(rng)
        seq: Any = rng.choice([1, i, 10**12, True, 2.5]) if i % 50 == 0 else i
        ts: Any = 1_700_000_000_000 + i if i % 70 else rng.choice([0, -1, 1.5])
        try:
            expected = reference_encode(b, dict(fields), seq, ts)
        except (KeyError, TypeError, ValueError) as exc:  # e.g. a generator needing a field
            with pytest.raises(type(exc)):
                b.encode(dict(fields), seq, ts)
            continue
        assert b.encode(dict(fields), seq, ts) == expected, (fields, seq, ts)
        checked += 1
    assert checked > 20_000


def test_encode_does_not_change_the_model_reading() -> None:
    b = PayloadBuilder(PayloadSpec(), thing="t", group="g", index=1, run_id="r")
    reading = {"a": 1.5}
    assert b.encode(reading, 1, 2) == b'{"a":1.5,"device_id":"t","seq":1,"ts":2,"run":"r"}'
    assert b.encode({}, 1, 2) == b'{"device_id":"t","seq":1,"ts":2,"run":"r"}'


def test_event_bytes_match_the_reference() -> None:
    rng = random.Random(5)
    for i in range(3_000):
        data: Mapping[str, Any] = _fields(rng)
        run = None if i % 2 else "run-9"
        body = {"event": "e", **data, "device_id": "d", "seq": i, "ts": 7}
        if run is not None:
            body["run"] = run
        assert encode_event("d", "e", data, i, 7, run) == _reference_encode(body).encode()


def test_reference_constants_used() -> None:
    # keep the imports that only the reference code uses from looking unused
    assert (_DAY_S, _SPIKES, _ERRORS, _FULL, _MAX_STEP_S, RobotState, ModelEvent) is not None
