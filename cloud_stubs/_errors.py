"""Exceptions of the local IoT Core stub.

::

    CloudStubError
     ├── StateDirError        the state directory is missing, unreadable or inconsistent
     ├── RegistryError        registry operation refused (unknown thing/certificate, bad name, ...)
     │    └── NotFoundError
     └── BrokerError          the broker could not be started or died
"""

from __future__ import annotations

__all__ = ["BrokerError", "CloudStubError", "NotFoundError", "RegistryError", "StateDirError"]


class CloudStubError(Exception):
    """Base class of every error raised by ``cloud_stubs``."""


class StateDirError(CloudStubError):
    """The state directory cannot be used."""


class RegistryError(CloudStubError):
    """A registry operation was refused."""


class NotFoundError(RegistryError):
    """The thing, certificate or group does not exist."""


class BrokerError(CloudStubError):
    """The broker could not be started, or stopped unexpectedly."""
