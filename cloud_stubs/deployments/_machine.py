"""The deployment state machine (sans-I/O): events in, new deployment and actions out.

:func:`step` never performs I/O. The driver (:mod:`cloud_stubs.deployments._engine`) feeds it

- :class:`Tick` regularly (starts a queued deployment, re-issues a job creation interrupted by
  a crash, applies the batch timeout),
- :class:`Observed` with the newest execution of every thing of each job in
  :func:`jobs_to_observe` (this is where batches are decided),
- :class:`JobCreated` / :class:`JobCreateFailed` after carrying out a :class:`CreateJob`,
- :class:`CancelRequested` when the operator cancels,

persists the returned deployment and then carries out the returned actions. Persist-then-act
makes every action safe to repeat after a crash: creating a job that exists counts as created,
canceling a finished job is ignored.

Batch rules (``success_threshold`` = t, batch of n things, ``required`` = ceil(t·n)):

- the batch **succeeds** when every thing's execution has ended and at least ``required``
  SUCCEEDED; the next batch starts at once, or the deployment is COMPLETED;
- the batch **fails** as soon as ``required`` is out of reach (SUCCEEDED + unfinished <
  ``required``): its job is canceled (QUEUED executions become CANCELED; IN_PROGRESS ones
  finish and are still counted), later batches are SKIPPED and never get a job, and the
  deployment is FAILED with the reason;
- with ``batch_timeout_s``, a batch unfinished after that long is decided on its successes so
  far: its job is canceled, then it passes if SUCCEEDED >= ``required``, else fails;
- every failure status counts against the rate: FAILED, REJECTED, TIMED_OUT, CANCELED, REMOVED.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from cloud_stubs.deployments._errors import DeploymentSpecError
from cloud_stubs.deployments._model import (
    MAX_LISTED_FAILURES,
    Batch,
    BatchCounts,
    BatchStatus,
    Deployment,
    DeploymentStatus,
    ExecutionView,
    ThingFailure,
)

__all__ = [
    "Action",
    "CancelJob",
    "CancelRequested",
    "CreateJob",
    "Event",
    "JobCreateFailed",
    "JobCreated",
    "Observed",
    "Step",
    "Tick",
    "jobs_to_observe",
    "new_deployment",
    "step",
]

MAX_BATCH_SIZE: Final = 10_000
_REASON_KEYS: Final = ("reason_code", "reason", "error_type", "error_detail", "state")
_LISTED_IN_REASON: Final = 5


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed."""

    now: float


@dataclass(frozen=True, slots=True)
class Observed:
    """The newest execution per thing of a job (``job_found`` false: the job is gone)."""

    now: float
    job_id: str
    executions: Sequence[ExecutionView]
    job_found: bool = True


@dataclass(frozen=True, slots=True)
class JobCreated:
    """A :class:`CreateJob` was carried out (or the job already existed)."""

    now: float
    job_id: str


@dataclass(frozen=True, slots=True)
class JobCreateFailed:
    """A :class:`CreateJob` was refused."""

    now: float
    job_id: str
    message: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The operator canceled the deployment."""

    now: float
    reason: str = "canceled by the operator"


Event = Tick | Observed | JobCreated | JobCreateFailed | CancelRequested


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateJob:
    """Create a snapshot job (arguments of ``jobs_control("create", ...)``)."""

    job_id: str
    things: tuple[str, ...]
    document: Mapping[str, Any]
    timeout: Mapping[str, Any] | None = None
    rollout: Mapping[str, Any] | None = None
    abort: Mapping[str, Any] | None = None
    description: str = ""

    def control_args(self) -> dict[str, Any]:
        """Keyword arguments of ``LocalIoTCore.jobs_control("create", ...)``."""
        args: dict[str, Any] = {
            "job_id": self.job_id,
            "things": list(self.things),
            "document": dict(self.document),
            "description": self.description,
        }
        if self.timeout is not None:
            args["timeout"] = dict(self.timeout)
        if self.rollout is not None:
            args["rollout"] = dict(self.rollout)
        if self.abort is not None:
            args["abort"] = dict(self.abort)
        return args


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel a job without force: its QUEUED executions become CANCELED."""

    job_id: str
    reason_code: str
    comment: str = ""


Action = CreateJob | CancelJob


