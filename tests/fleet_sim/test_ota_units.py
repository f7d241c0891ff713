"""fleet_sim's OTA failure selection and device types (pure logic, no broker)."""

from __future__ import annotations

import pytest

from fleet_sim import parse_scenario
from fleet_sim._model import load_model
from fleet_sim._ota import FAILURE_STEPS, failing_devices, failure_count
from fleet_sim._scenario import Scenario


def fleet(count: int, failures: str, *, seed: int = 4, extra: str = "") -> Scenario:
    return parse_scenario(f"""\
name: t
seed: {seed}
groups:
  - name: other
    model: environment_sensor
    count: 7
  - name: robots
    model: robot_vacuum
    count: {count}
    ota: {{failures: {failures}}}
{extra}""")


@pytest.mark.parametrize(
    ("fraction", "count", "expected"),
    [(0.10, 50, 5), (0.03, 50, 2), (0.05, 50, 3), (0.0, 50, 0), (1.0, 7, 7), (0.5, 1, 1)],
)
def test_failure_count_rounds_half_up(fraction: float, count: int, expected: int) -> None:
    assert failure_count(fraction, count) == expected


def test_failing_devices_are_exact_seeded_and_per_step() -> None:
    sc = fleet(50, "{health_check: 0.1, install: 0.04}")
    health = failing_devices(sc, 1, "health_check")
    assert len(health) == 5
    assert all(name.startswith("robots-") for name in health)
    assert len(failing_devices(sc, 1, "install")) == 2
    assert failing_devices(sc, 1, "download") == frozenset()
    assert failing_devices(sc, 0, "health_check") == frozenset()  # no ota block
    assert failing_devices(fleet(50, "{health_check: 0.1}"), 1, "health_check") == health
    other_seed = failing_devices(fleet(50, "{health_check: 0.1}", seed=5), 1, "health_check")
    assert other_seed != health
    # the choice depends on the names, not on the other groups or the shard layout
    more = fleet(50, "{health_check: 0.1}").model_copy()
    groups = [more.groups[1]]
    alone = more.model_copy(update={"groups": groups})
    assert failing_devices(alone, 0, "health_check") == health
    with pytest.raises(ValueError, match="unknown OTA failure step"):
        failing_devices(sc, 1, "reboot")
    assert set(FAILURE_STEPS) == {"health_check", "download", "install", "verify_boot"}


def test_model_device_types() -> None:
    assert load_model("robot_vacuum").ota_device_type() == "robot-vacuum"
    assert load_model("environment_sensor").ota_device_type() == "environment-sensor"
