"""Device models: pure, seeded state machines that decide what a virtual device does.

A model never performs I/O and never awaits. The engine calls :meth:`DeviceModel.advance` with
the simulated time before each telemetry tick, publishes what :meth:`DeviceModel.telemetry`
returns, reports :meth:`DeviceModel.reported_state` to the device's shadow when it changes,
feeds desired-state changes to :meth:`DeviceModel.apply_desired` and commands to
:meth:`DeviceModel.handle_command`. All randomness comes from ``context.rng``, which is seeded
from the scenario seed and the device name, so a device behaves the same in any shard and in
any run with the same seed.

Custom models are classes registered under the entry-point group ``fleet_sim.models``::

    [project.entry-points."fleet_sim.models"]
    beehive = "mypkg.models:BeehiveModel"

and used in a scenario as ``model: beehive`` (see ``examples/scenarios/custom_model.py``).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.metadata
import logging
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

__all__ = [
    "ENTRY_POINT_GROUP",
    "CommandResult",
    "DeviceModel",
    "ModelContext",
    "ModelEvent",
    "NoParams",
    "available_models",
    "load_model",
]

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fleet_sim.models"


class NoParams(pydantic.BaseModel):
    """Parameters of a model that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelContext:
    """What a model instance is given when it is created.

    Attributes:
        device_id: The thing name.
        group: The scenario group it belongs to.
        index: 1-based index within the group.
        rng: The device's own random generator (seeded from scenario seed + device id).
        params: The group's ``params``, validated by the model's ``Params`` class.
        start_time: Simulated time (seconds since the epoch) at creation.
        telemetry_interval_s: The group's telemetry interval (simulated seconds).
    """

    device_id: str
    group: str
    index: int
    rng: random.Random
    params: pydantic.BaseModel
    start_time: float
    telemetry_interval_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class ModelEvent:
    """Something notable that happened (published on ``dt/<thing>/events``).

    Attributes:
        name: Event name, e.g. ``low_battery``.
        data: Extra JSON-ready fields.
    """

    name: str
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    """A model's answer to a command.

    Build it with :meth:`ok` or :meth:`rejected`.
    """

    accepted: bool
    result: Mapping[str, Any] | None = None
    reason: str | None = None

    @classmethod
    def ok(cls, result: Mapping[str, Any] | None = None) -> CommandResult:
        """The command was carried out."""
        return cls(accepted=True, result=dict(result or {}), reason=None)

    @classmethod
    def rejected(cls, reason: str) -> CommandResult:
        """The command was refused, with a reason the caller can show."""
        return cls(accepted=False, result=None, reason=reason)


class DeviceModel(abc.ABC):
    """Base class of device models (see the module documentation).

    Subclasses set :attr:`kind` (the name used in scenarios), optionally :attr:`Params`
    (a pydantic model validating the group's ``params``) and implement :meth:`advance` and
    :meth:`telemetry`. Everything else has a sensible default.
    """

    kind: ClassVar[str] = ""
    """Name used as ``model:`` in scenarios."""

    Params: ClassVar[type[pydantic.BaseModel]] = NoParams
    """Validates the group's ``params`` mapping."""

    commands: ClassVar[tuple[str, ...]] = ()
    """Command names the model understands (others are rejected)."""

    device_type: ClassVar[str] = ""
    """Device type of OTA job documents (default: :attr:`kind` with ``-`` for ``_``)."""

    @classmethod
    def ota_device_type(cls) -> str:
        """The device type OTA documents must name (:attr:`device_type` or from :attr:`kind`)."""
        return cls.device_type or cls.kind.replace("_", "-") or cls.__name__

    def __init__(self, context: ModelContext) -> None:
        """Create the model; keep ``context.rng`` for every random decision."""
        self.context = context
        self.rng = context.rng
        self.now = context.start_time

    @abc.abstractmethod
    def advance(self, now: float) -> list[ModelEvent]:
        """Move the simulated device forward to ``now`` (simulated epoch seconds).

        Returns:
            The events that happened meanwhile, oldest first.
        """

    @abc.abstractmethod
    def telemetry(self) -> dict[str, Any] | None:
        """The telemetry fields to publish now, or ``None`` to skip this tick (a dropout)."""

    def reported_state(self) -> dict[str, Any]:
        """The state the device reports to its shadow (compared to decide when to report)."""
        return {}

    def apply_desired(self, desired: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """React to a desired-state change (the shadow delta); invalid fields are ignored."""

    def handle_command(self, name: str, args: Mapping[str, Any]) -> CommandResult:  # noqa: ARG002
        """Carry out a command; the default rejects everything."""
        return CommandResult.rejected(f"unknown command {name!r}")

    @property
    def telemetry_interval_s(self) -> float:
        """Seconds (simulated) between telemetry ticks; may change through the shadow."""
        return self.context.telemetry_interval_s

    # -- cloud-side traffic generation (used by the operator, not by the device) ---------------

    @classmethod
    def sample_command(cls, rng: random.Random) -> tuple[str, dict[str, Any]] | None:  # noqa: ARG003
        """A command an operator might send to such a device (``None``: no commands)."""
        return None

    @classmethod
    def sample_desired(cls, rng: random.Random) -> dict[str, Any] | None:  # noqa: ARG003
        """A desired-state change an operator might make (``None``: none)."""
        return None


def _builtin_models() -> dict[str, type[DeviceModel]]:
    from fleet_sim._robot import RobotVacuum  # noqa: PLC0415 - avoid an import cycle
    from fleet_sim._sensor import EnvironmentSensor  # noqa: PLC0415

    return {RobotVacuum.kind: RobotVacuum, EnvironmentSensor.kind: EnvironmentSensor}


def available_models() -> dict[str, str]:
    """Model name -> where it comes from (``builtin`` or the entry point's value)."""
    out = dict.fromkeys(_builtin_models(), "builtin")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def _checked(obj: Any, where: str) -> type[DeviceModel]:
    if not (isinstance(obj, type) and issubclass(obj, DeviceModel)):
        raise TypeError(f"{where} is not a fleet_sim.DeviceModel subclass")
    return obj


def load_model(name: str) -> type[DeviceModel]:
    """The model class called ``name``.

    ``name`` is a built-in model, a name registered in the ``fleet_sim.models`` entry-point
    group, or a direct reference ``"package.module:Class"`` / ``"path/to/file.py:Class"``.

    Raises:
        LookupError: No such model; the message lists the available ones.
        TypeError: The entry point or reference is not a :class:`DeviceModel` subclass.
        ImportError: The entry point's module cannot be imported.
    """
    builtin = _builtin_models()
    if name in builtin:
        return builtin[name]
    if ":" in name:
        from fleet_sim._payload import import_object  # noqa: PLC0415 - avoid an import cycle

        try:
            return _checked(import_object(name), repr(name))
        except ValueError as exc:
            raise ImportError(str(exc)) from None
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _checked(ep.load(), f"entry point {ep.value!r}")
    known = ", ".join(sorted(available_models()))
    raise LookupError(f"unknown model {name!r}; available: {known}")