@dataclass(frozen=True, slots=True)
class Step:
    """Result of :func:`step`: the new deployment, what to do, whether anything changed."""

    deployment: Deployment
    actions: tuple[Action, ...] = ()
    changed: bool = False


# -- creation ---------------------------------------------------------------------------------


def new_deployment(
    *,
    firmware_id: str,
    target_version: str,
    document: Mapping[str, Any],
    targets: Sequence[str],
    batch_size: int,
    success_threshold: float,
    now: float,
    deployment_id: str | None = None,
    timeout_minutes: int | None = None,
    batch_timeout_s: float | None = None,
    max_per_minute: int | None = None,
    abort_on_threshold: bool = True,
) -> Deployment:
    """A QUEUED deployment with its targets split into batches (duplicates dropped).

    Raises:
        DeploymentSpecError: No targets, batch size outside 1-10000, threshold outside 0-1,
            timeout outside 1-10080 minutes, non-positive batch timeout, rate outside 1-1000.
    """
    things = list(dict.fromkeys(targets))
    if not things:
        raise DeploymentSpecError("a deployment needs at least one target thing")
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise DeploymentSpecError(f"batch size must be an integer 1-{MAX_BATCH_SIZE}")
    if isinstance(success_threshold, bool) or not 0 <= success_threshold <= 1:
        raise DeploymentSpecError("success threshold must be a number between 0 and 1")
    if timeout_minutes is not None and not 1 <= timeout_minutes <= 10080:  # noqa: PLR2004
        raise DeploymentSpecError("timeout must be 1-10080 minutes")
    if batch_timeout_s is not None and not batch_timeout_s > 0:
        raise DeploymentSpecError("batch timeout must be positive")
    if max_per_minute is not None and not 1 <= max_per_minute <= 1000:  # noqa: PLR2004
        raise DeploymentSpecError("rollout rate must be 1-1000 per minute")
    batches = tuple(
        Batch(
            index=i + 1,
            things=tuple(things[start : start + batch_size]),
            counts=BatchCounts(len(things[start : start + batch_size])),
        )
        for i, start in enumerate(range(0, len(things), batch_size))
    )
    return Deployment(
        deployment_id=deployment_id or f"dep-{secrets.token_hex(5)}",
        firmware_id=firmware_id,
        target_version=target_version,
        document=dict(document),
        batch_size=batch_size,
        success_threshold=float(success_threshold),
        batches=batches,
        created_at=now,
        timeout_minutes=timeout_minutes,
        batch_timeout_s=batch_timeout_s,
        max_per_minute=max_per_minute,
        abort_on_threshold=abort_on_threshold,
    )


# -- the machine ------------------------------------------------------------------------------


def jobs_to_observe(deployment: Deployment) -> list[str]:
    """Jobs whose executions the driver should report with :class:`Observed`.

    The running batch's job, plus jobs of decided batches whose executions have not all ended
    (their counts keep moving until they settle), even after the deployment is terminal.
    """
    return [
        b.job_id
        for b in deployment.batches
        if b.job_id is not None
        and (b.status is BatchStatus.RUNNING or (b.status.is_terminal and not b.settled))
    ]


def step(deployment: Deployment, event: Event) -> Step:
    """Apply one event; return the new deployment and the actions to carry out."""
    if isinstance(event, Tick):
        return _tick(deployment, event.now)
    if isinstance(event, Observed):
        return _observed(deployment, event)
    if isinstance(event, JobCreated):
        return _created(deployment, event)
    if isinstance(event, JobCreateFailed):
        return _create_failed(deployment, event)
    return _cancel(deployment, event)


def _job_id(deployment: Deployment, batch: Batch) -> str:
    return f"{deployment.deployment_id}-b{batch.index}"


def _create_action(deployment: Deployment, batch: Batch) -> CreateJob:
    assert batch.job_id is not None  # noqa: S101 - set when the batch starts
    abort = None
    allowed_pct = round((1 - deployment.success_threshold) * 100, 2) + 0.01
    if deployment.abort_on_threshold and allowed_pct <= 100:  # noqa: PLR2004
        abort = {
            "criteriaList": [
                {
                    "failureType": "ALL",
                    "action": "CANCEL",
                    "thresholdPercentage": round(allowed_pct, 2),
                    "minNumberOfExecutedThings": len(batch.things),
                }
            ]
        }
    return CreateJob(
        job_id=batch.job_id,
        things=batch.things,
        document=deployment.document,
        timeout=(
            {"inProgressTimeoutInMinutes": deployment.timeout_minutes}
            if deployment.timeout_minutes
            else None
        ),
        rollout=(
            {"maximumPerMinute": deployment.max_per_minute} if deployment.max_per_minute else None
        ),
        abort=abort,
        description=(
            f"deployment {deployment.deployment_id} batch {batch.index}/"
            f"{len(deployment.batches)}: {deployment.firmware_id} {deployment.target_version}"
        ),
    )


