"""Wire shapes, the pending list and the notification tracker of the Jobs engine.

:class:`Effects` is how every mutation reports what to publish: call
:meth:`Effects.touch` for a thing *before* changing any of its executions; when the
operation ends, :meth:`Effects.messages` compares each touched thing's pending list
with the snapshot and emits ``notify`` (membership changed) and ``notify-next`` (head
changed) — never for a QUEUED→IN_PROGRESS change of the head (spec §3.4).
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NamedTuple

from cloud_stubs.jobs._config import ExecutionStatus, JobStatus, JsonObject
from cloud_stubs.jobs._model import Execution, Job, JobsState

NOTIFY_MAX_JOBS: Final = 10
"""[U] ``notify`` lists at most this many pending executions (spec §3.4 "≤ 10")."""


class MessageKind(StrEnum):
    """How a shell should deliver a :class:`JobsMessage`."""

    RESPONSE = "response"
    """``…/accepted`` or ``…/rejected``: deliver to the requesting client only (spec §3.1)."""
    NOTIFICATION = "notification"
    """``notify``/``notify-next``: an ordinary publish to all subscribers."""
    EVENT = "event"
    """``$aws/events/job…``: an ordinary publish, only if job events are enabled."""


class JobsMessage(NamedTuple):
    """One message to publish.

    Attributes:
        topic: The absolute topic, e.g. ``$aws/things/T/jobs/notify``.
        payload: The JSON body (owned by the caller; shares nothing with the state).
        kind: Delivery rule.
    """

    topic: str
    payload: JsonObject
    kind: MessageKind


@dataclass(frozen=True, slots=True)
class JobsOutcome:
    """Result of a device request or control-plane operation.

    Attributes:
        messages: What to publish, in order: the response (if any), then per touched
            thing ``notify-next`` then ``notify``, then ``$aws/events`` messages.
        accepted: False only for a device request answered on a ``…/rejected`` topic.
        changed: Whether the state was modified (persist it).
    """

    messages: tuple[JobsMessage, ...]
    accepted: bool = True
    changed: bool = False


def jobs_topic(thing_name: str, suffix: str) -> str:
    """Return ``$aws/things/{thing_name}/jobs/{suffix}``."""
    return f"$aws/things/{thing_name}/jobs/{suffix}"


def copy_json(value: Any) -> Any:
    """Deep-copy a JSON value."""
    if isinstance(value, dict):
        return {key: copy_json(member) for key, member in value.items()}
    if isinstance(value, list):
        return [copy_json(element) for element in value]
    return value


def pending_list(state: JobsState, thing_name: str) -> list[Execution]:
    """Return the thing's pending executions: IN_PROGRESS first, then by queuedAt.

    Ties are broken by creation sequence.

    Args:
        state: The state.
        thing_name: The thing.

    Returns:
        The ordered pending executions.
    """
    pending = [
        found[-1]
        for found in state.executions.get(thing_name, {}).values()
        if found and not found[-1].status.is_terminal
    ]
    pending.sort(
        key=lambda e: (e.status is not ExecutionStatus.IN_PROGRESS, e.queued_at, e.sequence)
    )
    return pending


def summary(execution: Execution) -> JsonObject:
    """Return a JobExecutionSummary (lists, notify)."""
    body: JsonObject = {"jobId": execution.job_id, "queuedAt": execution.queued_at}
    if execution.started_at is not None:
        body["startedAt"] = execution.started_at
    body["lastUpdatedAt"] = execution.last_updated_at
    body["versionNumber"] = execution.version_number
    body["executionNumber"] = execution.execution_number
    return body


def execution_state(execution: Execution) -> JsonObject:
    """Return a JobExecutionState ``{status, statusDetails?, versionNumber}``."""
    body: JsonObject = {"status": execution.status.value}
    if execution.status_details:
        body["statusDetails"] = dict(execution.status_details)
    body["versionNumber"] = execution.version_number
    return body


def execution_data(
    execution: Execution, job: Job, now: int, *, include_document: bool = True
) -> JsonObject:
    """Return a JobExecution (describe, start-next, notify-next).

    ``statusDetails`` is omitted when empty, ``startedAt`` before the start and
    ``approximateSecondsBeforeTimedOut`` when no timer runs.

    Args:
        execution: The execution.
        job: Its job.
        now: Epoch seconds (for the remaining timer).
        include_document: Whether to add ``jobDocument`` (as an object).

    Returns:
        The JSON body.
    """
    body: JsonObject = {
        "jobId": execution.job_id,
        "thingName": execution.thing_name,
        "status": execution.status.value,
    }
    if execution.status_details:
        body["statusDetails"] = dict(execution.status_details)
    body["queuedAt"] = execution.queued_at
    if execution.started_at is not None:
        body["startedAt"] = execution.started_at
    body["lastUpdatedAt"] = execution.last_updated_at
    body["versionNumber"] = execution.version_number
    body["executionNumber"] = execution.execution_number
    deadline = execution.deadline
    if deadline is not None and execution.status is ExecutionStatus.IN_PROGRESS:
        body["approximateSecondsBeforeTimedOut"] = max(0, deadline - now)
    if include_document:
        body["jobDocument"] = copy_json(job.document)
    return body


def process_details(state: JobsState, job: Job) -> JsonObject:
    """Return ``jobProcessDetails``: things per status of their latest execution."""
    counts = state.latest_counts(job.job_id)
    names = {
        ExecutionStatus.QUEUED: "numberOfQueuedThings",
        ExecutionStatus.IN_PROGRESS: "numberOfInProgressThings",
        ExecutionStatus.SUCCEEDED: "numberOfSucceededThings",
        ExecutionStatus.FAILED: "numberOfFailedThings",
        ExecutionStatus.TIMED_OUT: "numberOfTimedOutThings",
        ExecutionStatus.REJECTED: "numberOfRejectedThings",
        ExecutionStatus.REMOVED: "numberOfRemovedThings",
        ExecutionStatus.CANCELED: "numberOfCanceledThings",
    }
    return {names[status]: counts.get(status, 0) for status in ExecutionStatus}


def describe_job_body(state: JobsState, job: Job) -> JsonObject:
    """Return the control-plane DescribeJob ``job`` shape (targets as thing names)."""
    body: JsonObject = {
        "jobId": job.job_id,
        "status": job.status.value,
        "targetSelection": job.target_selection.value,
        "targets": list(job.targets),
        "createdAt": job.created_at,
        "lastUpdatedAt": job.last_updated_at,
        "forceCanceled": job.force_canceled,
        "jobProcessDetails": process_details(state, job),
    }
    optional: dict[str, Any] = {
        "description": job.description,
        "completedAt": job.completed_at,
        "reasonCode": job.reason_code,
        "comment": job.comment,
        "timeoutConfig": job.timeout.to_api() if job.timeout else None,
        "jobExecutionsRolloutConfig": job.rollout.to_api() if job.rollout else None,
        "abortConfig": job.abort.to_api() if job.abort else None,
        "jobExecutionsRetryConfig": job.retry.to_api() if job.retry else None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def job_event(state: JobsState, job: Job, operation: str, now: int) -> JobsMessage:
    """Return a ``$aws/events/job/{jobId}/{operation}`` event.

    The payload follows the documented job event shape, minus ``eventId`` (which needs
    randomness; a shell may add one) and with thing names instead of ARNs.
    """
    body: JsonObject = {
        "eventType": "JOB",
        "operation": operation,
        "jobId": job.job_id,
        "status": job.status.value,
        "targetSelection": job.target_selection.value,
        "targets": list(job.targets),
        "createdAt": job.created_at,
        "lastUpdatedAt": job.last_updated_at,
        "timestamp": now,
    }
    if job.completed_at is not None:
        body["completedAt"] = job.completed_at
    if job.status in {JobStatus.COMPLETED, JobStatus.CANCELED}:
        body["jobProcessDetails"] = process_details(state, job)
    return JobsMessage(f"$aws/events/job/{job.job_id}/{operation}", body, MessageKind.EVENT)


def execution_event(execution: Execution, operation: str, now: int) -> JobsMessage:
    """Return a ``$aws/events/jobExecution/{jobId}/{operation}`` event."""
    body: JsonObject = {
        "eventType": "JOB_EXECUTION",
        "operation": operation,
        "jobId": execution.job_id,
        "thingName": execution.thing_name,
        "status": execution.status.value,
        "statusDetails": dict(execution.status_details),
        "timestamp": now,
    }
    return JobsMessage(
        f"$aws/events/jobExecution/{execution.job_id}/{operation}", body, MessageKind.EVENT
    )


def _key(execution: Execution) -> tuple[str, int]:
    return (execution.job_id, execution.execution_number)


def notify_body(pending: list[Execution], now: int) -> JsonObject:
    """Return the ``notify`` (JobExecutionsChanged) body for an ordered pending list."""
    jobs: dict[str, list[JsonObject]] = {}
    for execution in pending[:NOTIFY_MAX_JOBS]:
        jobs.setdefault(execution.status.value, []).append(summary(execution))
    return {"timestamp": now, "jobs": jobs}


def notify_next_body(state: JobsState, pending: list[Execution], now: int) -> JsonObject:
    """Return the ``notify-next`` (NextJobExecutionChanged) body."""
    body: JsonObject = {"timestamp": now}
    if pending:
        head = pending[0]
        body["execution"] = execution_data(head, state.jobs[head.job_id], now)
    return body


@dataclass(slots=True)
class Effects:
    """Collects the messages of one operation; see the module docstring."""

    state: JobsState
    now: int
    responses: list[JobsMessage] = field(default_factory=list)
    events: list[JobsMessage] = field(default_factory=list)
    changed: bool = False
    _before: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def touch(self, thing_name: str) -> None:
        """Snapshot the thing's pending list before its first change; mark changed."""
        self.changed = True
        if thing_name not in self._before:
            self._before[thing_name] = [_key(e) for e in pending_list(self.state, thing_name)]

    def respond(self, topic: str, body: JsonObject) -> None:
        """Queue a response message."""
        self.responses.append(JobsMessage(topic, body, MessageKind.RESPONSE))

    def messages(self) -> tuple[JobsMessage, ...]:
        """Return responses, then notifications of touched things, then events."""
        result = list(self.responses)
        for thing_name, before in self._before.items():
            pending = pending_list(self.state, thing_name)
            after = [_key(e) for e in pending]
            if before[:1] != after[:1]:
                result.append(
                    JobsMessage(
                        jobs_topic(thing_name, "notify-next"),
                        notify_next_body(self.state, pending, self.now),
                        MessageKind.NOTIFICATION,
                    )
                )
            if set(before) != set(after):
                result.append(
                    JobsMessage(
                        jobs_topic(thing_name, "notify"),
                        notify_body(pending, self.now),
                        MessageKind.NOTIFICATION,
                    )
                )
        result.extend(self.events)
        return tuple(result)

    def outcome(self, *, accepted: bool = True) -> JobsOutcome:
        """Return the :class:`JobsOutcome` of the operation."""
        return JobsOutcome(self.messages(), accepted=accepted, changed=self.changed)
