"""Commands, device side: AWS IoT Device Management Commands and a simple ``cmd/`` scheme.

**AWS IoT Commands** (``iot_core_protocol.md`` §9): the service publishes a command's raw
payload to ``$aws/commands/things/<thing>/executions/<id>/request[/json|/cbor]``; the device
answers with ``{status, statusReason{reasonCode, reasonDescription}, result{key: {s|b|bin}}}``
on ``…/executions/<id>/response/json`` and the service acknowledges on
``…/response/accepted|rejected/json``. For dispatch by name, a JSON command payload names
the command in a field (``"name"`` by default) and carries its arguments in ``"args"``::

    {"name": "set-led", "args": {"color": "red"}}

**Simple scheme** for brokers without the Commands service, on the device's own topics::

    cmd/<thing>/request/<name>   {"correlationId": "c-1", "args": {"color": "red"}}
    cmd/<thing>/response/<name>  {"correlationId": "c-1", "status": "SUCCEEDED", "result": {...}}
                                 {"correlationId": "c-1", "status": "REJECTED",
                                  "reason": {"code": "UNKNOWN_COMMAND", "description": "..."}}

Statuses are those of AWS (``IN_PROGRESS`` is only sent on the AWS scheme by the dispatcher).

Both share one handler registry and allow-list::

    async def set_led(request: CommandRequest) -> dict[str, object]:
        led.set(request.args["color"])
        return {"color": request.args["color"]}

    commands = Commands(device, allow={"set-led"})
    commands.register("set-led", set_led, timeout_s=5)
    async with commands:
        await commands.serve()

Unknown or not-allowed commands and malformed payloads are REJECTED with a reason code
(:class:`ReasonCode`); a handler that raises :class:`CommandFailedError` reports FAILED, one
that raises :class:`CommandRejectedError` REJECTED, one that runs too long TIMED_OUT (a
device-reported, terminal TIMED_OUT), and any other exception FAILED with ``HANDLER_ERROR``.
"""

from device_sdk.commands._client import Commands, CommandsStatistics
from device_sdk.commands._model import (
    CommandExecution,
    CommandFailedError,
    CommandHandler,
    CommandRejectedError,
    CommandRequest,
    CommandScheme,
    CommandStatus,
    Decision,
    ReasonCode,
    aws_response_body,
    decide,
    encode_result,
    parse_aws_request,
    parse_simple_request,
    simple_response_body,
    status_reason,
)
from device_sdk.commands._topics import (
    CommandTopics,
    DeviceKind,
    ParsedCommandTopic,
    PayloadFormat,
    SimpleCommandTopics,
    command_topics,
    parse_command_topic,
    simple_command_topics,
)

__all__ = [
    "CommandExecution",
    "CommandFailedError",
    "CommandHandler",
    "CommandRejectedError",
    "CommandRequest",
    "CommandScheme",
    "CommandStatus",
    "CommandTopics",
    "Commands",
    "CommandsStatistics",
    "Decision",
    "DeviceKind",
    "ParsedCommandTopic",
    "PayloadFormat",
    "ReasonCode",
    "SimpleCommandTopics",
    "aws_response_body",
    "command_topics",
    "decide",
    "encode_result",
    "parse_aws_request",
    "parse_command_topic",
    "parse_simple_request",
    "simple_command_topics",
    "simple_response_body",
    "status_reason",
]
