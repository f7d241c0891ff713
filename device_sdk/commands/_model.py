"""Command values and the sans-I/O rules of both schemes.

Parsing inbound requests, deciding what to run (handler registry + allow-list) and encoding
responses are pure functions here; :class:`~device_sdk.commands.Commands` only moves messages.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from device_sdk.commands._topics import PayloadFormat, parse_command_topic
from device_sdk.transport._base import Message

__all__ = [
    "CommandExecution",
    "CommandFailedError",
    "CommandHandler",
    "CommandRejectedError",
    "CommandRequest",
    "CommandScheme",
    "CommandStatus",
    "Decision",
    "ReasonCode",
    "aws_response_body",
    "decide",
    "encode_result",
    "parse_aws_request",
    "parse_simple_request",
    "simple_response_body",
    "status_reason",
]

_REASON_CODE = re.compile(r"^[A-Z0-9_-]{1,64}$")
_RESULT_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,32}$")
_MAX_DESCRIPTION = 1024
_MAX_CORRELATION_ID = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CommandStatus(enum.StrEnum):
    """Statuses a device reports (``CREATED`` is cloud-only and not in this enum)."""

    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"


class CommandScheme(enum.StrEnum):
    """Which protocol a command arrived by."""

    AWS = "aws"
    """AWS IoT Device Management Commands (``$aws/commands/...``)."""
    SIMPLE = "simple"
    """The request/response scheme on ``cmd/<thing>/...``."""


class ReasonCode(enum.StrEnum):
    """``statusReason.reasonCode`` values this SDK reports by itself."""

    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    COMMAND_NOT_ALLOWED = "COMMAND_NOT_ALLOWED"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    UNSUPPORTED_CONTENT_TYPE = "UNSUPPORTED_CONTENT_TYPE"
    HANDLER_TIMEOUT = "HANDLER_TIMEOUT"
    HANDLER_ERROR = "HANDLER_ERROR"
    INVALID_RESULT = "INVALID_RESULT"


@dataclasses.dataclass(frozen=True, slots=True)
class CommandExecution:
    """One command delivered to this device.

    Attributes:
        execution_id: AWS: the execution id (from the topic). Simple scheme: the request's
            ``correlationId``.
        payload: The raw request payload (AWS: exactly the command's bytes).
        content_type: AWS: the MQTT 5 Content Type when the transport reports it, else what
            the topic variant implies (``application/json``, ``application/cbor``, or
            ``None`` on the generic stream). Simple scheme: ``application/json``.
        timeout: Seconds left before the cloud times the execution out (MQTT 5 Message
            Expiry Interval) when the transport reports it, else ``None``.
        scheme: Which protocol delivered it.
        topic: The request topic.
        name: The command name (simple scheme: from the topic; AWS: ``None``, it lives in
            the payload).
        args: Simple scheme: the request's ``args`` object.
    """

    execution_id: str
    payload: bytes
    content_type: str | None = None
    timeout: int | None = None
    scheme: CommandScheme = CommandScheme.AWS
    topic: str = ""
    name: str | None = None
    args: Mapping[str, Any] | None = None

    def json(self) -> Any:
        """The payload parsed as JSON.

        Raises:
            ValueError: The payload is not UTF-8 JSON.
        """
        return json.loads(self.payload)


@dataclasses.dataclass(frozen=True, slots=True)
class CommandRequest:
    """What a handler receives: the command's name, its arguments and the execution."""

    name: str
    args: Mapping[str, Any]
    execution: CommandExecution


CommandHandler = Callable[[CommandRequest], Awaitable[Mapping[str, Any] | None]]
"""``async def handler(request) -> result``: a mapping of result values (or ``None``).

AWS: each value becomes ``{"s": str}``, ``{"b": bool}`` or ``{"bin": base64}`` (``bytes``);
other JSON values are sent as their JSON text in ``s``. Simple scheme: the mapping is the
``result`` object (``bytes`` as base64 strings). Raise :class:`CommandFailedError` or
:class:`CommandRejectedError` to report FAILED or REJECTED with a reason.
"""


class _ReasonedError(Exception):
    def __init__(self, reason_code: str, description: str | None = None) -> None:
        super().__init__(f"{reason_code}: {description}" if description else reason_code)
        if not _REASON_CODE.fullmatch(reason_code):
            raise ValueError(f"reason code {reason_code!r} must match [A-Z0-9_-]{{1,64}}")
        self.reason_code = reason_code
        self.description = description


class CommandFailedError(_ReasonedError):
    """Raised by a handler: report ``FAILED`` with ``reason_code`` (``[A-Z0-9_-]{1,64}``).

    Attributes:
        reason_code: The ``statusReason.reasonCode`` to report.
        description: The ``statusReason.reasonDescription`` (truncated to 1024 characters).
    """


class CommandRejectedError(_ReasonedError):
    """Raised by a handler: report ``REJECTED`` (the device refuses to run the command).

    Attributes:
        reason_code: The ``statusReason.reasonCode`` to report.
        description: The ``statusReason.reasonDescription``.
    """


# -- inbound ----------------------------------------------------------------------------------


def parse_aws_request(message: Message, thing_name: str) -> CommandExecution | None:
    """A :class:`CommandExecution` from a request PUBLISH on a thing's Commands topics.

    Returns ``None`` for topics that are not one of the three request streams of this thing.
    """
    parsed = parse_command_topic(message.topic)
    if parsed is None or parsed.device_id != thing_name or not parsed.rest:
        return None
    if parsed.rest[0] != "request" or len(parsed.rest) > 2:  # noqa: PLR2004
        return None
    try:
        fmt = PayloadFormat(parsed.rest[1] if len(parsed.rest) == 2 else "")  # noqa: PLR2004
    except ValueError:
        return None
    # MQTT 5 properties, where the transport's Message carries them.
    content_type = getattr(message, "content_type", None)
    expiry = getattr(message, "message_expiry_interval", None)
    return CommandExecution(
        execution_id=parsed.execution_id,
        payload=message.payload,
        content_type=content_type if isinstance(content_type, str) else fmt.content_type,
        timeout=expiry if isinstance(expiry, int) else None,
        scheme=CommandScheme.AWS,
        topic=message.topic,
    )


def parse_simple_request(
    topic: str, name: str, payload: bytes
) -> tuple[CommandExecution | None, str | None, str]:
    """Parse a simple-scheme request.

    Returns ``(execution, None, "")`` when valid, else ``(None, correlation_id, problem)``
    where ``correlation_id`` is what could be recovered (``None``: nobody can be answered).
    """
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None, "payload is not UTF-8 JSON"
    if not isinstance(body, dict):
        return None, None, "payload is not a JSON object"
    cid = body.get("correlationId")
    if not isinstance(cid, str) or not 0 < len(cid) <= _MAX_CORRELATION_ID:
        return None, None, f"correlationId must be a string of 1-{_MAX_CORRELATION_ID} characters"
    args = body.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, cid, "args must be a JSON object"
    execution = CommandExecution(
        execution_id=cid,
        payload=payload,
        content_type="application/json",
        scheme=CommandScheme.SIMPLE,
        topic=topic,
        name=name,
        args=args,
    )
    return execution, None, ""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What to do with an execution: run ``name`` with ``args``, or reject it."""

    name: str | None
    args: Mapping[str, Any]
    reject_code: str | None = None
    reject_description: str | None = None


def _reject(code: ReasonCode, description: str, name: str | None = None) -> Decision:
    return Decision(name, {}, str(code), description)


def decide(
    execution: CommandExecution,
    *,
    handlers: Collection[str],
    allow: Collection[str] | None,
    name_field: str,
) -> Decision:
    """Find the command name and arguments and check them against handlers and allow-list.

    AWS payloads must be JSON objects naming the command in ``name_field`` with optional
    ``args`` (an object); CBOR payloads are not dispatched.
    """
    if execution.scheme is CommandScheme.SIMPLE:
        name = execution.name or ""
        args: Mapping[str, Any] = execution.args or {}
    else:
        if execution.content_type == PayloadFormat.CBOR.content_type:
            return _reject(
                ReasonCode.UNSUPPORTED_CONTENT_TYPE, "CBOR commands are not dispatched by name"
            )
        try:
            body = execution.json()
        except (ValueError, UnicodeDecodeError):
            return _reject(ReasonCode.INVALID_PAYLOAD, "payload is not UTF-8 JSON")
        if not isinstance(body, dict):
            return _reject(ReasonCode.INVALID_PAYLOAD, "payload is not a JSON object")
        raw_name = body.get(name_field)
        if not isinstance(raw_name, str) or not raw_name:
            return _reject(
                ReasonCode.INVALID_PAYLOAD, f"payload has no command name in {name_field!r}"
            )
        name = raw_name
        raw_args = body.get("args", {})
        if raw_args is None:
            raw_args = {}
        if not isinstance(raw_args, dict):
            return _reject(ReasonCode.INVALID_PAYLOAD, "args must be a JSON object", name)
        args = raw_args
    shown = name[:64]
    if name not in handlers:
        return _reject(ReasonCode.UNKNOWN_COMMAND, f"no handler for command {shown!r}", name)
    if allow is not None and name not in allow:
        return _reject(ReasonCode.COMMAND_NOT_ALLOWED, f"command {shown!r} is not allowed", name)
    return Decision(name, args)


# -- outbound ---------------------------------------------------------------------------------


def status_reason(reason_code: str, description: str | None = None) -> dict[str, str]:
    """A ``statusReason`` object; the description is cleaned of control characters and cut.

    Raises:
        ValueError: The reason code does not match ``[A-Z0-9_-]{1,64}``.
    """
    if not _REASON_CODE.fullmatch(reason_code):
        raise ValueError(f"reason code {reason_code!r} must match [A-Z0-9_-]{{1,64}}")
    reason = {"reasonCode": reason_code}
    if description:
        reason["reasonDescription"] = _CONTROL.sub(" ", description)[:_MAX_DESCRIPTION]
    return reason


def encode_result(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A handler's result as the AWS ``result`` map (lowercase ``s``/``b``/``bin`` tags).

    Raises:
        ValueError: A key is not 1-32 of ``[a-zA-Z0-9_-]``, or a value is empty.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not _RESULT_KEY.fullmatch(key):
            raise ValueError(f"result key {key!r} must be 1-32 characters of [a-zA-Z0-9_-]")
        if isinstance(value, bool):
            out[key] = {"b": value}
        elif isinstance(value, bytes | bytearray | memoryview):
            if not bytes(value):
                raise ValueError(f"result {key!r}: binary values must not be empty")
            out[key] = {"bin": base64.b64encode(bytes(value)).decode()}
        else:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if not text:
                raise ValueError(f"result {key!r}: string values must not be empty")
            out[key] = {"s": text}
    return out


def aws_response_body(
    status: CommandStatus,
    *,
    reason_code: str | None = None,
    reason_description: str | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The UpdateCommandExecution body ``{status, statusReason?, result?}``.

    Raises:
        ValueError: Invalid reason code or result (see :func:`encode_result`).
    """
    body: dict[str, Any] = {"status": str(status)}
    if reason_code is not None:
        body["statusReason"] = status_reason(reason_code, reason_description)
    elif reason_description:
        raise ValueError("a reason description needs a reason code")
    if result:
        body["result"] = encode_result(result)
    return body


def _json_default(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def simple_response_body(
    correlation_id: str | None,
    status: CommandStatus,
    *,
    reason_code: str | None = None,
    reason_description: str | None = None,
    result: Mapping[str, Any] | None = None,
) -> bytes:
    """The simple scheme's response ``{correlationId, status, result | reason}``.

    ``reason`` is ``{"code", "description"}``; ``result`` is sent with ``SUCCEEDED`` (and
    ``IN_PROGRESS``) only.

    Raises:
        ValueError: Invalid reason code; TypeError: a result value is not JSON-serializable.
    """
    body: dict[str, Any] = {"correlationId": correlation_id, "status": str(status)}
    if reason_code is not None:
        reason = status_reason(reason_code, reason_description)
        body["reason"] = {
            "code": reason["reasonCode"],
            "description": reason.get("reasonDescription", ""),
        }
    elif status in (CommandStatus.SUCCEEDED, CommandStatus.IN_PROGRESS):
        body["result"] = dict(result or {})
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()
