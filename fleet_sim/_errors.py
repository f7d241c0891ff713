"""The simulator's exceptions.

::

    FleetSimError
     ├── ScenarioError      the scenario file is invalid (each issue names the field and the fix)
     ├── TargetError        the target cannot be used (no stub running, missing certificates, ...)
     └── ReportError        a report file cannot be read or merged
"""

from __future__ import annotations

import dataclasses

__all__ = ["FleetSimError", "Issue", "ReportError", "ScenarioError", "TargetError"]


class FleetSimError(Exception):
    """Base class of the simulator's errors."""


@dataclasses.dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a scenario.

    Attributes:
        location: Dotted field path, e.g. ``groups[1].telemetry.interval``.
        message: What is wrong.
        fix: How to fix it.
        line: 1-based line in the YAML file, when known.
    """

    location: str
    message: str
    fix: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        loc = self.location or "scenario"
        return f"{where}{loc}: {self.message} (fix: {self.fix})"


class ScenarioError(FleetSimError):
    """The scenario is invalid.

    ``str(error)`` is one line for the first issue (plus a count of the others); all issues
    are in :attr:`issues`.
    """

    def __init__(self, issues: list[Issue], *, source: str | None = None) -> None:
        if not issues:
            raise ValueError("ScenarioError needs at least one issue")
        self.issues = issues
        self.source = source
        first = str(issues[0])
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{first}{more}")


class TargetError(FleetSimError):
    """The target (local stub or AWS IoT Core endpoint) cannot be used as configured."""


class ReportError(FleetSimError):
    """A report file is unreadable, of another format version, or not mergeable."""
