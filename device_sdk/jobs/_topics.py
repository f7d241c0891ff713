"""Jobs device-API topic builders (protocol spec §3.1), in one place."""

from __future__ import annotations

import dataclasses
import re
from typing import Final

__all__ = ["NEXT_JOB", "JobsTopics", "jobs_topics", "validate_job_id"]

NEXT_JOB: Final = "$next"
"""The job id ``describe`` accepts for "the next pending execution"."""

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def validate_job_id(job_id: str, *, allow_next: bool = False) -> str:
    """Return ``job_id`` if valid (1-64 of ``[a-zA-Z0-9_-]``, or ``$next`` when allowed).

    Raises:
        ValueError: Not a job id.
    """
    if allow_next and job_id == NEXT_JOB:
        return job_id
    if _JOB_ID.fullmatch(job_id) is None:
        raise ValueError(f"invalid job id {job_id!r}: 1-64 characters of [a-zA-Z0-9_-]")
    return job_id


@dataclasses.dataclass(frozen=True, slots=True)
class JobsTopics:
    """The Jobs topics of one thing."""

    thing_name: str

    def __post_init__(self) -> None:
        if _THING_NAME.fullmatch(self.thing_name) is None:
            raise ValueError(f"invalid thing name {self.thing_name!r}")

    @property
    def prefix(self) -> str:
        """``$aws/things/T/jobs``."""
        return f"$aws/things/{self.thing_name}/jobs"

    @property
    def get_pending(self) -> str:
        """GetPendingJobExecutions request topic."""
        return f"{self.prefix}/get"

    @property
    def start_next(self) -> str:
        """StartNextPendingJobExecution request topic."""
        return f"{self.prefix}/start-next"

    @property
    def notify(self) -> str:
        """JobExecutionsChanged events (the pending list changed)."""
        return f"{self.prefix}/notify"

    @property
    def notify_next(self) -> str:
        """NextJobExecutionChanged events (the head of the pending list changed)."""
        return f"{self.prefix}/notify-next"

    def describe(self, job_id: str) -> str:
        """DescribeJobExecution request topic for ``job_id`` or ``$next``."""
        return f"{self.prefix}/{validate_job_id(job_id, allow_next=True)}/get"

    def update(self, job_id: str) -> str:
        """UpdateJobExecution request topic."""
        return f"{self.prefix}/{validate_job_id(job_id)}/update"


def jobs_topics(thing_name: str) -> JobsTopics:
    """The Jobs topics of ``thing_name``.

    Raises:
        ValueError: Not a valid thing name.
    """
    return JobsTopics(thing_name)
