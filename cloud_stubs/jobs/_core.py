"""Device API of the pure Jobs engine (spec §3.1-§3.6).

An I/O shell drives it like this::

    request = parse_jobs_topic(topic)        # None: not a jobs request, ignore
    if request is not None:
        outcome = handle_jobs_request(state, request, payload, now=int(time.time()))
        if outcome.changed:
            persist(state.to_json())
        for message in outcome.messages:     # RESPONSE kind: to the requester only
            publish(message.topic, json.dumps(message.payload))

Handlers never raise on bad input: every request yields exactly one ``…/accepted`` or
``…/rejected`` response (``{"code": "<ErrorCode>", "message", "timestamp",
"clientToken"?, "executionState"?}``), followed by ``notify-next``/``notify`` for the
thing when its pending list changed and ``$aws/events`` messages. A rejected request
leaves the state untouched. ``clientToken`` is echoed whenever the request carried a
string token.
"""

import json
import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

from cloud_stubs.jobs._config import MAX_TIMEOUT_MINUTES, ExecutionStatus, JsonObject
from cloud_stubs.jobs._engine import STEP_TIMER_CANCEL, change_status
from cloud_stubs.jobs._errors import InvalidRequestError
from cloud_stubs.jobs._model import Execution, Job, JobsState, validate_status_details
from cloud_stubs.jobs._topics import NEXT_JOB_ID, JobsOperation, JobsRequestTopic
from cloud_stubs.jobs._views import (
    Effects,
    JobsMessage,
    JobsOutcome,
    MessageKind,
    copy_json,
    execution_data,
    execution_state,
    jobs_topic,
    pending_list,
    summary,
)


class ErrorCode(StrEnum):
    """The ``code`` strings of jobs ``…/rejected`` responses (spec §3.6)."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


DEVICE_SETTABLE_STATUSES: Final = frozenset(
    {
        ExecutionStatus.IN_PROGRESS,
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.REJECTED,
    }
)
"""Statuses a device may set with UpdateJobExecution.

[U] Any other status (QUEUED, CANCELED, TIMED_OUT, REMOVED or unknown text) is
rejected with ``InvalidRequest``; the real error code is undocumented.
"""

DESCRIBE_TERMINAL_REJECTED: Final = False
"""Whether DescribeJobExecution of a terminal execution answers ``TerminalStateReached``.

