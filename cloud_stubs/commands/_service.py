"""AWS IoT Commands service: the MQTT shell over :mod:`cloud_stubs.commands._model`.

Devices publish ``UpdateCommandExecution`` on ``$aws/commands/<kind>/<id>/executions/<ex>/
response/json``; the service answers on ``…/response/accepted/json`` or
``…/response/rejected/json`` (to every authorized subscriber, §9.5) and publishes
``$aws/events/commandExecution/<commandId>/<status>`` events. Executions still ``CREATED`` or
``IN_PROGRESS`` at their deadline become ``TIMED_OUT`` (``$NO_RESPONSE_FROM_DEVICE``) on the
next timer tick (about once a second).

Operators use the control plane in-process (:meth:`CommandsService.control`) or over MQTT
with the stub's privileged identity on ``cloud-stubs/control/commands/<op>`` (JSON with a
``clientToken``; the reply goes to ``cloud-stubs/control/commands/<op>/reply``). Operations:

``create-command``   ``command_id``, ``payload`` (base64), ``content_type``, ``display_name``,
                     ``description`` → the command (GetCommand shape)
``get-command``      ``command_id``;  ``list-commands``;  ``delete-command`` ``command_id``
``update-command``   ``command_id``, ``deprecated``, ``display_name``, ``description``
``start-execution``  ``command_id``, ``thing`` or ``client_id``, ``timeout_s`` (1-43200,
                     default 10) → ``{"executionId"}``; publishes the request and an event
``get-execution``    ``execution_id``, ``thing`` or ``client_id``, ``include_result``
``list-executions``  optional ``command_id``, ``thing``/``client_id``, ``status``,
                     ``sort_order`` (ASCENDING | DESCENDING) → ``{"commandExecutions": [...]}``
``delete-execution`` ``execution_id``, ``thing`` or ``client_id`` (terminal executions only)

The request PUBLISH carries the payload bytes unchanged and, on MQTT 5, the Content Type and
Message Expiry Interval properties (seconds left). Deviations: replies go to the
suffix-less ``…/response/accepted|rejected`` topics while the brokers refuse 9-level topics
(:func:`reply_topic`); CBOR updates
(``…/response/cbor``) are answered on ``…/response/rejected/cbor`` with a JSON
``InvalidRequest`` body; dynamic commands (payload templates) are not implemented.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs.broker._embedded_iot import topic_problem
from cloud_stubs.commands._model import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    CommandsError,
    ConflictError,
    Execution,
    ExecutionStatus,
    ResourceNotFoundError,
    UpdateRejected,
    ValidationError,
    apply_update,
    event,
    execution_view,
    message_expiry,
    new_command,
    request_topic,
    time_out,
    validate_update,
)
from cloud_stubs.commands._store import CommandsStore
from cloud_stubs.services._runtime import Outgoing, Request

__all__ = ["CONTROL_PREFIX", "CommandsService", "reply_topic", "run_control"]

_log = logging.getLogger(__name__)

CONTROL_PREFIX = "cloud-stubs/control/commands"
_RESPONSE = re.compile(
    r"^\$aws/commands/(things|clients)/([^/]+)/executions/([^/]+)/response/([^/]+)$"
)
_TARGET_ID = re.compile(r"^[^/+#\x00]{1,128}$")


def reply_topic(base: str, verdict: str, fmt: str) -> str:
    """Where to answer an update: ``…/response/<verdict>/<fmt>`` (§9.5).

    That topic has 9 levels. Where the brokers' topic rule refuses it (they apply IoT Core's
    8-level limit for customer topics to reserved ones too), the suffix-less
    ``…/response/<verdict>`` of the reserved-topic catalogue is used instead: publishing a
    refused topic would cost the service its connection on the embedded broker.
    """
    topic = f"{base}/{verdict}/{fmt}"
    if topic_problem(topic) is None:
        return topic
    _warn_suffixless()
    return f"{base}/{verdict}"


@functools.cache
def _warn_suffixless() -> None:
    _log.warning(
        "commands: the brokers refuse 9-level topics; update replies go to the suffix-less "
        ".../response/accepted|rejected topics instead of .../response/accepted|rejected/json"
    )


def _json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _event_message(execution: Execution, now: float) -> Outgoing:
    topic, body = event(execution, now)
    return Outgoing(topic, _json(body))


def _target(args: dict[str, Any]) -> tuple[str, str]:
    thing, client = args.get("thing"), args.get("client_id")
    if (thing is None) == (client is None):
        raise ValidationError("give exactly one of thing or client_id")
    kind, value = ("things", thing) if thing is not None else ("clients", client)
    if not isinstance(value, str) or not _TARGET_ID.fullmatch(value):
        raise ValidationError(f"invalid target {value!r}")
    return kind, value


def _str_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} is required")
    return value


def _execution_for(store: CommandsStore, args: dict[str, Any]) -> Execution:
    execution_id = _str_arg(args, "execution_id")
    kind, target_id = _target(args)
    execution = store.get_execution(execution_id)
    if execution is None or (execution.target_kind, execution.target_id) != (kind, target_id):
        raise ResourceNotFoundError(f"no execution {execution_id} for {kind}/{target_id}")
    return execution


def _start(
    store: CommandsStore, registry: Registry, args: dict[str, Any], now: float
) -> tuple[Any, list[Outgoing]]:
    command_id = _str_arg(args, "command_id")
    command = store.get_command(command_id)
    if command is None:
        raise ResourceNotFoundError(f"command {command_id} does not exist")
    if command.deprecated:
        raise ValidationError(f"command {command_id} is deprecated")
    kind, target_id = _target(args)
    if kind == "things" and not registry.has_thing(target_id):
        raise ResourceNotFoundError(f"thing {target_id} does not exist")
    timeout = args.get("timeout_s")
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise ValidationError("timeout_s must be an integer")
    if not 1 <= timeout <= MAX_TIMEOUT_S:
        raise ValidationError(f"timeout_s must be within 1..{MAX_TIMEOUT_S}")
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        command_id=command_id,
        target_kind=kind,
        target_id=target_id,
        status=ExecutionStatus.CREATED,
        timeout_s=timeout,
        created_at=now,
        last_updated_at=now,
        deadline=now + timeout,
    )
    store.put_execution(execution)
    request = Outgoing(
        request_topic(kind, target_id, execution.execution_id, command.content_type),
        command.payload,
        content_type=command.content_type,
        message_expiry_s=message_expiry(execution.deadline, now),
    )
    return {"executionId": execution.execution_id}, [request, _event_message(execution, now)]


def _create_command(store: CommandsStore, args: dict[str, Any], now: float) -> Any:
    raw = args.get("payload", "")
    if not isinstance(raw, str):
        raise ValidationError("payload must be base64 text")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("payload must be base64") from None
    command = new_command(
        _str_arg(args, "command_id"),
        payload,
        content_type=args.get("content_type"),
        now=now,
        display_name=args.get("display_name"),
        description=args.get("description"),
    )
    if not store.insert_command(command):
        raise ConflictError(f"command {command.command_id} already exists")
    return command.view()


def _update_command(store: CommandsStore, args: dict[str, Any], now: float) -> Any:
    command_id = _str_arg(args, "command_id")
    command = store.get_command(command_id)
    if command is None:
        raise ResourceNotFoundError(f"command {command_id} does not exist")
    if args.get("deprecated") is not None:
        command.deprecated = bool(args["deprecated"])
    if args.get("display_name") is not None:
        command.display_name = str(args["display_name"])
    if args.get("description") is not None:
        command.description = str(args["description"])
    command.last_updated_at = now
    store.update_command(command)
    return command.view()


def run_control(
    store: CommandsStore, registry: Registry, op: str, args: dict[str, Any], now: float
) -> tuple[Any, list[Outgoing]]:
    """Apply one control-plane operation; return (result, messages to publish).

    Raises:
        CommandsError: ``ValidationError``, ``ResourceNotFoundError`` or ``ConflictError``.
        ValueError: Unknown operation.
    """
    if op == "create-command":
        return _create_command(store, args, now), []
    if op == "get-command":
        command_id = _str_arg(args, "command_id")
        command = store.get_command(command_id)
        if command is None:
            raise ResourceNotFoundError(f"command {command_id} does not exist")
        return command.view(), []
    if op == "list-commands":
        return {"commands": [c.view(with_payload=False) for c in store.list_commands()]}, []
    if op == "update-command":
        return _update_command(store, args, now), []
    if op == "delete-command":
        command_id = _str_arg(args, "command_id")
        if not store.delete_command(command_id):
            raise ResourceNotFoundError(f"command {command_id} does not exist")
        return {"commandId": command_id, "deleted": True}, []
    if op == "start-execution":
        return _start(store, registry, args, now)
    if op == "get-execution":
        execution = _execution_for(store, args)
        return execution_view(execution, include_result=bool(args.get("include_result"))), []
    if op == "list-executions":
        return _list_executions(store, args), []
    if op == "delete-execution":
        execution = _execution_for(store, args)
        if not execution.terminal:
            raise ConflictError(f"execution {execution.execution_id} is not terminal")
        store.delete_execution(execution.execution_id)
        return {"executionId": execution.execution_id, "deleted": True}, []
    raise ValueError(f"unknown commands control operation {op!r}")


def _list_executions(store: CommandsStore, args: dict[str, Any]) -> Any:
    target = None
    if args.get("thing") is not None or args.get("client_id") is not None:
        target = _target(args)
    status = args.get("status")
    try:
        wanted = ExecutionStatus(status) if status is not None else None
    except ValueError:
        raise ValidationError(f"unknown status {status!r}") from None
    order = args.get("sort_order") or "DESCENDING"
    if order not in ("ASCENDING", "DESCENDING"):
        raise ValidationError("sort_order must be ASCENDING or DESCENDING")
    executions = store.list_executions(
        command_id=args.get("command_id"),
        target=target,
        status=wanted,
        ascending=order == "ASCENDING",
    )
    summaries = []
    for e in executions:
        view = execution_view(e, include_result=False)
        summaries.append(
            {
                k: view[k]
                for k in (
                    "commandArn",
                    "executionId",
                    "targetArn",
                    "status",
                    "createdAt",
                    "startedAt",
                    "completedAt",
                )
                if k in view
            }
        )
    return {"commandExecutions": summaries}


class CommandsService:
    """The Commands device API, the cloud timeout and the control plane."""

    name = "commands"

    def __init__(self, paths: StatePaths, *, clock: Callable[[], float] = time.time) -> None:
        """Open the store and the registry."""
        self._store = CommandsStore(paths)
        self._registry = Registry(paths)
        self._clock = clock

    @property
    def store(self) -> CommandsStore:
        """The commands database."""
        return self._store

    @property
    def filters(self) -> Sequence[str]:
        """Device updates (every response format) and the control topics."""
        return ("$aws/commands/+/+/executions/+/response/+", f"{CONTROL_PREFIX}/+")

    def accepts(self, topic: str) -> bool:
        """Device update topics (not the replies) and control requests."""
        if topic.startswith(CONTROL_PREFIX + "/"):
            return topic.count("/") == CONTROL_PREFIX.count("/") + 1
        m = _RESPONSE.match(topic)
        return m is not None and m.group(4) not in ("accepted", "rejected")

    def close(self) -> None:
        """Close the databases."""
        self._store.close()
        self._registry.close()

    async def handle(self, request: Request) -> list[Outgoing]:
        """A device's UpdateCommandExecution or a control request."""
        now = self._clock()
        if request.topic.startswith(CONTROL_PREFIX + "/"):
            return self._control_request(request)
        return self._device_update(request.topic, request.payload, now)

    def _device_update(self, topic: str, payload: bytes, now: float) -> list[Outgoing]:
        m = _RESPONSE.match(topic)
        if m is None:  # pragma: no cover - accepts() filtered it
            return []
        kind, target_id, ex, fmt = m.groups()
        base = f"$aws/commands/{kind}/{target_id}/executions/{ex}/response"
        reply_fmt = fmt if fmt in ("json", "cbor") else "json"

        def rejected(err: UpdateRejected) -> list[Outgoing]:
            _log.info("commands: rejected update of %s: %s", ex, err)
            return [Outgoing(reply_topic(base, "rejected", reply_fmt), _json(err.body(ex)))]

        if fmt not in ("json", "cbor"):
            return rejected(UpdateRejected("InvalidTopic", f"Unknown response format {fmt!r}"))
        execution = self._store.get_execution(ex)
        if execution is None or (execution.target_kind, execution.target_id) != (kind, target_id):
            return rejected(
                UpdateRejected("ResourceNotFound", f"No command execution {ex} for {target_id}")
            )
        if fmt == "cbor":
            return rejected(
                UpdateRejected("InvalidRequest", "CBOR updates are not supported by the stub")
            )
        try:
            update = validate_update(payload)
            event_due = apply_update(execution, update, now)
        except UpdateRejected as err:
            return rejected(err)
        self._store.put_execution(execution)
        out = [Outgoing(reply_topic(base, "accepted", reply_fmt), _json({"executionId": ex}))]
        if event_due:
            out.append(_event_message(execution, now))
        return out

    def control(self, op: str, args: dict[str, Any]) -> tuple[Any, list[Outgoing]]:
        """In-process control plane: (result, messages to publish).

        Raises:
            CommandsError: A refused operation (``code``, ``http_status``).
            ValueError: Unknown operation.
        """
        return run_control(self._store, self._registry, op, args, self._clock())

    def _control_request(self, request: Request) -> list[Outgoing]:
        op = request.topic.rsplit("/", 1)[1]
        reply_topic = f"{CONTROL_PREFIX}/{op}/reply"
        token = None
        msgs: list[Outgoing] = []
        try:
            body = json.loads(request.payload or b"{}")
            if not isinstance(body, dict):
                raise ValidationError("request must be a JSON object")
            token = body.pop("clientToken", None)
            result, msgs = self.control(op, body)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except CommandsError as exc:
            reply = {"ok": False, "error": exc.code, "message": str(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            reply = {"ok": False, "error": "ValidationException", "message": str(exc)}
        reply["clientToken"] = token
        return [Outgoing(reply_topic, _json(reply)), *msgs]

    async def tick(self, now: float) -> list[Outgoing]:
        """Time out executions the device did not finish in time."""
        due = self._store.next_deadline()
        if due is None or due > now:
            return []
        out = []
        for execution in self._store.due_executions(now):
            if time_out(execution, now):
                self._store.put_execution(execution)
                out.append(_event_message(execution, now))
        return out
