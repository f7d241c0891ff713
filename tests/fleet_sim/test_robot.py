"""The robot vacuum model: a pure, seeded state machine."""

from __future__ import annotations

import random

from fleet_sim import RobotState, RobotVacuum
from tests.fleet_sim._helpers import make_model, run_for

DOCKED = {
    "start_cleaning": 0.0,
    "auto_start_per_hour": 0.0,
    "stuck_per_hour": 0.0,
    "error_per_hour": 0.0,
}


def state(robot: RobotVacuum) -> RobotState:
    """The robot's state, read through a call so type narrowing does not stick."""
    return robot.state


def trace(seed: int, name: str = "robot-1") -> list[tuple[object, ...]]:
    robot = make_model(RobotVacuum, name, seed=seed)
    out: list[tuple[object, ...]] = []
    for i in range(1, 400):
        robot.advance(robot.context.start_time + i * 30.0)
        t = robot.telemetry()
        out.append((t["state"], t["battery"], t["x"], t["y"], t["bin_level"]))
    return out


def test_same_seed_and_name_same_behaviour() -> None:
    assert trace(7) == trace(7)


def test_other_seed_or_name_other_behaviour() -> None:
    assert trace(7) != trace(8)
    assert trace(7, "robot-1") != trace(7, "robot-2")


def test_step_size_does_not_change_the_outcome_much() -> None:
    fine = make_model(RobotVacuum, params=DOCKED)
    coarse = make_model(RobotVacuum, params=DOCKED)
    for r in (fine, coarse):
        assert r.handle_command("start", {}).accepted
    run_for(fine, 600, step=1.0)
    run_for(coarse, 600, step=60.0)
    assert state(fine) is state(coarse) is RobotState.CLEANING
    assert abs(fine.battery - coarse.battery) < 0.01


def test_starts_docked_and_full() -> None:
    robot = make_model(RobotVacuum, params=DOCKED)
    assert state(robot) is RobotState.DOCKED
    assert robot.battery == 100.0
    assert (robot.x, robot.y) == (0.0, 0.0)


def test_cleaning_drains_battery_fills_bin_and_moves() -> None:
    robot = make_model(RobotVacuum, params=DOCKED)
    bin_before = robot.bin_level
    assert robot.handle_command("start", {}).accepted
    run_for(robot, 10 * 60)
    assert state(robot) is RobotState.CLEANING
    assert 89.0 < robot.battery < 91.0  # 1 %/min
    assert robot.bin_level > bin_before
    assert (robot.x, robot.y) != (0.0, 0.0)
    t = robot.telemetry()
    assert t["cleaning_time_s"] == 600
    assert 0 <= t["x"] <= 11
    assert 0 <= t["y"] <= 9


def test_low_battery_event_once_then_auto_dock_and_charge() -> None:
    params = {**DOCKED, "run_minutes": 500, "bin_fill_per_min": 0.0}
    robot = make_model(RobotVacuum, params=params)
    robot.handle_command("start", {})
    events = run_for(robot, 85 * 60)
    assert events.count("low_battery") == 1
    assert "returning" in events
    assert robot.state in (RobotState.RETURNING, RobotState.CHARGING, RobotState.DOCKED)
    events += run_for(robot, 10 * 60)
    assert "docked" in events
    assert state(robot) is RobotState.CHARGING
    assert (robot.x, robot.y) == (0.0, 0.0)
    run_for(robot, 60 * 60)
    assert state(robot) is RobotState.DOCKED
    assert robot.battery == 100.0


def test_bin_full_sends_it_home_where_the_base_empties_it() -> None:
    params = {**DOCKED, "bin_fill_per_min": 20.0, "run_minutes": 500}
    robot = make_model(RobotVacuum, params=params)
    robot.handle_command("start", {})
    events = run_for(robot, 6 * 60)
    assert "bin_full" in events
    assert robot.telemetry()["bin_full"] or robot.state is not RobotState.CLEANING
    events += run_for(robot, 10 * 60)
    assert "bin_emptied" in events
    assert robot.bin_level == 0.0


