"""Deployment values: statuses, batches, per-batch counts (immutable; JSON round-trip)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Self

__all__ = [
    "FAILURE_STATUSES",
    "Batch",
    "BatchCounts",
    "BatchStatus",
    "Deployment",
    "DeploymentStatus",
    "ExecutionView",
    "ThingFailure",
]

#: Execution statuses that count against a batch's success rate (all terminal non-successes).
FAILURE_STATUSES: Final = ("FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")
_TERMINAL: Final = frozenset({"SUCCEEDED", *FAILURE_STATUSES})
#: Failures kept per batch for ``describe`` (the counts are always complete).
MAX_LISTED_FAILURES: Final = 50


class DeploymentStatus(StrEnum):
    """Lifecycle of a deployment."""

    QUEUED = "QUEUED"  # stored; no batch started (the stub was not running, or not yet polled)
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"  # every batch met the success threshold
    FAILED = "FAILED"  # a batch missed the threshold (or its job could not be created)
    CANCELED = "CANCELED"  # canceled by the operator

    @property
    def is_terminal(self) -> bool:
        """Whether no batch will start any more."""
        return self in {
            DeploymentStatus.COMPLETED,
            DeploymentStatus.FAILED,
            DeploymentStatus.CANCELED,
        }


class BatchStatus(StrEnum):
    """Lifecycle of one batch (one job)."""

    PENDING = "PENDING"  # not started
    CREATING = "CREATING"  # its job is being created (decided, maybe not yet done)
    RUNNING = "RUNNING"  # its job exists; waiting for the executions
    SUCCEEDED = "SUCCEEDED"  # success rate >= threshold
    FAILED = "FAILED"  # success rate < threshold, or the threshold became unreachable
    CANCELED = "CANCELED"  # the deployment was canceled while this batch ran
    SKIPPED = "SKIPPED"  # never started: an earlier batch failed or the deployment was canceled

    @property
    def is_terminal(self) -> bool:
        """Whether the batch's outcome is decided."""
        return self not in {BatchStatus.PENDING, BatchStatus.CREATING, BatchStatus.RUNNING}


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """What the engine sees of one thing's newest execution of a batch job."""

    thing: str
    status: str
    status_details: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """Whether the execution has ended."""
        return self.status in _TERMINAL


