"""The exception tree of ``edge_agent``.

::

    EdgeAgentError
    ├── ConfigError          the configuration file is missing or invalid (exit code 2)
    ├── AlreadyRunningError  another agent holds the state directory's lock (exit code 3)
    └── IdentityError        no usable identity and no way to provision one (exit code 4)

Errors of :mod:`device_sdk` (``DeviceSdkError`` and subclasses) pass through unchanged: an
:class:`~device_sdk.AuthorizationError` ends the agent with exit code 5 so that systemd's restart
policy, not a tight loop, decides when to try again.
"""

from __future__ import annotations

__all__ = ["AlreadyRunningError", "ConfigError", "EdgeAgentError", "IdentityError"]


class EdgeAgentError(Exception):
    """Base class of the errors ``edge_agent`` raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid.

    Attributes:
        problems: One line per problem, each naming the key, the bad value and the fix.
        path: The configuration file, when there is one.
    """

    def __init__(self, problems: list[str], *, path: str | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


class AlreadyRunningError(EdgeAgentError):
    """Another agent process holds the lock on the state directory.

    Attributes:
        pid: The other process's id, when it could be read from the lock file.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class IdentityError(EdgeAgentError):
    """The device has no certificate yet and provisioning is not configured or failed."""