def _start_batch(deployment: Deployment, batch: Batch, now: float) -> Step:
    started = replace(
        batch,
        status=BatchStatus.CREATING,
        job_id=_job_id(deployment, batch),
        started_at=now,
        counts=BatchCounts(len(batch.things)),
    )
    dep = deployment.with_batch(started)
    return Step(dep, (_create_action(dep, started),), changed=True)


def _finish(
    deployment: Deployment, status: DeploymentStatus, now: float, reason: str | None
) -> Deployment:
    batches = tuple(
        replace(b, status=BatchStatus.SKIPPED, settled=True)
        if b.status is BatchStatus.PENDING
        else b
        for b in deployment.batches
    )
    return replace(deployment, batches=batches, status=status, finished_at=now, reason=reason)


def _tick(deployment: Deployment, now: float) -> Step:
    if deployment.status is DeploymentStatus.QUEUED:
        dep = replace(deployment, status=DeploymentStatus.IN_PROGRESS, started_at=now)
        return _start_batch(dep, dep.batches[0], now)
    if deployment.status is not DeploymentStatus.IN_PROGRESS:
        return Step(deployment)
    batch = deployment.current_batch
    if batch is None:  # pragma: no cover - an IN_PROGRESS deployment always has one
        return Step(deployment)
    if batch.status is BatchStatus.CREATING:
        # the job creation was decided but its outcome never recorded (crash): do it again
        return Step(deployment, (_create_action(deployment, batch),))
    timeout = deployment.batch_timeout_s
    if timeout is not None and batch.started_at is not None and now - batch.started_at >= timeout:
        return _decide(deployment, batch, now, timed_out=True)
    return Step(deployment)


def _failure_reason(view: ExecutionView) -> str:
    details = view.status_details
    parts = [f"{k}={details[k]}" for k in _REASON_KEYS if details.get(k)]
    return ", ".join(parts)


def _observed(deployment: Deployment, event: Observed) -> Step:
    batch = deployment.batch_of_job(event.job_id)
    if batch is None or batch.status in {BatchStatus.PENDING, BatchStatus.SKIPPED}:
        return Step(deployment)
    wanted = set(batch.things)
    latest = {v.thing: v for v in event.executions if v.thing in wanted}
    counts = BatchCounts.from_executions(len(batch.things), latest)
    failures = tuple(
        ThingFailure(v.thing, v.status, _failure_reason(v))
        for v in sorted(latest.values(), key=lambda v: batch.things.index(v.thing))
        if v.is_terminal and v.status != "SUCCEEDED"
    )[:MAX_LISTED_FAILURES]
    settled = not event.job_found or (
        len(latest) == len(batch.things) and all(v.is_terminal for v in latest.values())
    )
    updated = replace(batch, counts=counts, failures=failures, settled=settled)
    changed = updated != batch
    dep = deployment.with_batch(updated)
    if updated.status is BatchStatus.CREATING and event.job_found:
        updated = replace(updated, status=BatchStatus.RUNNING)
        dep, changed = dep.with_batch(updated), True
    if updated.status is not BatchStatus.RUNNING or dep.status is not DeploymentStatus.IN_PROGRESS:
        return Step(dep, changed=changed)
    if not event.job_found:
        reason = f"batch {updated.index}: job {updated.job_id} disappeared (deleted?)"
        failed = replace(updated, status=BatchStatus.FAILED, finished_at=event.now)
        dep = _finish(dep.with_batch(failed), DeploymentStatus.FAILED, event.now, reason)
        return Step(dep, changed=True)
    required = dep.required_successes(updated)
    if counts.succeeded + counts.unfinished < required:
        return _decide(dep, updated, event.now, timed_out=False)
    if counts.unfinished == 0:
        return _decide(dep, updated, event.now, timed_out=False)
    return Step(dep, changed=changed)