@dataclass(frozen=True, slots=True)
class ThingFailure:
    """A thing whose execution ended without success, with the reason it reported."""

    thing: str
    status: str
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        """JSON form."""
        return {"thing": self.thing, "status": self.status, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls(str(data["thing"]), str(data["status"]), str(data.get("reason", "")))


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """Things of a batch by the status of their newest execution.

    ``not_started`` counts things without an execution yet (rollout rate, or the job does not
    exist yet).
    """

    total: int
    succeeded: int = 0
    in_progress: int = 0
    queued: int = 0
    not_started: int = -1  # -1: everything not counted elsewhere (see __post_init__)
    by_failure: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.not_started < 0:
            rest = self.total - self.succeeded - self.in_progress - self.queued - self.failed
            object.__setattr__(self, "not_started", max(0, rest))

    @classmethod
    def from_executions(cls, total: int, executions: Mapping[str, ExecutionView]) -> Self:
        """Count the newest execution of each thing (things without one are not started)."""
        succeeded = in_progress = queued = 0
        failures: dict[str, int] = {}
        for view in executions.values():
            if view.status == "SUCCEEDED":
                succeeded += 1
            elif view.status == "IN_PROGRESS":
                in_progress += 1
            elif view.status == "QUEUED":
                queued += 1
            else:
                failures[view.status] = failures.get(view.status, 0) + 1
        return cls(total, succeeded, in_progress, queued, by_failure=failures)

    @property
    def failed(self) -> int:
        """Things whose execution ended without success (any failure status)."""
        return sum(self.by_failure.values())

    @property
    def pending(self) -> int:
        """Things that have not started: QUEUED or no execution yet."""
        return self.queued + self.not_started

    @property
    def unfinished(self) -> int:
        """Things that may still succeed."""
        return self.total - self.succeeded - self.failed

    def to_json(self) -> dict[str, Any]:
        """JSON form: the five headline numbers plus the failure breakdown."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "in_progress": self.in_progress,
            "pending": self.pending,
            "queued": self.queued,
            "not_started": self.not_started,
            "failed_by_status": dict(self.by_failure),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls(
            int(data["total"]),
            int(data["succeeded"]),
            int(data["in_progress"]),
            int(data["queued"]),
            int(data["not_started"]),
            {str(k): int(v) for k, v in dict(data.get("failed_by_status") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch: its things and (once started) its job.

    Attributes:
        index: 1-based position.
        things: Target things.
        status: Where it is.
        job_id: The batch job's id (``<deployment id>-b<index>``) once started.
        started_at: Epoch seconds the batch started.
        finished_at: Epoch seconds its outcome was decided.
        counts: Last observed counts.
        failures: Things that failed, with their reported reason (at most 50).
        settled: Every thing's execution has ended (counts are final).
    """

    index: int
    things: tuple[str, ...]
    status: BatchStatus = BatchStatus.PENDING
    job_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    counts: BatchCounts | None = None
    failures: tuple[ThingFailure, ...] = ()
    settled: bool = False

    @property
    def current_counts(self) -> BatchCounts:
        """Counts (all not started before the first observation)."""
        return self.counts or BatchCounts(len(self.things))

    def to_json(self) -> dict[str, Any]:
        """JSON form (also the persistence format)."""
        return {
            "index": self.index,
            "status": self.status.value,
            "job_id": self.job_id,
            "things": list(self.things),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "counts": self.current_counts.to_json(),
            "failures": [f.to_json() for f in self.failures],
            "settled": self.settled,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls(
            index=int(data["index"]),
            things=tuple(data["things"]),
            status=BatchStatus(data["status"]),
            job_id=data.get("job_id"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            counts=BatchCounts.from_json(data["counts"]) if data.get("counts") else None,
            failures=tuple(ThingFailure.from_json(f) for f in data.get("failures") or ()),
            settled=bool(data.get("settled")),
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    """A firmware rollout in batches, each gated by the success rate of the one before.

    Attributes:
        deployment_id: ``dep-`` + 10 hex characters.
        firmware_id: The firmware deployed.
        target_version: Its version.
        document: The ``ota/1`` job document every batch job gets.
        batch_size: Things per batch (the last one may be smaller).
        success_threshold: Minimum fraction of a batch that must succeed (0-1).
        batches: The batches, in order.
        status: Where the deployment is.
        reason: Why it failed or was canceled.
        created_at: Epoch seconds.
        started_at: Epoch seconds the first batch started.
        finished_at: Epoch seconds it reached a terminal status.
        timeout_minutes: ``timeoutConfig.inProgressTimeoutInMinutes`` of the batch jobs.
        batch_timeout_s: A batch still unfinished after this long is decided on what
            succeeded so far (its queued executions are canceled).
        max_per_minute: ``jobExecutionsRolloutConfig.maximumPerMinute`` of the batch jobs.
        abort_on_threshold: Give batch jobs an ``abortConfig`` that cancels them as soon as
            their failures exceed what the threshold allows.
    """

    deployment_id: str
    firmware_id: str
    target_version: str
    document: Mapping[str, Any]
    batch_size: int
    success_threshold: float
    batches: tuple[Batch, ...]
    status: DeploymentStatus = DeploymentStatus.QUEUED
    reason: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    timeout_minutes: int | None = None
    batch_timeout_s: float | None = None
    max_per_minute: int | None = None
    abort_on_threshold: bool = True

    @property
    def targets(self) -> tuple[str, ...]:
        """Every target thing, in batch order."""
        return tuple(t for b in self.batches for t in b.things)

    def required_successes(self, batch: Batch) -> int:
        """How many things of ``batch`` must succeed for it to pass."""
        return math.ceil(self.success_threshold * len(batch.things) - 1e-9)

    def with_batch(self, batch: Batch) -> Deployment:
        """A copy with ``batch`` replacing the batch of the same index."""
        batches = tuple(batch if b.index == batch.index else b for b in self.batches)
        return replace(self, batches=batches)

    def batch_of_job(self, job_id: str) -> Batch | None:
        """The batch whose job is ``job_id``."""
        return next((b for b in self.batches if b.job_id == job_id), None)

    @property
    def current_batch(self) -> Batch | None:
        """The batch being created or running, if any."""
        return next(
            (b for b in self.batches if b.status in {BatchStatus.CREATING, BatchStatus.RUNNING}),
            None,
        )

    def totals(self) -> BatchCounts:
        """Counts over all batches (things of unstarted batches are not started)."""
        failures: dict[str, int] = {}
        succeeded = in_progress = queued = 0
        total = 0
        for b in self.batches:
            c = b.current_counts
            total += c.total
            succeeded, in_progress, queued = (
                succeeded + c.succeeded,
                in_progress + c.in_progress,
                queued + c.queued,
            )
            for k, v in c.by_failure.items():
                failures[k] = failures.get(k, 0) + v
        return BatchCounts(total, succeeded, in_progress, queued, by_failure=failures)

    def to_json(self) -> dict[str, Any]:
        """JSON form (also the persistence format and ``deployments describe --json``)."""
        return {
            "deployment_id": self.deployment_id,
            "firmware_id": self.firmware_id,
            "target_version": self.target_version,
            "status": self.status.value,
            "reason": self.reason,
            "batch_size": self.batch_size,
            "success_threshold": self.success_threshold,
            "timeout_minutes": self.timeout_minutes,
            "batch_timeout_s": self.batch_timeout_s,
            "max_per_minute": self.max_per_minute,
            "abort_on_threshold": self.abort_on_threshold,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "totals": self.totals().to_json(),
            "batches": [b.to_json() for b in self.batches],
            "document": dict(self.document),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls(
            deployment_id=data["deployment_id"],
            firmware_id=data["firmware_id"],
            target_version=data["target_version"],
            document=data["document"],
            batch_size=int(data["batch_size"]),
            success_threshold=float(data["success_threshold"]),
            batches=tuple(Batch.from_json(b) for b in data["batches"]),
            status=DeploymentStatus(data["status"]),
            reason=data.get("reason"),
            created_at=float(data.get("created_at") or 0),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            timeout_minutes=data.get("timeout_minutes"),
            batch_timeout_s=data.get("batch_timeout_s"),
            max_per_minute=data.get("max_per_minute"),
            abort_on_threshold=bool(data.get("abort_on_threshold", True)),
        )