def test_stuck_then_error_after_timeout_and_stop_clears_it() -> None:
    params = {
        **DOCKED,
        "stuck_per_hour": 10_000.0,
        "unstuck_per_min": 0.0,
        "stuck_timeout_s": 120.0,
    }
    robot = make_model(RobotVacuum, params=params)
    robot.handle_command("start", {})
    events = run_for(robot, 10)
    assert "stuck" in events
    assert state(robot) is RobotState.STUCK
    assert not robot.handle_command("dock", {}).accepted
    events = run_for(robot, 200)
    assert state(robot) is RobotState.ERROR
    assert robot.error == "stuck"
    assert not robot.handle_command("start", {}).accepted
    assert robot.handle_command("stop", {}).accepted
    assert state(robot) is RobotState.IDLE
    assert robot.error is None


def test_commands() -> None:
    robot = make_model(RobotVacuum, params=DOCKED)
    rejected = robot.handle_command("self_destruct", {})
    assert not rejected.accepted
    assert rejected.reason is not None
    assert "start, stop, dock, spot_clean" in rejected.reason
    assert not robot.handle_command("stop", {}).accepted  # nothing to stop on the dock
    assert not robot.handle_command("dock", {}).accepted  # already docked
    ok = robot.handle_command("spot_clean", {"duration_s": 60})
    assert ok.accepted
    assert ok.result == {"state": "cleaning"}
    assert robot.mode == "spot"
    assert not robot.handle_command("start", {}).accepted  # already cleaning
    events = run_for(robot, 60)
    assert "cleaning_finished" in events
    assert state(robot) is RobotState.RETURNING
    assert robot.handle_command("start", {}).accepted  # resume from returning
    assert robot.handle_command("dock", {}).accepted
    assert state(robot) is RobotState.RETURNING


def test_start_refused_on_low_battery() -> None:
    robot = make_model(RobotVacuum, params=DOCKED)
    robot.battery = 10.0
    result = robot.handle_command("start", {})
    assert not result.accepted
    assert result.reason is not None
    assert "battery" in result.reason


def test_shadow_reports_state_firmware_and_schedule() -> None:
    robot = make_model(RobotVacuum, params={**DOCKED, "firmware_version": "9.9.9"})
    reported = robot.reported_state()
    assert reported["state"] == "docked"
    assert reported["firmware_version"] == "9.9.9"
    assert reported["schedule"] == []
    robot.apply_desired({"schedule": [{"days": ["tue", "mon"], "time": "09:30"}]})
    assert robot.reported_state()["schedule"] == [{"days": ["mon", "tue"], "time": "09:30"}]
    robot.apply_desired({"schedule": [{"time": "25:00"}]})
    assert "schedule_error" in robot.reported_state()
    assert robot.reported_state()["schedule"] == [{"days": ["mon", "tue"], "time": "09:30"}]


def test_schedule_in_desired_state_starts_cleaning() -> None:
    # The clock starts 2023-11-14 22:13:20 UTC, a Tuesday; schedule Wednesday 08:00 UTC.
    robot = make_model(RobotVacuum, params=DOCKED)
    robot.apply_desired({"schedule": {"days": ["wed"], "time": "08:00"}})
    events = run_for(robot, 9.5 * 3600, step=60.0)  # until 07:43 on Wednesday
    assert "cleaning_started" not in events
    events = run_for(robot, 1800, step=60.0)
    assert "cleaning_started" in events
    assert state(robot) is RobotState.CLEANING
    assert robot.mode == "scheduled"


def test_operator_samples_are_seeded() -> None:
    a = [RobotVacuum.sample_command(random.Random(1)) for _ in range(5)]
    b = [RobotVacuum.sample_command(random.Random(1)) for _ in range(5)]
    assert a == b
    desired = RobotVacuum.sample_desired(random.Random(3))
    robot = make_model(RobotVacuum)
    robot.apply_desired(desired)
    assert robot.schedule
