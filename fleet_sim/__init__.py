"""``fleet_sim``: an asyncio simulator of thousands of AWS IoT Core devices.

Every virtual device runs real ``device_sdk`` code (its own MQTT connection and certificate, the
durable outbox, shadow and command traffic) driven by a seeded device model. Run a scenario
from Python::

    import asyncio
    from fleet_sim import SimConfig, load_scenario, run

    report = asyncio.run(run(SimConfig(load_scenario("examples/scenarios/home_robots.yaml"))))
    print(report["summary"]["messages"])

or with the CLI: ``fleet-sim run SCENARIO``, ``fleet-sim demo``, ``fleet-sim validate SCENARIO``.
Custom device models subclass :class:`DeviceModel` and register under the entry-point group
``fleet_sim.models``.
"""

from fleet_sim._clock import Scheduler, SimClock
from fleet_sim._errors import FleetSimError, Issue, ReportError, ScenarioError, TargetError
from fleet_sim._live import LiveState, Observer
from fleet_sim._model import (
    ENTRY_POINT_GROUP,
    CommandResult,
    DeviceModel,
    ModelContext,
    ModelEvent,
    NoParams,
    available_models,
    load_model,
)
from fleet_sim._plan import DeviceSpec, Shard, device_rng, iter_devices, plan_shard
from fleet_sim._report import load_report, merge_reports, summarize, write_report
from fleet_sim._robot import RobotParams, RobotState, RobotVacuum
from fleet_sim._runner import SimConfig, run
from fleet_sim._scenario import (
    CommandSpec,
    GroupSpec,
    OutboxSpec,
    PayloadSpec,
    RampSpec,
    Scenario,
    ShadowSpec,
    TargetSpec,
    TelemetrySpec,
    load_scenario,
    parse_duration,
    parse_scenario,
)
from fleet_sim._sensor import EnvironmentSensor, SensorParams
from fleet_sim._sink import SequenceTracker

__all__ = [
    "ENTRY_POINT_GROUP",
    "CommandResult",
    "CommandSpec",
    "DeviceModel",
    "DeviceSpec",
    "EnvironmentSensor",
    "FleetSimError",
    "GroupSpec",
    "Issue",
    "LiveState",
    "ModelContext",
    "ModelEvent",
    "NoParams",
    "Observer",
    "OutboxSpec",
    "PayloadSpec",
    "RampSpec",
    "ReportError",
    "RobotParams",
    "RobotState",
    "RobotVacuum",
    "Scenario",
    "ScenarioError",
    "Scheduler",
    "SensorParams",
    "SequenceTracker",
    "ShadowSpec",
    "Shard",
    "SimClock",
    "SimConfig",
    "TargetError",
    "TargetSpec",
    "TelemetrySpec",
    "available_models",
    "device_rng",
    "iter_devices",
    "load_model",
    "load_report",
    "load_scenario",
    "merge_reports",
    "parse_duration",
    "parse_scenario",
    "plan_shard",
    "run",
    "summarize",
    "write_report",
]
