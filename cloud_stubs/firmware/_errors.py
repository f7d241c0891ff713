"""Exceptions of the firmware store, URL signer and file server.

::

    CloudStubError
     └── FirmwareError            firmware upload/lookup refused (bad version, duplicate, ...)
          └── FirmwareNotFoundError
"""

from __future__ import annotations

from cloud_stubs._errors import CloudStubError

__all__ = ["FirmwareError", "FirmwareNotFoundError"]


class FirmwareError(CloudStubError):
    """A firmware store operation was refused."""


class FirmwareNotFoundError(FirmwareError):
    """No firmware with that id."""
