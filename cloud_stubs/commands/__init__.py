"""AWS IoT Device Management Commands (``iot_core_protocol.md`` §9), the service side.

Static-payload commands, executions delivered on the content-type's request topic, device
updates validated and acknowledged, the cloud timeout, ``$aws/events/commandExecution``
events, and a control plane (:func:`commands_control` in-process, ``cloud-stubs commands``
on the command line)::

    async with LocalIoTCore("state") as core:
        await commands_control(core, "create-command", command_id="reboot",
                               payload=base64.b64encode(b'{"name": "reboot"}').decode(),
                               content_type="application/json")
        started = await commands_control(core, "start-execution", command_id="reboot",
                                         thing="robot-1", timeout_s=30)
        await commands_control(core, "get-execution", execution_id=started["executionId"],
                               thing="robot-1", include_result=True)
"""

from cloud_stubs.commands._control import NEEDS_RUNNING_STUB, commands_control, commands_request
from cloud_stubs.commands._model import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    NO_RESPONSE_REASON,
    Command,
    CommandsError,
    ConflictError,
    DeviceUpdate,
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
from cloud_stubs.commands._service import CONTROL_PREFIX, CommandsService, run_control
from cloud_stubs.commands._store import CommandsStore

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_TIMEOUT_S",
    "MAX_TIMEOUT_S",
    "NEEDS_RUNNING_STUB",
    "NO_RESPONSE_REASON",
    "Command",
    "CommandsError",
    "CommandsService",
    "CommandsStore",
    "ConflictError",
    "DeviceUpdate",
    "Execution",
    "ExecutionStatus",
    "ResourceNotFoundError",
    "UpdateRejected",
    "ValidationError",
    "apply_update",
    "commands_control",
    "commands_request",
    "event",
    "execution_view",
    "message_expiry",
    "new_command",
    "request_topic",
    "run_control",
    "time_out",
    "validate_update",
]
