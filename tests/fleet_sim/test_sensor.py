"""The environment sensor model: daily cycle, drift and faults."""

from __future__ import annotations

import statistics
from typing import Any

from fleet_sim import EnvironmentSensor
from tests.fleet_sim._helpers import make_model

MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC, a Tuesday
QUIET = {"stuck_per_day": 0.0, "dropout_per_day": 0.0, "spike_probability": 0.0}


def readings(
    sensor: EnvironmentSensor, hours: float, every_s: float = 300.0
) -> list[dict[str, Any]]:
    out = []
    t = sensor.now
    for _ in range(int(hours * 3600 / every_s)):
        t += every_s
        sensor.advance(t)
        r = sensor.telemetry()
        if r is not None:
            out.append({**r, "hour": ((t % 86400) / 3600)})
    return out


def test_seeded() -> None:
    a = make_model(EnvironmentSensor, "s-1", seed=3, start=MIDNIGHT)
    b = make_model(EnvironmentSensor, "s-1", seed=3, start=MIDNIGHT)
    assert readings(a, 24) == readings(b, 24)


def test_daily_cycle_of_temperature_and_co2() -> None:
    s = make_model(EnvironmentSensor, start=MIDNIGHT, params=QUIET)
    day = readings(s, 24)
    afternoon = [r["temperature"] for r in day if 14 <= r["hour"] <= 16]
    night = [r["temperature"] for r in day if 2 <= r["hour"] <= 4]
    assert statistics.mean(afternoon) > statistics.mean(night) + 2.0
    office = [r["co2"] for r in day if 12 <= r["hour"] <= 14]
    early = [r["co2"] for r in day if 3 <= r["hour"] <= 5]
    assert statistics.mean(office) > statistics.mean(early) + 300
    for r in day:
        assert 0 <= r["humidity"] <= 100
        assert 900 < r["pressure"] < 1100


def test_slow_drift() -> None:
    s = make_model(EnvironmentSensor, start=MIDNIGHT, params={**QUIET, "drift_c_per_day": 1.0})
    s.advance(MIDNIGHT + 30 * 86400)
    assert abs(s.drift) > 0.05
    result = s.handle_command("calibrate", {})
    assert result.accepted
    assert s.drift == 0.0
    assert not s.handle_command("reboot", {}).accepted


def test_stuck_value_fault_repeats_the_reading() -> None:
    s = make_model(
        EnvironmentSensor,
        start=MIDNIGHT,
        params={**QUIET, "stuck_per_day": 100_000.0, "label_faults": True},
    )
    s.advance(MIDNIGHT + 60)
    first = s.telemetry()
    assert s.fault == "stuck"
    s.advance(MIDNIGHT + 120)
    second = s.telemetry()
    assert first is not None
    assert second is not None
    assert second["fault"] == "stuck"
    assert {k: v for k, v in second.items() if k != "fault"} == {
        k: v for k, v in first.items() if k != "fault"
    }


def test_spikes() -> None:
    s = make_model(
        EnvironmentSensor,
        start=MIDNIGHT,
        params={**QUIET, "spike_probability": 1.0, "label_faults": True},
    )
    s.advance(MIDNIGHT + 60)
    r = s.telemetry()
    assert r is not None
    assert r["fault"] == "spike"
    normal = make_model(EnvironmentSensor, start=MIDNIGHT, params=QUIET)
    normal.advance(MIDNIGHT + 60)
    base = normal.telemetry()
    assert base is not None
    assert max(abs(r[k] - base[k]) for k in ("temperature", "humidity", "co2", "noise")) > 20


def test_dropouts_skip_ticks() -> None:
    s = make_model(
        EnvironmentSensor,
        start=MIDNIGHT,
        params={**QUIET, "dropout_per_day": 100_000.0, "dropout_minutes": [5, 5]},
    )
    s.advance(MIDNIGHT + 10)
    assert s.telemetry() is None
    s.advance(MIDNIGHT + 200)
    assert s.telemetry() is None
    s.advance(MIDNIGHT + 400)  # the 5-minute dropout is over (a new one may start later)
    assert s.fault in (None, "dropout")


def test_sampling_interval_through_the_shadow() -> None:
    s = make_model(EnvironmentSensor, interval=60.0)
    assert s.telemetry_interval_s == 60.0
    s.apply_desired({"sampling_interval_s": 10})
    assert s.telemetry_interval_s == 10.0
    assert s.reported_state()["sampling_interval_s"] == 10.0
    for bad in (0, 5000, "fast", True, None):
        s.apply_desired({"sampling_interval_s": bad})
        assert s.telemetry_interval_s == 10.0
