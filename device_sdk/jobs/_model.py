"""Pydantic models of the Jobs wire payloads (protocol spec §3.2-§3.4), parsed once.

Timestamps are timezone-aware UTC datetimes (the service sends epoch seconds).
``job_document`` is kept as whatever JSON the service sent: a document that is not an object
must still parse, so that a runner can answer it with ``REJECTED``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel

__all__ = [
    "JobExecution",
    "JobExecutionState",
    "JobExecutionSummary",
    "JobStatus",
    "JobUpdateResult",
    "JobsChangedEvent",
    "NextJobEvent",
    "PendingJobs",
]


class JobStatus(enum.StrEnum):
    """Status of a job execution."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """Whether the execution can no longer change."""
        return self not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class JobExecution(_Wire):
    """One job execution on this thing, with its document when requested.

    Attributes:
        job_id: The job.
        thing_name: The thing (this device).
        status: Execution status.
        status_details: String map the device reported last.
        queued_at: When the execution was queued.
        started_at: When it first went IN_PROGRESS.
        last_updated_at: Last change.
        version_number: Optimistic-lock version (``expected_version`` in updates).
        execution_number: Execution number (retries get new ones).
        approximate_seconds_before_timed_out: Time left on the step/in-progress timer.
        job_document: The job document (any JSON; normally an object).
    """

    job_id: str
    thing_name: str | None = None
    status: JobStatus
    status_details: dict[str, str] = pydantic.Field(default_factory=dict)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    last_updated_at: datetime | None = None
    version_number: int
    execution_number: int | None = None
    approximate_seconds_before_timed_out: int | None = None
    job_document: Any = None


class JobExecutionSummary(_Wire):
    """An entry of the pending list (no document)."""

    job_id: str
    queued_at: datetime | None = None
    started_at: datetime | None = None
    last_updated_at: datetime | None = None
    version_number: int | None = None
    execution_number: int | None = None


class PendingJobs(_Wire):
    """GetPendingJobExecutions answer: IN_PROGRESS and QUEUED executions, oldest first."""

    in_progress_jobs: list[JobExecutionSummary] = pydantic.Field(default_factory=list)
    queued_jobs: list[JobExecutionSummary] = pydantic.Field(default_factory=list)
    timestamp: datetime | None = None
    client_token: str | None = None


class JobExecutionState(_Wire):
    """Status, details and version of an execution."""

    status: JobStatus
    status_details: dict[str, str] = pydantic.Field(default_factory=dict)
    version_number: int


class JobUpdateResult(_Wire):
    """An accepted UpdateJobExecution.

    Attributes:
        execution_state: The new state (when ``include_job_execution_state`` was set).
        job_document: The document (when ``include_job_document`` was set).
        timestamp: When the service answered.
        client_token: The request's token.
    """

    execution_state: JobExecutionState | None = None
    job_document: Any = None
    timestamp: datetime | None = None
    client_token: str | None = None


class NextJobEvent(_Wire):
    """A ``notify-next`` event: the new head of the pending list, or ``None`` when empty."""

    execution: JobExecution | None = None
    timestamp: datetime | None = None


class JobsChangedEvent(_Wire):
    """A ``notify`` event: the pending executions by status."""

    jobs: dict[JobStatus, list[JobExecutionSummary]] = pydantic.Field(default_factory=dict)
    timestamp: datetime | None = None
