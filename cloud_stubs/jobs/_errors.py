"""Exceptions raised by the control-plane functions of the Jobs engine.

Device-API handlers never raise; they answer with ``…/rejected`` messages instead.

Exception tree::

    JobsError
     ├── InvalidRequestError          (also a ValueError) bad argument / configuration
     ├── ResourceNotFoundError        no such job / job execution
     ├── ResourceAlreadyExistsError   create_job with an existing jobId
     ├── InvalidStateTransitionError  e.g. cancel IN_PROGRESS without force
     └── VersionConflictError         expected_version mismatch
"""


class JobsError(Exception):
    """Base class of the errors raised by the control-plane functions."""


class InvalidRequestError(JobsError, ValueError):
    """An argument or configuration is invalid."""


class ResourceNotFoundError(JobsError):
    """The job or job execution does not exist."""


class ResourceAlreadyExistsError(JobsError):
    """A job with this id already exists."""


class InvalidStateTransitionError(JobsError):
    """The job or execution is in a state that does not allow the operation."""


class VersionConflictError(JobsError):
    """``expected_version`` does not match the execution's ``versionNumber``."""
