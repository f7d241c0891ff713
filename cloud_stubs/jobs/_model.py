"""Data model of the pure Jobs engine: jobs, executions, the state container, validators.

Timestamps are integer epoch seconds supplied by the caller; nothing reads the clock.
"""

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cloud_stubs.jobs._config import (
    AbortConfig,
    ExecutionStatus,
    JobStatus,
    JsonObject,
    RetryConfig,
    RolloutConfig,
    TargetSelection,
    TimeoutConfig,
)
from cloud_stubs.jobs._errors import InvalidRequestError, JobsError

MAX_JOB_DOCUMENT_BYTES: Final = 32768
"""Maximum serialized size of a job document (spec §3.2)."""

_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


def is_valid_job_id(job_id: str) -> bool:
    """Return True for a valid job id: 1-64 characters of ``[a-zA-Z0-9_-]``."""
    return _JOB_ID.fullmatch(job_id) is not None


def is_valid_thing_name(name: str) -> bool:
    """Return True for a valid thing name: 1-128 characters of ``[a-zA-Z0-9:_-]``."""
    return _THING_NAME.fullmatch(name) is not None


@dataclass(slots=True)
class Execution:
    """One job execution (one attempt of one job on one thing); mutated by the engine.

    Attributes:
        job_id: The job.
        thing_name: The thing.
        execution_number: 1 for the first attempt, +1 per retry / re-add.
        status: Current status.
        queued_at: Creation time.
        last_updated_at: Time of the last change.
        sequence: Global creation order (tie-breaker of the pending list).
        version_number: 1 when created, +1 per accepted change.
        status_details: String-to-string map set by the device (or cancel).
        started_at: First time the execution became IN_PROGRESS.
        step_deadline: Absolute step-timer expiry, or ``None``.
        in_progress_deadline: Absolute in-progress-timer expiry, or ``None``.
        force_canceled: Whether a forced cancel ended it.
    """

    job_id: str
    thing_name: str
    execution_number: int
    status: ExecutionStatus
    queued_at: int
    last_updated_at: int
    sequence: int
    version_number: int = 1
    status_details: dict[str, str] = field(default_factory=dict)
    started_at: int | None = None
    step_deadline: int | None = None
    in_progress_deadline: int | None = None
    force_canceled: bool = False

    @property
    def deadline(self) -> int | None:
        """The earliest running timer deadline, if any."""
        deadlines = [d for d in (self.step_deadline, self.in_progress_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def to_dict(self) -> JsonObject:
        """Return a JSON-serializable dict (persistence format)."""
        return {
            "jobId": self.job_id,
            "thingName": self.thing_name,
            "executionNumber": self.execution_number,
            "status": self.status.value,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "sequence": self.sequence,
            "versionNumber": self.version_number,
            "statusDetails": dict(self.status_details),
            "startedAt": self.started_at,
            "stepDeadline": self.step_deadline,
            "inProgressDeadline": self.in_progress_deadline,
            "forceCanceled": self.force_canceled,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Execution":
        """Inverse of :meth:`to_dict`."""
        return cls(
            job_id=data["jobId"],
            thing_name=data["thingName"],
            execution_number=data["executionNumber"],
            status=ExecutionStatus(data["status"]),
            queued_at=data["queuedAt"],
            last_updated_at=data["lastUpdatedAt"],
            sequence=data["sequence"],
            version_number=data["versionNumber"],
            status_details=dict(data["statusDetails"]),
            started_at=data["startedAt"],
            step_deadline=data["stepDeadline"],
            in_progress_deadline=data["inProgressDeadline"],
            force_canceled=data["forceCanceled"],
        )


@dataclass(slots=True)
class Job:
    """A job definition plus its rollout bookkeeping; mutated by the engine.

    Attributes:
        job_id: The id.
        document: The job document (a JSON object).
        targets: Target thing names, in order, without duplicates.
        created_at: Creation time.
        last_updated_at: Time of the last change.
        sequence: Global creation order.
        status: Job status.
        target_selection: SNAPSHOT or CONTINUOUS.
        description: Free text, or ``None``.
        timeout: Timeout configuration, or ``None``.
        rollout: Rollout configuration, or ``None`` (all executions at once).
        abort: Abort configuration, or ``None``.
        retry: Retry configuration, or ``None``.
        completed_at: When the job became COMPLETED/CANCELED.
        force_canceled: Whether a forced cancel happened.
        reason_code: Cancel reason code, or ``None``.
        comment: Cancel comment, or ``None``.
        unreleased: Targets still waiting for the rollout to give them an execution.
        window_start: Start of the current one-minute rollout window.
        window_count: Executions released in the current window.
        retries_used: Per thing, retries used per failure type (``"FAILED"``/``"TIMED_OUT"``).
    """

    job_id: str
    document: JsonObject
    targets: list[str]
    created_at: int
    last_updated_at: int
    sequence: int
    status: JobStatus = JobStatus.IN_PROGRESS
    target_selection: TargetSelection = TargetSelection.SNAPSHOT
    description: str | None = None
    timeout: TimeoutConfig | None = None
    rollout: RolloutConfig | None = None
    abort: AbortConfig | None = None
    retry: RetryConfig | None = None
    completed_at: int | None = None
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    unreleased: list[str] = field(default_factory=list)
    window_start: int = 0
    window_count: int = 0
    retries_used: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        """Return a JSON-serializable dict (persistence format)."""
        return {
            "jobId": self.job_id,
            "document": self.document,
            "targets": list(self.targets),
            "createdAt": self.created_at,
            "lastUpdatedAt": self.last_updated_at,
            "sequence": self.sequence,
            "status": self.status.value,
            "targetSelection": self.target_selection.value,
            "description": self.description,
            "timeoutConfig": self.timeout.to_api() if self.timeout else None,
            "rolloutConfig": self.rollout.to_api() if self.rollout else None,
            "abortConfig": self.abort.to_api() if self.abort else None,
            "retryConfig": self.retry.to_api() if self.retry else None,
            "completedAt": self.completed_at,
            "forceCanceled": self.force_canceled,
            "reasonCode": self.reason_code,
            "comment": self.comment,
            "unreleased": list(self.unreleased),
            "windowStart": self.window_start,
            "windowCount": self.window_count,
            "retriesUsed": self.retries_used,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        """Inverse of :meth:`to_dict`."""

        def opt(key: str, factory: Any) -> Any:
            return factory(data[key]) if data[key] is not None else None

        return cls(
            job_id=data["jobId"],
            document=data["document"],
            targets=list(data["targets"]),
            created_at=data["createdAt"],
            last_updated_at=data["lastUpdatedAt"],
            sequence=data["sequence"],
            status=JobStatus(data["status"]),
            target_selection=TargetSelection(data["targetSelection"]),
            description=data["description"],
            timeout=opt("timeoutConfig", TimeoutConfig.from_api),
            rollout=opt("rolloutConfig", RolloutConfig.from_api),
            abort=opt("abortConfig", AbortConfig.from_api),
            retry=opt("retryConfig", RetryConfig.from_api),
            completed_at=data["completedAt"],
            force_canceled=data["forceCanceled"],
            reason_code=data["reasonCode"],
            comment=data["comment"],
            unreleased=list(data["unreleased"]),
            window_start=data["windowStart"],
            window_count=data["windowCount"],
            retries_used={k: dict(v) for k, v in data["retriesUsed"].items()},
        )


@dataclass(slots=True)
class JobsState:
    """All jobs and executions; the engine mutates it in place.

    Handlers leave it untouched when they reject a request. Persist it with
    :meth:`to_json` after any outcome whose ``changed`` is True.

    Attributes:
        jobs: Jobs by id, in creation order.
        executions: ``executions[thing][job_id]`` lists that thing's executions of the
            job, oldest first (only the last one can be QUEUED/IN_PROGRESS).
        sequence: Last creation sequence number handed out.
    """

    jobs: dict[str, Job] = field(default_factory=dict)
    executions: dict[str, dict[str, list[Execution]]] = field(default_factory=dict)
    sequence: int = 0
    _counts: dict[str, dict[ExecutionStatus, int]] = field(default_factory=dict, repr=False)
    _outcomes: dict[str, dict[ExecutionStatus, int]] = field(default_factory=dict, repr=False)

    def next_sequence(self) -> int:
        """Hand out the next creation sequence number."""
        self.sequence += 1
        return self.sequence

    def executions_of(self, job_id: str, thing_name: str) -> list[Execution]:
        """Return the thing's executions of the job (oldest first; empty if none)."""
        return self.executions.get(thing_name, {}).get(job_id, [])

    def latest(self, job_id: str, thing_name: str) -> Execution | None:
        """Return the thing's newest execution of the job, if any."""
        found = self.executions_of(job_id, thing_name)
        return found[-1] if found else None

    def latest_counts(self, job_id: str) -> dict[ExecutionStatus, int]:
        """Return, per status, how many things' newest execution of the job has it.

        The sum is the number of things that have received an execution of the job.
        Maintained incrementally, so it is O(1) (a copy of a small dict).
        """
        return {status: n for status, n in self._counts.get(job_id, {}).items() if n}

    def outcome_counts(self, job_id: str) -> dict[ExecutionStatus, int]:
        """Return, per terminal status, how many things' last *finished* execution has it.

        Unlike :meth:`latest_counts`, a failure stays counted while its retry is
        pending, until a later execution of the same thing finishes.
        """
        return {status: n for status, n in self._outcomes.get(job_id, {}).items() if n}

    def _count(self, job_id: str, status: ExecutionStatus, delta: int) -> None:
        counts = self._counts.setdefault(job_id, {})
        counts[status] = counts.get(status, 0) + delta

    def _count_outcome(self, job_id: str, status: ExecutionStatus, delta: int) -> None:
        counts = self._outcomes.setdefault(job_id, {})
        counts[status] = counts.get(status, 0) + delta

    def add_execution(self, execution: Execution) -> None:
        """Store a new execution; it becomes the thing's newest one for its job."""
        by_job = self.executions.setdefault(execution.thing_name, {})
        found = by_job.setdefault(execution.job_id, [])
        if found:
            self._count(execution.job_id, found[-1].status, -1)
        if execution.status.is_terminal:  # only when loading a saved state
            finished = [e for e in found if e.status.is_terminal]
            if finished:
                self._count_outcome(execution.job_id, finished[-1].status, -1)
            self._count_outcome(execution.job_id, execution.status, 1)
        found.append(execution)
        self._count(execution.job_id, execution.status, 1)

    def set_status(self, execution: Execution, status: ExecutionStatus) -> None:
        """Change the status of a thing's newest execution, keeping the counts right."""
        self._count(execution.job_id, execution.status, -1)
        self._count(execution.job_id, status, 1)
        if status.is_terminal:
            found = self.executions_of(execution.job_id, execution.thing_name)
            finished = [e for e in found if e.status.is_terminal and e is not execution]
            if execution.status.is_terminal:
                self._count_outcome(execution.job_id, execution.status, -1)
            elif finished:
                self._count_outcome(execution.job_id, finished[-1].status, -1)
            self._count_outcome(execution.job_id, status, 1)
        execution.status = status

    def remove_job(self, job_id: str) -> list[str]:
        """Delete a job and all its executions; return the things that had some."""
        self.jobs.pop(job_id, None)
        self._counts.pop(job_id, None)
        self._outcomes.pop(job_id, None)
        things = []
        for thing_name, by_job in self.executions.items():
            if by_job.pop(job_id, None) is not None:
                things.append(thing_name)
        for thing_name in things:
            if not self.executions[thing_name]:
                del self.executions[thing_name]
        return things

    def to_json(self) -> str:
        """Serialize everything; inverse of :meth:`from_json`."""
        executions = [
            execution.to_dict()
            for by_job in self.executions.values()
            for found in by_job.values()
            for execution in found
        ]
        executions.sort(key=lambda e: int(e["sequence"]))
        return json.dumps(
            {
                "sequence": self.sequence,
                "jobs": [job.to_dict() for job in self.jobs.values()],
                "executions": executions,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobsState":
        """Load a state written by :meth:`to_json`.

        Args:
            text: The serialized state.

        Returns:
            The state.

        Raises:
            ValueError: ``text`` is not a serialized state.
        """
        try:
            data = json.loads(text)
            state = cls(sequence=data["sequence"])
            for job_data in data["jobs"]:
                job = Job.from_dict(job_data)
                state.jobs[job.job_id] = job
            for execution_data in data["executions"]:
                state.add_execution(Execution.from_dict(execution_data))
        except (KeyError, TypeError, JobsError) as exc:
            raise ValueError(f"not a serialized jobs state: {exc!r}") from exc
        return state


MAX_STATUS_DETAILS: Final = 10
"""[U] Maximum number of ``statusDetails`` pairs (documented for CancelJobExecution only)."""

MAX_STATUS_DETAIL_VALUE: Final = 1024
"""Maximum length (characters) of a ``statusDetails`` value."""

_DETAILS_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


def _valid_detail_value(value: Any) -> bool:
    """A 1-1024 character string without Unicode category C characters (API model)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_STATUS_DETAIL_VALUE
        and not any(unicodedata.category(char).startswith("C") for char in value)
    )


def validate_status_details(value: Any) -> dict[str, str]:
    """Validate a ``statusDetails`` map (spec §3.2).

    Args:
        value: The candidate map.

    Returns:
        A copy of the map.

    Raises:
        InvalidRequestError: Not an object of at most :data:`MAX_STATUS_DETAILS` pairs
            whose keys are 1-128 characters of ``[a-zA-Z0-9:_-]`` and whose values are
            1-1024-character strings without control, format, surrogate, private-use or
            unassigned characters (Unicode category C).
    """
    if not isinstance(value, dict):
        raise InvalidRequestError("statusDetails must be an object")
    if len(value) > MAX_STATUS_DETAILS:
        raise InvalidRequestError(f"statusDetails may hold at most {MAX_STATUS_DETAILS} entries")
    for key, item in value.items():
        if _DETAILS_KEY.fullmatch(key) is None:
            raise InvalidRequestError(f"invalid statusDetails key: {key[:130]!r}")
        if not _valid_detail_value(item):
            raise InvalidRequestError(f"invalid statusDetails value for key {key!r}")
    return dict(value)


def validate_document(document: Any) -> JsonObject:
    """Validate a job document: a JSON object of at most 32 KiB when serialized.

    Args:
        document: The candidate document.

    Returns:
        A deep copy of it.

    Raises:
        InvalidRequestError: Not an object, not serializable, or too large.
    """
    if not isinstance(document, dict):
        raise InvalidRequestError("job document must be a JSON object")
    try:
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"job document is not JSON: {exc}") from exc
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JOB_DOCUMENT_BYTES:
        raise InvalidRequestError("job document exceeds 32768 bytes")
    copied: JsonObject = json.loads(text)
    return copied


def validate_targets(targets: Sequence[str]) -> list[str]:
    """Validate target thing names and drop duplicates (order kept).

    Args:
        targets: Thing names (group expansion happens outside the engine).

    Returns:
        The de-duplicated list.

    Raises:
        InvalidRequestError: Empty, or an invalid thing name.
    """
    if isinstance(targets, str) or not targets:
        raise InvalidRequestError("targets must be a non-empty list of thing names")
    for target in targets:
        if not isinstance(target, str) or not is_valid_thing_name(target):
            raise InvalidRequestError(f"invalid thing name in targets: {target!r}")
    return list(dict.fromkeys(targets))
