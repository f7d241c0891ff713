"""AWS IoT Commands, the service's rules (``iot_core_protocol.md`` §9), without I/O.

Commands, executions, validation of a device's ``UpdateCommandExecution``, the execution
state machine (§9.6), the cloud timeout, request routing by content type (§9.8.1), events
(§9.7) and the control-plane views. The shell (:mod:`cloud_stubs.commands._service`) stores
the values and publishes what these functions return.

Choices where the spec is uncertain [U], in one place:

* ``status`` is required; uppercase ``S``/``B``/``BIN`` tags are refused on MQTT
  (``InvalidRequest``); ``null`` for ``statusReason``/``result`` is refused.
* ``result`` replaces the stored one when given (no merge); ``statusReason`` replaces the
  stored one when given, and is cleared on a status change that carries none.
* A change to a terminal state after a device-reported ``TIMED_OUT`` is
  ``InvalidStateTransition``; after ``SUCCEEDED``/``FAILED``/``REJECTED`` it is
  ``TerminalStateReached``; ``IN_PROGRESS`` after the cloud timeout is
  ``InvalidStateTransition``.
* An event is published when the status changes or the execution becomes terminal.
* ``StartCommandExecution`` requires a ``things`` target to exist in the registry.
* Content types are matched exactly (``application/json; charset=utf-8`` goes to the bare
  request topic).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import math
import re
from typing import Any

__all__ = [
    "ACCOUNT",
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_TIMEOUT_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMEOUT_S",
    "NO_RESPONSE_REASON",
    "REGION",
    "Command",
    "CommandsError",
    "ConflictError",
    "DeviceUpdate",
    "Execution",
    "ExecutionStatus",
    "ResourceNotFoundError",
    "UpdateRejected",
    "ValidationError",
    "apply_update",
    "command_arn",
    "event",
    "execution_view",
    "message_expiry",
    "new_command",
    "request_topic",
    "target_arn",
    "time_out",
    "validate_update",
]

REGION = "local"
ACCOUNT = "000000000000"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_TIMEOUT_S = 10
MAX_TIMEOUT_S = 43_200
MAX_PAYLOAD_BYTES = 32 * 1024
NO_RESPONSE_REASON = "$NO_RESPONSE_FROM_DEVICE"

_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CONTENT_TYPE = re.compile(r"^[^/\s]+/[^/\s]+$")
_REASON_CODE = re.compile(r"^[A-Z0-9_-]{1,64}$")
_RESULT_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_DESCRIPTION = 1024
_MAX_DISPLAY_NAME = 64
_MAX_COMMAND_DESCRIPTION = 2028


class ExecutionStatus(enum.StrEnum):
    """Execution statuses; ``CREATED`` is set by the cloud only."""

    CREATED = "CREATED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"


_DEVICE_STATUSES = frozenset(ExecutionStatus) - {ExecutionStatus.CREATED}
_FINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.REJECTED})


# -- control-plane errors -----------------------------------------------------------------


class CommandsError(Exception):
    """A refused control-plane request (the AWS exception name and HTTP status)."""

    code = "InternalServerException"
    http_status = 500


class ValidationError(CommandsError):
    """Invalid arguments (HTTP 400)."""

    code = "ValidationException"
    http_status = 400


class ResourceNotFoundError(CommandsError):
    """No such command or execution (HTTP 404)."""

    code = "ResourceNotFoundException"
    http_status = 404


class ConflictError(CommandsError):
    """The command exists already, or the execution is not terminal (HTTP 409)."""

    code = "ConflictException"
    http_status = 409


# -- values -------------------------------------------------------------------------------


def command_arn(command_id: str) -> str:
    """``arn:aws:iot:<region>:<account>:command/<id>``."""
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:command/{command_id}"


def target_arn(kind: str, target_id: str) -> str:
    """The thing or client ARN of an execution target (``kind``: things | clients)."""
    resource = "thing" if kind == "things" else "client"
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{resource}/{target_id}"


@dataclasses.dataclass
class Command:
    """A stored command with a static payload."""

    command_id: str
    payload: bytes
    content_type: str
    created_at: float
    last_updated_at: float
    display_name: str | None = None
    description: str | None = None
    deprecated: bool = False

    def view(self, *, with_payload: bool = True) -> dict[str, Any]:
        """The GetCommand shape (payload content base64, as the API carries blobs)."""
        out: dict[str, Any] = {
            "commandId": self.command_id,
            "commandArn": command_arn(self.command_id),
            "namespace": "AWS-IoT",
            "createdAt": self.created_at,
            "lastUpdatedAt": self.last_updated_at,
            "deprecated": self.deprecated,
            "pendingDeletion": False,
        }
        if self.display_name is not None:
            out["displayName"] = self.display_name
        if self.description is not None:
            out["description"] = self.description
        if with_payload:
            out["payload"] = {
                "content": base64.b64encode(self.payload).decode(),
                "contentType": self.content_type,
            }
        return out


def new_command(
    command_id: str,
    payload: bytes,
    *,
    content_type: str | None,
    now: float,
    display_name: str | None = None,
    description: str | None = None,
) -> Command:
    """Validate a CreateCommand request with a static payload.

    Raises:
        ValidationError: Bad id, payload size, content type, display name or description.
    """
    if not isinstance(command_id, str) or not _ID.fullmatch(command_id):
        raise ValidationError(f"commandId {command_id!r} must be 1-64 of [a-zA-Z0-9_-]")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValidationError(f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    ctype = DEFAULT_CONTENT_TYPE if content_type is None else content_type
    if not isinstance(ctype, str) or not _CONTENT_TYPE.fullmatch(ctype.split(";")[0].strip()):
        raise ValidationError(f"contentType {ctype!r} must look like type/subtype")
    if display_name is not None and not 0 < len(display_name) <= _MAX_DISPLAY_NAME:
        raise ValidationError(f"displayName must be 1-{_MAX_DISPLAY_NAME} characters")
    if description is not None and len(description) > _MAX_COMMAND_DESCRIPTION:
        raise ValidationError(f"description must be at most {_MAX_COMMAND_DESCRIPTION} characters")
    return Command(command_id, payload, ctype, now, now, display_name, description)


@dataclasses.dataclass
class Execution:
    """One delivery of a command to one target, and where it stands."""

    execution_id: str
    command_id: str
    target_kind: str
    target_id: str
    status: ExecutionStatus
    timeout_s: int
    created_at: float
    last_updated_at: float
    deadline: float
    status_reason: dict[str, str] | None = None
    result: dict[str, dict[str, Any]] | None = None
    """As the device sent it (lowercase tags)."""
    completed_at: float | None = None
    terminal: bool = False

    @property
    def open(self) -> bool:
        """Still waiting for the device (the cloud timer runs)."""
        return self.status in (ExecutionStatus.CREATED, ExecutionStatus.IN_PROGRESS)


def request_topic(kind: str, target_id: str, execution_id: str, content_type: str) -> str:
    """The request topic by exact content type: ``/json``, ``/cbor`` or bare (§9.8.1)."""
    base = f"$aws/commands/{kind}/{target_id}/executions/{execution_id}/request"
    if content_type == "application/json":
        return base + "/json"
    if content_type == "application/cbor":
        return base + "/cbor"
    return base


def message_expiry(deadline: float, now: float) -> int:
    """MQTT 5 Message Expiry Interval: whole seconds left, at least 1 (§9.3)."""
    return max(1, math.floor(deadline - now))


def event(execution: Execution, now: float) -> tuple[str, dict[str, Any]]:
    """``$aws/events/commandExecution/<commandId>/<status>`` and its payload (ms time)."""
    body: dict[str, Any] = {
        "executionId": execution.execution_id,
        "status": str(execution.status),
        "eventType": "COMMAND_EXECUTION",
        "commandArn": command_arn(execution.command_id),
        "targetArn": target_arn(execution.target_kind, execution.target_id),
        "timestamp": int(now * 1000),
    }
    if execution.status_reason:
        body["statusReason"] = dict(execution.status_reason)
    topic = f"$aws/events/commandExecution/{execution.command_id}/{execution.status}"
    return topic, body


def time_out(execution: Execution, now: float) -> bool:
    """Apply the cloud timeout if due: TIMED_OUT, non-terminal, ``$NO_RESPONSE_FROM_DEVICE``."""
    if not execution.open or now < execution.deadline:
        return False
    execution.status = ExecutionStatus.TIMED_OUT
    execution.status_reason = {"reasonCode": NO_RESPONSE_REASON}
    execution.last_updated_at = now
    return True


# -- device updates -----------------------------------------------------------------------


class UpdateRejected(Exception):  # noqa: N818 - mirrors the wire error, not a bug signal
    """An update refused with a §9.5 ``error`` code.

    Attributes:
        error: The wire ``error`` string (``InvalidRequest``, ``TerminalStateReached``, ...).
        message: The ``errorMessage`` text.
    """

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message

    def body(self, execution_id: str) -> dict[str, str]:
        """The rejected payload ``{executionId, error, errorMessage}``."""
        return {"executionId": execution_id, "error": self.error, "errorMessage": self.message}


@dataclasses.dataclass(frozen=True)
class DeviceUpdate:
    """A validated ``UpdateCommandExecution`` body."""

    status: ExecutionStatus
    status_reason: dict[str, str] | None
    result: dict[str, dict[str, Any]] | None


def _invalid(message: str) -> UpdateRejected:
    return UpdateRejected("InvalidRequest", message)


def _validate_reason(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _invalid("statusReason must be an object")
    code = raw.get("reasonCode")
    if not isinstance(code, str) or not _REASON_CODE.fullmatch(code):
        raise _invalid("statusReason.reasonCode must match [A-Z0-9_-]+ (1-64 characters)")
    reason = {"reasonCode": code}
    if "reasonDescription" in raw:
        desc = raw["reasonDescription"]
        if not isinstance(desc, str) or len(desc) > _MAX_DESCRIPTION or _CONTROL.search(desc):
            raise _invalid(
                "statusReason.reasonDescription must be a string of at most "
                f"{_MAX_DESCRIPTION} characters without control characters"
            )
        reason["reasonDescription"] = desc
    return reason


def _validate_value(key: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        kind = type(raw).__name__.upper().replace("STR", "STRING")
        raise _invalid(f"result {key!r}: Value cannot be a {kind}")
    if len(raw) != 1:
        raise _invalid(f"result {key!r} must have exactly one of 's', 'b', 'bin'")
    tag, value = next(iter(raw.items()))
    if tag == "s" and isinstance(value, str) and value:
        return {"s": value}
    if tag == "b" and isinstance(value, bool):
        return {"b": value}
    if tag == "bin" and isinstance(value, str) and value:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"result {key!r}: bin must be base64") from None
        return {"bin": value}
    raise _invalid(
        f"result {key!r}: expected a non-empty 's' string, a 'b' boolean or a non-empty "
        "base64 'bin' (lowercase tags)"
    )


def validate_update(payload: bytes) -> DeviceUpdate:
    """Decode and validate a JSON update body (§9.4); extra top-level keys are ignored.

    Raises:
        UpdateRejected: ``InvalidJson`` or ``InvalidRequest``.
    """
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise UpdateRejected("InvalidJson", "The payload is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise _invalid("The payload must be a JSON object")
    status = body.get("status")
    if not isinstance(status, str) or status not in _DEVICE_STATUSES:
        allowed = ", ".join(sorted(_DEVICE_STATUSES))
        raise _invalid(f"status is required and must be one of {allowed}")
    reason = _validate_reason(body["statusReason"]) if "statusReason" in body else None
    result: dict[str, dict[str, Any]] | None = None
    if "result" in body:
        raw = body["result"]
        if not isinstance(raw, dict):
            raise _invalid("result must be an object")
        if not raw:
            raise _invalid("At least 1 command execution result is required")
        result = {}
        for key, value in raw.items():
            if not _RESULT_KEY.fullmatch(key):
                raise _invalid(f"result key {key[:40]!r} must be 1-32 of [a-zA-Z0-9_-]")
            result[key] = _validate_value(key, value)
    return DeviceUpdate(ExecutionStatus(status), reason, result)


def apply_update(execution: Execution, update: DeviceUpdate, now: float) -> bool:
    """Apply a device update per the §9.6 table; return whether an event is due.

    Raises:
        UpdateRejected: ``TerminalStateReached`` or ``InvalidStateTransition``.
    """
    current = execution.status
    if execution.terminal:
        if current is ExecutionStatus.TIMED_OUT:
            raise UpdateRejected(
                "InvalidStateTransition",
                f"The execution timed out on the device; its status cannot change to "
                f"{update.status}",
            )
        raise UpdateRejected(
            "TerminalStateReached",
            f"The command execution status cannot be changed to {update.status} because "
            f"the execution has already completed with status {current}",
        )
    if current is ExecutionStatus.TIMED_OUT and update.status is ExecutionStatus.IN_PROGRESS:
        raise UpdateRejected(
            "InvalidStateTransition",
            "The execution timed out; it can no longer change to IN_PROGRESS",
        )
    changed = update.status is not current
    execution.status = update.status
    if update.status_reason is not None:
        execution.status_reason = dict(update.status_reason)
    elif changed:
        execution.status_reason = None
    if update.result is not None:
        execution.result = {k: dict(v) for k, v in update.result.items()}
    execution.last_updated_at = now
    became_terminal = update.status is not ExecutionStatus.IN_PROGRESS
    if became_terminal:
        execution.terminal = True
        execution.completed_at = now
    return changed or became_terminal


def _upper_result(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        key: {tag.upper(): value for tag, value in entry.items()} for key, entry in result.items()
    }


def execution_view(execution: Execution, *, include_result: bool) -> dict[str, Any]:
    """The GetCommandExecution shape (uppercase result tags; ``result`` on request only)."""
    out: dict[str, Any] = {
        "executionId": execution.execution_id,
        "commandArn": command_arn(execution.command_id),
        "targetArn": target_arn(execution.target_kind, execution.target_id),
        "status": str(execution.status),
        "executionTimeoutSeconds": execution.timeout_s,
        "createdAt": execution.created_at,
        "startedAt": execution.created_at,
        "lastUpdatedAt": execution.last_updated_at,
    }
    if execution.status_reason:
        out["statusReason"] = dict(execution.status_reason)
    if execution.completed_at is not None:
        out["completedAt"] = execution.completed_at
    if include_result and execution.result:
        out["result"] = _upper_result(execution.result)
    return out