def _describe_failures(batch: Batch) -> str:
    if not batch.failures:
        return ""
    listed = [
        f"{f.thing} {f.status}" + (f" ({f.reason})" if f.reason else "")
        for f in batch.failures[:_LISTED_IN_REASON]
    ]
    more = batch.current_counts.failed - len(listed)
    return "; failed: " + ", ".join(listed) + (f" and {more} more" if more > 0 else "")


def _decide(deployment: Deployment, batch: Batch, now: float, *, timed_out: bool) -> Step:
    """Decide a RUNNING (or, on timeout, CREATING) batch."""
    counts = batch.current_counts
    total = len(batch.things)
    required = deployment.required_successes(batch)
    actions: list[Action] = []
    n = len(deployment.batches)
    if counts.succeeded >= required and (timed_out or counts.unfinished == 0):
        passed = replace(batch, status=BatchStatus.SUCCEEDED, finished_at=now)
        if timed_out and counts.unfinished and batch.job_id is not None:
            actions.append(
                CancelJob(batch.job_id, "BATCH_TIMEOUT", f"batch {batch.index} timed out")
            )
        dep = deployment.with_batch(passed)
        following = next((b for b in dep.batches if b.status is BatchStatus.PENDING), None)
        if following is None:
            done = _finish(dep, DeploymentStatus.COMPLETED, now, None)
            return Step(done, tuple(actions), changed=True)
        started = _start_batch(dep, following, now)
        return Step(started.deployment, (*actions, *started.actions), changed=True)
    pct = 100 * deployment.success_threshold
    if timed_out:
        why = (
            f"batch {batch.index}/{n} timed out after {deployment.batch_timeout_s:g} s with "
            f"{counts.succeeded}/{total} succeeded, below the success threshold {pct:g}% "
            f"(needs {required})"
        )
    elif counts.unfinished == 0:
        why = (
            f"batch {batch.index}/{n}: {counts.succeeded}/{total} succeeded, below the "
            f"success threshold {pct:g}% (needs {required})"
        )
    else:
        why = (
            f"batch {batch.index}/{n}: at most {counts.succeeded + counts.unfinished}/{total} "
            f"can still succeed, below the success threshold {pct:g}% (needs {required})"
        )
    why += _describe_failures(batch)
    failed = replace(batch, status=BatchStatus.FAILED, finished_at=now)
    if counts.unfinished and batch.job_id is not None:
        actions.append(CancelJob(batch.job_id, "THRESHOLD_MISSED", why[:2028]))
    dep = _finish(deployment.with_batch(failed), DeploymentStatus.FAILED, now, why)
    later = sum(1 for b in dep.batches if b.index > batch.index)
    if later:
        dep = replace(dep, reason=f"{why}; {later} later batch(es) not started")
    return Step(dep, tuple(actions), changed=True)


def _created(deployment: Deployment, event: JobCreated) -> Step:
    batch = deployment.batch_of_job(event.job_id)
    if batch is None or batch.status is not BatchStatus.CREATING:
        return Step(deployment)
    return Step(deployment.with_batch(replace(batch, status=BatchStatus.RUNNING)), changed=True)


def _create_failed(deployment: Deployment, event: JobCreateFailed) -> Step:
    batch = deployment.batch_of_job(event.job_id)
    if batch is None or batch.status is not BatchStatus.CREATING:
        return Step(deployment)
    failed = replace(batch, status=BatchStatus.FAILED, finished_at=event.now, settled=True)
    reason = f"batch {batch.index}: could not create job {event.job_id}: {event.message}"
    dep = _finish(deployment.with_batch(failed), DeploymentStatus.FAILED, event.now, reason)
    return Step(dep, changed=True)


def _cancel(deployment: Deployment, event: CancelRequested) -> Step:
    if deployment.status.is_terminal:
        return Step(deployment)
    actions: list[Action] = []
    dep = deployment
    batch = deployment.current_batch
    if batch is not None:
        dep = dep.with_batch(replace(batch, status=BatchStatus.CANCELED, finished_at=event.now))
        if batch.job_id is not None:
            actions.append(CancelJob(batch.job_id, "DEPLOYMENT_CANCELED", event.reason[:2028]))
    return Step(
        _finish(dep, DeploymentStatus.CANCELED, event.now, event.reason),
        tuple(actions),
        changed=True,
    )
