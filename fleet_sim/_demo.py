"""The demo scenario: a small robot-vacuum fleet against a local IoT Core.

Simulated time runs 30 times faster than the wall clock, so within the default 30 s the robots
clean, drain their batteries, get stuck, dock and charge; the operator sends them commands and
new cleaning schedules through their shadows.
"""

from __future__ import annotations

from pathlib import Path

from fleet_sim._scenario import Scenario

__all__ = ["demo_scenario"]

_SPEED = 30.0


def demo_scenario(
    devices: int = 20,
    duration_s: float = 30.0,
    state_dir: Path = Path(".iot-state"),
    broker: str = "auto",
) -> Scenario:
    """The ``fleet-sim demo`` scenario."""
    return Scenario.model_validate(
        {
            "name": "demo-robot-fleet",
            "description": "Robot vacuums in a few homes, 30x simulated time.",
            "seed": 7,
            "duration": duration_s,
            "time_scale": _SPEED,
            "ramp_up": {"connects_per_second": 50},
            "target": {"state_dir": str(state_dir), "broker": broker},
            "groups": [
                {
                    "name": "robots",
                    "model": "robot_vacuum",
                    "count": devices,
                    "name_pattern": "demo-robot-{index:03d}",
                    "telemetry": {"interval": _SPEED, "jitter": 0.1},
                    "shadow": {
                        "report": "on_change",
                        "interval": 2 * _SPEED,
                        "desired_per_minute": max(2.0, devices / 4),
                    },
                    "commands": {"send_per_minute": max(6.0, devices / 2)},
                    "params": {"stuck_per_hour": 2.0, "auto_start_per_hour": 2.0},
                }
            ],
        }
    )