[U] The trigger of that code is undocumented (spec §3.6/§8). Chosen: describing a
terminal execution by job id returns it normally (as the control-plane describe does);
set to True to answer ``TerminalStateReached`` instead.
"""

_DIGITS = re.compile(r"[0-9]{1,18}")


class _RejectedError(Exception):
    """Internal control flow: the request is answered on ``…/rejected``."""

    def __init__(self, code: ErrorCode, message: str, execution: Execution | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.execution = execution

    def body(self, now: int, token: str | None) -> JsonObject:
        body: JsonObject = {"code": self.code.value, "message": self.message, "timestamp": now}
        if token is not None:
            body["clientToken"] = token
        if self.execution is not None:
            body["executionState"] = execution_state(self.execution)
        return body


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant: {name}")


def _decode(payload: bytes) -> JsonObject:
    """Parse a request payload (empty means ``{}``); raise InvalidJson/InvalidRequest."""
    if not payload.strip():
        return {}
    try:
        request = json.loads(
            payload.decode("utf-8"), parse_float=_finite_float, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise _RejectedError(ErrorCode.INVALID_JSON, "Payload is not valid UTF-8 JSON") from exc
    if not isinstance(request, dict):
        raise _RejectedError(ErrorCode.INVALID_REQUEST, "Payload must be a JSON object")
    return request


def _token(request: JsonObject) -> str | None:
    token = request.get("clientToken")
    if token is None or isinstance(token, str):
        return token
    raise _RejectedError(ErrorCode.INVALID_REQUEST, "clientToken must be a string")


def _invalid(message: str) -> _RejectedError:
    return _RejectedError(ErrorCode.INVALID_REQUEST, message)


def _flag(request: JsonObject, key: str, *, default: bool) -> bool:
    value = request.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be a boolean")
    return value


def _number(request: JsonObject, key: str, *, minimum: int) -> int | None:
    """An integer field; numeric strings are accepted (the docs quote expectedVersion)."""
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if type(value) is not int or value < minimum:
        raise _invalid(f"{key} must be an integer >= {minimum}")
    return value


def _step_minutes(request: JsonObject, *, allow_cancel: bool) -> int | None:
    value = request.get("stepTimeoutInMinutes")
    if value is None:
        return None
    if type(value) is int and (
        1 <= value <= MAX_TIMEOUT_MINUTES or (allow_cancel and value == STEP_TIMER_CANCEL)
    ):
        return value
    raise _invalid(f"stepTimeoutInMinutes must be an integer in [1, {MAX_TIMEOUT_MINUTES}]")


def _details(request: JsonObject) -> dict[str, str] | None:
    value = request.get("statusDetails")
    if value is None:
        return None
    try:
        return validate_status_details(value)
    except InvalidRequestError as exc:
        raise _invalid(str(exc)) from exc


def _find(
    state: JobsState, thing_name: str, job_id: str, number: int | None
) -> tuple[Job, Execution]:
    job = state.jobs.get(job_id)
    found = state.executions_of(job_id, thing_name)
    matches = [e for e in found if number is None or e.execution_number == number]
    if job is None or not matches:
        raise _RejectedError(
            ErrorCode.RESOURCE_NOT_FOUND,
            f"No job execution found for job {job_id} on thing {thing_name}",
        )
    return job, matches[-1]


_Body = Callable[[JsonObject, Effects], JsonObject]


def _run(state: JobsState, base: str, payload: bytes, now: int, handler: _Body) -> JobsOutcome:
    """Decode, run ``handler``, and wrap its body (or the rejection) as the response."""
    token: str | None = None
    try:
        request = _decode(payload)
        token = _token(request)
        effects = Effects(state, now)
        body = handler(request, effects)
    except _RejectedError as rejection:
        message = JobsMessage(f"{base}/rejected", rejection.body(now, token), MessageKind.RESPONSE)
        return JobsOutcome((message,), accepted=False, changed=False)
    body["timestamp"] = now
    if token is not None:
        body["clientToken"] = token
    effects.respond(f"{base}/accepted", body)
    return effects.outcome()


def get_pending_job_executions(
    state: JobsState, thing_name: str, payload: bytes, now: int
) -> JobsOutcome:
    """GetPendingJobExecutions: ``{"inProgressJobs": [...], "queuedJobs": [...]}``.

    Both arrays are always present; each is ordered by queuedAt.

    Args:
        state: The state (not modified).
        thing_name: The requesting thing.
        payload: Raw MQTT payload.
        now: Epoch seconds.

    Returns:
        The response on ``…/jobs/get/accepted`` or ``…/rejected``.
    """

    def handler(request: JsonObject, effects: Effects) -> JsonObject:
        del request, effects
        pending = pending_list(state, thing_name)
        return {
            "inProgressJobs": [
                summary(e) for e in pending if e.status is ExecutionStatus.IN_PROGRESS
            ],
            "queuedJobs": [summary(e) for e in pending if e.status is ExecutionStatus.QUEUED],
        }

    return _run(state, jobs_topic(thing_name, "get"), payload, now, handler)


def start_next_pending_job_execution(
    state: JobsState, thing_name: str, payload: bytes, now: int
) -> JobsOutcome:
    """StartNextPendingJobExecution: start (or return) the head of the pending list.

    A QUEUED head becomes IN_PROGRESS (version +1, ``statusDetails`` replaced when
    given, step timer started when given); an IN_PROGRESS head is returned unchanged;
    with nothing pending the response has no ``execution``.

    Args:
        state: The state (mutated when a QUEUED execution starts).
        thing_name: The requesting thing.
        payload: Raw MQTT payload.
        now: Epoch seconds.

    Returns:
        The response on ``…/jobs/start-next/accepted`` or ``…/rejected``.
    """

    def handler(request: JsonObject, effects: Effects) -> JsonObject:
        details = _details(request)
        step = _step_minutes(request, allow_cancel=False)
        pending = pending_list(state, thing_name)
        if not pending:
            return {}
        head = pending[0]
        job = state.jobs[head.job_id]
        if head.status is ExecutionStatus.QUEUED:
            change_status(
                effects, job, head, ExecutionStatus.IN_PROGRESS, details=details, step_minutes=step
            )
        return {"execution": execution_data(head, job, now)}

    return _run(state, jobs_topic(thing_name, "start-next"), payload, now, handler)


def describe_job_execution(
    state: JobsState, thing_name: str, job_id: str, payload: bytes, now: int
) -> JobsOutcome:
    """DescribeJobExecution for ``job_id`` or ``$next`` (read-only).

    ``includeJobDocument`` defaults to true; ``executionNumber`` defaults to the newest;
    ``$next`` with nothing pending answers without ``execution``.

    Args:
        state: The state (not modified).
        thing_name: The requesting thing.
        job_id: The job id from the topic, or ``$next``.
        payload: Raw MQTT payload.
        now: Epoch seconds.

    Returns:
        The response on ``…/jobs/{job_id}/get/accepted`` or ``…/rejected``.
    """

    def handler(request: JsonObject, effects: Effects) -> JsonObject:
        del effects
        number = _number(request, "executionNumber", minimum=1)
        include_document = _flag(request, "includeJobDocument", default=True)
        if job_id == NEXT_JOB_ID:
            pending = pending_list(state, thing_name)
            if not pending:
                return {}
            execution = pending[0]
            job = state.jobs[execution.job_id]
        else:
            job, execution = _find(state, thing_name, job_id, number)
            if DESCRIBE_TERMINAL_REJECTED and execution.status.is_terminal:
                raise _RejectedError(
                    ErrorCode.TERMINAL_STATE_REACHED, "The job execution is in a terminal state"
                )
        return {"execution": execution_data(execution, job, now, include_document=include_document)}

    return _run(state, jobs_topic(thing_name, f"{job_id}/get"), payload, now, handler)


def update_job_execution(
    state: JobsState, thing_name: str, job_id: str, payload: bytes, now: int
) -> JobsOutcome:
    """UpdateJobExecution (spec §3.3).

    Order of checks: payload (InvalidJson/InvalidRequest), every field
    (InvalidRequest), existence (ResourceNotFound), terminal state
    (InvalidStateTransition + executionState), ``expectedVersion`` (VersionMismatch +
    executionState). [U] The relative order of the last two is undocumented.

    Args:
        state: The state (mutated when accepted).
        thing_name: The requesting thing.
        job_id: The job id from the topic.
        payload: Raw MQTT payload.
        now: Epoch seconds.

    Returns:
        The response on ``…/jobs/{job_id}/update/accepted`` (``timestamp``,
        ``clientToken``?, ``executionState`` if requested, ``jobDocument`` if requested)
        or ``…/rejected``, then notifications/events.
    """

    def handler(request: JsonObject, effects: Effects) -> JsonObject:
        raw = request.get("status")
        if raw is None:
            raise _invalid("status is required")
        if not isinstance(raw, str) or raw not in ExecutionStatus.__members__:
            raise _invalid("status is not a job execution status")
        status = ExecutionStatus(raw)
        if status not in DEVICE_SETTABLE_STATUSES:
            raise _invalid(f"status {raw} cannot be set by a device")
        details = _details(request)
        expected = _number(request, "expectedVersion", minimum=0)
        number = _number(request, "executionNumber", minimum=1)
        include_state = _flag(request, "includeJobExecutionState", default=False)
        include_document = _flag(request, "includeJobDocument", default=False)
        step = _step_minutes(request, allow_cancel=True)
        job, execution = _find(state, thing_name, job_id, number)
        if execution.status.is_terminal:
            raise _RejectedError(
                ErrorCode.INVALID_STATE_TRANSITION,
                f"Cannot update a job execution in terminal state {execution.status}",
                execution,
            )
        if expected is not None and expected != execution.version_number:
            raise _RejectedError(
                ErrorCode.VERSION_MISMATCH,
                f"expectedVersion {expected} does not match {execution.version_number}",
                execution,
            )
        change_status(effects, job, execution, status, details=details, step_minutes=step)
        body: JsonObject = {}
        if include_state:
            body["executionState"] = execution_state(execution)
        if include_document:
            body["jobDocument"] = copy_json(job.document)
        return body

    return _run(state, jobs_topic(thing_name, f"{job_id}/update"), payload, now, handler)


def reject_invalid_topic(topic: str, payload: bytes, now: int) -> JobsOutcome:
    """Answer a request on an unknown ``$aws/things/T/jobs/…`` topic with InvalidTopic.

    [U] The rejected topic is the request topic + ``/rejected`` (spec §3.6).

    Args:
        topic: The request topic.
        payload: Raw MQTT payload (only for the ``clientToken``).
        now: Epoch seconds.

    Returns:
        One RESPONSE message.
    """
    token: str | None = None
    try:
        token = _token(_decode(payload))
    except _RejectedError:
        token = None
    rejection = _RejectedError(ErrorCode.INVALID_TOPIC, f"Topic {topic} is not a jobs API topic")
    message = JobsMessage(f"{topic}/rejected", rejection.body(now, token), MessageKind.RESPONSE)
    return JobsOutcome((message,), accepted=False, changed=False)


def handle_jobs_request(
    state: JobsState, request: JobsRequestTopic, payload: bytes, now: int
) -> JobsOutcome:
    """Dispatch a parsed request topic to its handler.

    Args:
        state: The state.
        request: From :func:`~cloud_stubs.jobs._topics.parse_jobs_topic`.
        payload: Raw MQTT payload.
        now: Epoch seconds.

    Returns:
        The handler's outcome.
    """
    thing = request.thing_name
    match request.operation:
        case JobsOperation.GET_PENDING:
            return get_pending_job_executions(state, thing, payload, now)
        case JobsOperation.START_NEXT:
            return start_next_pending_job_execution(state, thing, payload, now)
        case JobsOperation.DESCRIBE if request.job_id is not None:
            return describe_job_execution(state, thing, request.job_id, payload, now)
        case JobsOperation.UPDATE if request.job_id is not None:
            return update_job_execution(state, thing, request.job_id, payload, now)
        case _:
            return reject_invalid_topic(request.topic, payload, now)
