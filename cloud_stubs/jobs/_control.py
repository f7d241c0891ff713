"""Control plane of the pure Jobs engine (what the IoT ``CreateJob``… APIs do).

Functions mutate the :class:`~cloud_stubs.jobs._model.JobsState` in place, raise a
:class:`~cloud_stubs.jobs._errors.JobsError` subclass (leaving the state untouched) on
invalid requests, and return a :class:`~cloud_stubs.jobs._views.JobsOutcome` whose
messages (``notify``/``notify-next`` per affected thing, ``$aws/events`` events) the
shell publishes. Thing-group expansion happens outside: targets are thing names.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from cloud_stubs.jobs._config import (
    AbortConfig,
    ExecutionStatus,
    FailureType,
    JobStatus,
    JsonObject,
    RetryConfig,
    RolloutConfig,
    TargetSelection,
    TimeoutConfig,
)
from cloud_stubs.jobs._engine import cancel_job_now, change_status, create_execution, release
from cloud_stubs.jobs._errors import (
    InvalidRequestError,
    InvalidStateTransitionError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    VersionConflictError,
)
from cloud_stubs.jobs._model import (
    Execution,
    Job,
    JobsState,
    is_valid_job_id,
    is_valid_thing_name,
    validate_document,
    validate_status_details,
    validate_targets,
)
from cloud_stubs.jobs._views import (
    Effects,
    JobsOutcome,
    copy_json,
    describe_job_body,
    execution_event,
    job_event,
)


def _job(state: JobsState, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise ResourceNotFoundError(f"job {job_id!r} does not exist")
    return job


def create_job(
    state: JobsState,
    job_id: str,
    *,
    targets: Sequence[str],
    document: Mapping[str, Any],
    now: int,
    description: str | None = None,
    target_selection: TargetSelection = TargetSelection.SNAPSHOT,
    timeout_config: TimeoutConfig | None = None,
    rollout_config: RolloutConfig | None = None,
    abort_config: AbortConfig | None = None,
    retry_config: RetryConfig | None = None,
) -> JobsOutcome:
    """Create a job and queue the first executions (all, or as the rollout allows).

    Args:
        state: The state (mutated).
        job_id: 1-64 characters of ``[a-zA-Z0-9_-]``.
        targets: Thing names (duplicates are dropped).
        document: The job document (JSON object, at most 32 KiB).
        now: Epoch seconds.
        description: Free text.
        target_selection: SNAPSHOT (completes) or CONTINUOUS (see :func:`add_thing_to_job`).
        timeout_config: In-progress timer.
        rollout_config: Release rate; without it every target is queued now.
        abort_config: Automatic cancel on failures.
        retry_config: Automatic re-queue of FAILED/TIMED_OUT executions.

    Returns:
        ``notify``/``notify-next`` for each thing that got an execution.

    Raises:
        InvalidRequestError: Bad id, targets, document or configuration combination.
        ResourceAlreadyExistsError: ``job_id`` is taken.
    """
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        raise InvalidRequestError(f"invalid jobId: {job_id!r}")
    if job_id in state.jobs:
        raise ResourceAlreadyExistsError(f"job {job_id!r} already exists")
    things = validate_targets(targets)
    body = validate_document(document)
    if (
        retry_config is not None
        and timeout_config is None
        and any(c.failure_type is FailureType.TIMED_OUT for c in retry_config.criteria)
    ):
        raise InvalidRequestError("TIMED_OUT retries require a timeoutConfig")
    job = Job(
        job_id=job_id,
        document=body,
        targets=things,
        created_at=now,
        last_updated_at=now,
        sequence=state.next_sequence(),
        target_selection=TargetSelection(target_selection),
        description=description,
        timeout=timeout_config,
        rollout=rollout_config,
        abort=abort_config,
        retry=retry_config,
        unreleased=list(things),
        window_start=now,
    )
    state.jobs[job_id] = job
    effects = Effects(state, now)
    effects.changed = True
    release(effects, job)
    return effects.outcome()


def cancel_job(
    state: JobsState,
    job_id: str,
    *,
    now: int,
    force: bool = False,
    reason_code: str | None = None,
    comment: str | None = None,
) -> JobsOutcome:
    """Cancel a job: QUEUED executions become CANCELED, with ``force`` IN_PROGRESS too.

    Canceling an already CANCELED job is allowed (e.g. to force-cancel what is left).

    Args:
        state: The state (mutated).
        job_id: The job.
        now: Epoch seconds.
        force: Also cancel IN_PROGRESS executions (devices can no longer update them).
        reason_code: Stored on the job.
        comment: Stored on the job.

    Returns:
        Notifications for the affected things and the events.

    Raises:
        ResourceNotFoundError: No such job.
        InvalidStateTransitionError: The job is COMPLETED or being deleted.
    """
    job = _job(state, job_id)
    if job.status not in {JobStatus.IN_PROGRESS, JobStatus.CANCELED}:
        raise InvalidStateTransitionError(f"job {job_id!r} is {job.status}")
    effects = Effects(state, now)
    cancel_job_now(effects, job, force=force, reason_code=reason_code, comment=comment)
    return effects.outcome()


def cancel_job_execution(
    state: JobsState,
    job_id: str,
    thing_name: str,
    *,
    now: int,
    force: bool = False,
    expected_version: int | None = None,
    status_details: Mapping[str, str] | None = None,
) -> JobsOutcome:
    """Cancel one thing's newest execution of a job.

    Args:
        state: The state (mutated).
        job_id: The job.
        thing_name: The thing.
        now: Epoch seconds.
        force: Required to cancel an IN_PROGRESS execution.
        expected_version: Optimistic lock on ``versionNumber``.
        status_details: Replaces the execution's ``statusDetails``.

    Returns:
        Notifications for the thing and the events.

    Raises:
        ResourceNotFoundError: No such execution.
        InvalidStateTransitionError: Terminal, or IN_PROGRESS without ``force``.
        VersionConflictError: ``expected_version`` mismatch.
        InvalidRequestError: Bad ``status_details``.
    """
    job = _job(state, job_id)
    execution = state.latest(job_id, thing_name)
    if execution is None:
        raise ResourceNotFoundError(f"no execution of {job_id!r} on {thing_name!r}")
    details = validate_status_details(status_details) if status_details is not None else None
    if execution.status.is_terminal:
        raise InvalidStateTransitionError(f"execution is {execution.status}")
    if execution.status is ExecutionStatus.IN_PROGRESS and not force:
        raise InvalidStateTransitionError("canceling an IN_PROGRESS execution needs force")
    if expected_version is not None and expected_version != execution.version_number:
        raise VersionConflictError(
            f"expected version {expected_version}, current {execution.version_number}"
        )
    effects = Effects(state, now)
    change_status(effects, job, execution, ExecutionStatus.CANCELED, details=details, force=force)
    return effects.outcome()


def delete_job(state: JobsState, job_id: str, *, now: int, force: bool = False) -> JobsOutcome:
    """Delete a job and all its executions (synchronously; no DELETION_IN_PROGRESS phase).

    Args:
        state: The state (mutated).
        job_id: The job.
        now: Epoch seconds.
        force: Required while the job is IN_PROGRESS.

    Returns:
        Notifications for things whose pending list shrank, ``deleted`` events.

    Raises:
        ResourceNotFoundError: No such job.
        InvalidStateTransitionError: IN_PROGRESS job without ``force``.
    """
    job = _job(state, job_id)
    if job.status is JobStatus.IN_PROGRESS and not force:
        raise InvalidStateTransitionError(f"job {job_id!r} is IN_PROGRESS; use force")
    effects = Effects(state, now)
    for thing_name in job.targets:
        if state.latest(job_id, thing_name) is not None:
            effects.touch(thing_name)
    job.status = JobStatus.DELETION_IN_PROGRESS
    for thing_name in job.targets:
        latest = state.latest(job_id, thing_name)
        if latest is not None:
            effects.events.append(execution_event(latest, "deleted", now))
    effects.events.append(job_event(state, job, "deleted", now))
    state.remove_job(job_id)
    effects.changed = True
    return effects.outcome()


def add_thing_to_job(state: JobsState, job_id: str, thing_name: str, *, now: int) -> JobsOutcome:
    """A thing joined a target group of a CONTINUOUS job: queue an execution for it.

    No-op when the job is not IN_PROGRESS or the thing already has a pending execution;
    a thing whose newest execution is terminal (e.g. REMOVED earlier) gets a new one
    and its retry budget is reset. Not subject to the rollout rate (spec §3.8).

    Args:
        state: The state (mutated).
        job_id: The job.
        thing_name: The thing.
        now: Epoch seconds.

    Returns:
        Notifications for the thing.

    Raises:
        ResourceNotFoundError: No such job.
        InvalidRequestError: SNAPSHOT job, or invalid thing name.
    """
    job = _job(state, job_id)
    if job.target_selection is not TargetSelection.CONTINUOUS:
        raise InvalidRequestError("only CONTINUOUS jobs accept new targets")
    if not is_valid_thing_name(thing_name):
        raise InvalidRequestError(f"invalid thing name: {thing_name!r}")
    effects = Effects(state, now)
    latest = state.latest(job_id, thing_name)
    if job.status is JobStatus.IN_PROGRESS and (latest is None or latest.status.is_terminal):
        if thing_name not in job.targets:
            job.targets.append(thing_name)
        job.retries_used.pop(thing_name, None)
        create_execution(effects, job, thing_name)
    return effects.outcome()


def remove_thing_from_job(
    state: JobsState, job_id: str, thing_name: str, *, now: int
) -> JobsOutcome:
    """A thing left the target groups of a CONTINUOUS job: its pending execution → REMOVED.

    Args:
        state: The state (mutated).
        job_id: The job.
        thing_name: The thing.
        now: Epoch seconds.

    Returns:
        Notifications for the thing and the ``removed`` event.

    Raises:
        ResourceNotFoundError: No such job.
    """
    job = _job(state, job_id)
    effects = Effects(state, now)
    latest = state.latest(job_id, thing_name)
    if latest is not None and not latest.status.is_terminal:
        change_status(effects, job, latest, ExecutionStatus.REMOVED)
    if thing_name in job.unreleased:
        job.unreleased.remove(thing_name)
        effects.changed = True
    return effects.outcome()


def describe_job(state: JobsState, job_id: str) -> JsonObject:
    """Return the DescribeJob ``job`` shape (with ``jobProcessDetails``).

    Raises:
        ResourceNotFoundError: No such job.
    """
    return describe_job_body(state, _job(state, job_id))


def get_job_document(state: JobsState, job_id: str) -> JsonObject:
    """Return a copy of the job document.

    Raises:
        ResourceNotFoundError: No such job.
    """
    document: JsonObject = copy_json(_job(state, job_id).document)
    return document


def list_jobs(state: JobsState, *, status: JobStatus | None = None) -> list[JsonObject]:
    """Return DescribeJob shapes of all jobs (optionally of one status), oldest first."""
    return [
        describe_job_body(state, job)
        for job in state.jobs.values()
        if status is None or job.status is status
    ]


def execution_summary(execution: Execution, now: int) -> JsonObject:
    """Return the control-plane (DescribeJobExecution) shape of an execution."""
    body: JsonObject = {
        "jobId": execution.job_id,
        "thingName": execution.thing_name,
        "status": execution.status.value,
        "forceCanceled": execution.force_canceled,
        "statusDetails": {"detailsMap": dict(execution.status_details)},
        "queuedAt": execution.queued_at,
        "lastUpdatedAt": execution.last_updated_at,
        "executionNumber": execution.execution_number,
        "versionNumber": execution.version_number,
    }
    if execution.started_at is not None:
        body["startedAt"] = execution.started_at
    deadline = execution.deadline
    if deadline is not None and execution.status is ExecutionStatus.IN_PROGRESS:
        body["approximateSecondsBeforeTimedOut"] = max(0, deadline - now)
    return body


def describe_job_execution(
    state: JobsState,
    job_id: str,
    thing_name: str,
    *,
    now: int,
    execution_number: int | None = None,
) -> JsonObject:
    """Return the control-plane shape of one execution (default: the newest).

    Raises:
        ResourceNotFoundError: No such execution.
    """
    found = state.executions_of(job_id, thing_name)
    matches = [
        e for e in found if execution_number is None or e.execution_number == execution_number
    ]
    if not matches:
        raise ResourceNotFoundError(f"no execution of {job_id!r} on {thing_name!r}")
    return execution_summary(matches[-1], now)


def list_job_executions_for_job(
    state: JobsState, job_id: str, *, now: int, status: ExecutionStatus | None = None
) -> list[JsonObject]:
    """Return every execution (all attempts) of a job, in creation order.

    Raises:
        ResourceNotFoundError: No such job.
    """
    job = _job(state, job_id)
    executions = [e for thing in job.targets for e in state.executions_of(job_id, thing)]
    executions.sort(key=lambda e: e.sequence)
    return [execution_summary(e, now) for e in executions if status is None or e.status is status]


def list_job_executions_for_thing(
    state: JobsState, thing_name: str, *, now: int, status: ExecutionStatus | None = None
) -> list[JsonObject]:
    """Return every execution (all attempts) on a thing, in creation order."""
    executions = [e for found in state.executions.get(thing_name, {}).values() for e in found]
    executions.sort(key=lambda e: e.sequence)
    return [execution_summary(e, now) for e in executions if status is None or e.status is status]
