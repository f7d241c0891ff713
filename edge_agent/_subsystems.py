"""The optional subsystems a session starts: settings shadow, commands, jobs.

Each is built only when its ``device_sdk`` module is installed and the configuration turns
it on.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent._agent import SubsystemFactory

__all__ = ["default_subsystems"]


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def default_subsystems() -> list[SubsystemFactory]:
    """Factories of the built-in subsystems available in this installation."""
    factories: list[SubsystemFactory] = []
    if _available("device_sdk.shadow"):
        from edge_agent._shadow import settings_shadow_subsystem  # noqa: PLC0415

        factories.append(settings_shadow_subsystem)
    if _available("device_sdk.commands"):
        from edge_agent._commands import commands_subsystem  # noqa: PLC0415

        factories.append(commands_subsystem)
    if _available("device_sdk.jobs"):
        from edge_agent._jobs import jobs_subsystem  # noqa: PLC0415

        factories.append(jobs_subsystem)
    return factories
