"""Exceptions of deployments.

::

    CloudStubError
     └── DeploymentError            a deployment operation was refused
          ├── DeploymentSpecError   bad batch size, threshold, targets, ...
          ├── DeploymentNotFoundError
          └── DeploymentConflictError  changed concurrently (re-read and retry)
"""

from __future__ import annotations

from cloud_stubs._errors import CloudStubError

__all__ = [
    "DeploymentConflictError",
    "DeploymentError",
    "DeploymentNotFoundError",
    "DeploymentSpecError",
]


class DeploymentError(CloudStubError):
    """A deployment operation was refused."""


class DeploymentSpecError(DeploymentError):
    """A deployment cannot be created as asked."""


class DeploymentNotFoundError(DeploymentError):
    """No deployment with that id."""


class DeploymentConflictError(DeploymentError):
    """The deployment changed since it was read."""
