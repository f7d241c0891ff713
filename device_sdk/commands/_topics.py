"""Topic builders and parsers for both command schemes.

AWS IoT Device Management Commands (``iot_core_protocol.md`` §9.2), for a thing ``T``::

    $aws/commands/things/T/executions/+/request/json     JSON payloads        (subscribe)
    $aws/commands/things/T/executions/+/request/cbor     CBOR payloads        (subscribe)
    $aws/commands/things/T/executions/+/request          any other type       (subscribe)
    $aws/commands/things/T/executions/<ex>/response/json UpdateCommandExecution (publish)
    $aws/commands/things/T/executions/+/response/accepted/json, .../rejected/json (subscribe)

These are the three request filters AWS's reference clients (Java/C++
``createCommandExecutions{Json,Cbor,Generic}PayloadStream``) subscribe to; ``…/request/#``
would cover all three in one filter but IoT Core's acceptance of it is unverified.

The simple scheme on the device's own topics (for brokers without the Commands service)::

    cmd/T/request/<name>    {"correlationId": "...", "args": {...}}
    cmd/T/response/<name>   {"correlationId": "...", "status": "...", "result"|"reason": ...}
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "CommandTopics",
    "DeviceKind",
    "ParsedCommandTopic",
    "PayloadFormat",
    "SimpleCommandTopics",
    "command_topics",
    "parse_command_topic",
    "simple_command_topics",
]


class DeviceKind(enum.StrEnum):
    """Whether an execution targets a registered thing or a bare MQTT client id."""

    THING = "things"
    CLIENT = "clients"


class PayloadFormat(enum.StrEnum):
    """The request stream an execution arrived on (by the command's content type)."""

    JSON = "json"
    CBOR = "cbor"
    GENERIC = ""
    """Any content type other than ``application/json`` and ``application/cbor``."""

    @property
    def content_type(self) -> str | None:
        """The content type the stream implies (``None``: unknown, see MQTT 5 Content Type)."""
        if self is PayloadFormat.JSON:
            return "application/json"
        if self is PayloadFormat.CBOR:
            return "application/cbor"
        return None


def _check_level(value: str, what: str) -> None:
    if not value or any(c in value for c in "/+#\x00"):
        raise ValueError(f"invalid {what} {value!r}: empty or contains '/', '+', '#'")


@dataclasses.dataclass(frozen=True, slots=True)
class CommandTopics:
    """The AWS Commands topics of one target (``$aws/commands/<kind>/<id>/executions``)."""

    kind: DeviceKind
    device_id: str

    def __post_init__(self) -> None:
        _check_level(self.device_id, "device id")

    @property
    def base(self) -> str:
        """``$aws/commands/<kind>/<id>/executions``."""
        return f"$aws/commands/{self.kind}/{self.device_id}/executions"

    def request_filter(self, fmt: PayloadFormat) -> str:
        """The request stream filter for one payload format."""
        suffix = f"/{fmt}" if fmt else ""
        return f"{self.base}/+/request{suffix}"

    def request(self, execution_id: str, fmt: PayloadFormat) -> str:
        """The request topic of one execution (what the service publishes)."""
        _check_level(execution_id, "execution id")
        suffix = f"/{fmt}" if fmt else ""
        return f"{self.base}/{execution_id}/request{suffix}"

    def response(self, execution_id: str, fmt: str = "json") -> str:
        """Where the device publishes UpdateCommandExecution."""
        _check_level(execution_id, "execution id")
        return f"{self.base}/{execution_id}/response/{fmt}"

    def accepted(self, execution_id: str, fmt: str | None = "json") -> str:
        """The service's acknowledgement of an update (``fmt=None``: the suffix-less variant)."""
        return f"{self.base}/{execution_id}/response/accepted" + (f"/{fmt}" if fmt else "")

    def rejected(self, execution_id: str, fmt: str | None = "json") -> str:
        """The service's refusal of an update (``fmt=None``: the suffix-less variant)."""
        return f"{self.base}/{execution_id}/response/rejected" + (f"/{fmt}" if fmt else "")

    def reply_filters(self, fmt: str | None = "json") -> tuple[str, str]:
        """Filters for every execution's accepted and rejected replies.

        ``fmt=None`` gives the suffix-less ``…/response/accepted|rejected`` topics of the
        reserved-topic catalogue (8 levels instead of 9).
        """
        return (self.accepted("+", fmt), self.rejected("+", fmt))


def command_topics(thing_name: str) -> CommandTopics:
    """The Commands topics of a thing target.

    Raises:
        ValueError: The name is empty or contains ``/``, ``+`` or ``#``.
    """
    return CommandTopics(DeviceKind.THING, thing_name)


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedCommandTopic:
    """A ``$aws/commands/...`` topic split into its parts.

    ``rest`` holds the levels after the execution id, e.g. ``("request", "json")`` or
    ``("response", "accepted", "json")``.
    """

    kind: DeviceKind
    device_id: str
    execution_id: str
    rest: tuple[str, ...]


_MIN_LEVELS = 7  # $aws/commands/<kind>/<id>/executions/<ex>/<op>


def parse_command_topic(topic: str) -> ParsedCommandTopic | None:
    """Split a Commands topic (level 5, 0-based, is the execution id, as in AWS's SDKs)."""
    levels = topic.split("/")
    if len(levels) < _MIN_LEVELS or levels[0] != "$aws" or levels[1] != "commands":
        return None
    if levels[4] != "executions" or not levels[3] or not levels[5]:
        return None
    try:
        kind = DeviceKind(levels[2])
    except ValueError:
        return None
    return ParsedCommandTopic(kind, levels[3], levels[5], tuple(levels[6:]))


@dataclasses.dataclass(frozen=True, slots=True)
class SimpleCommandTopics:
    """The ``<prefix>/<thing>/request|response/<name>`` scheme on the device's own topics."""

    thing_name: str
    prefix: str = "cmd"

    def __post_init__(self) -> None:
        _check_level(self.thing_name, "thing name")
        if not self.prefix or any(c in self.prefix for c in "+#"):
            raise ValueError(f"invalid command topic prefix {self.prefix!r}")

    @property
    def request_filter(self) -> str:
        """``cmd/<thing>/request/+``."""
        return f"{self.prefix}/{self.thing_name}/request/+"

    def request(self, name: str) -> str:
        """The request topic of command ``name``."""
        _check_level(name, "command name")
        return f"{self.prefix}/{self.thing_name}/request/{name}"

    def response(self, name: str) -> str:
        """The response topic of command ``name``."""
        _check_level(name, "command name")
        return f"{self.prefix}/{self.thing_name}/response/{name}"

    @property
    def response_filter(self) -> str:
        """``cmd/<thing>/response/+`` (what a requester subscribes to)."""
        return f"{self.prefix}/{self.thing_name}/response/+"

    def command_name(self, topic: str) -> str | None:
        """The command name of a request topic, or ``None`` if it is not one."""
        head = f"{self.prefix}/{self.thing_name}/request/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None


def simple_command_topics(thing_name: str, prefix: str = "cmd") -> SimpleCommandTopics:
    """The simple scheme's topics for a thing.

    Raises:
        ValueError: The name or prefix is not usable in a topic.
    """
    return SimpleCommandTopics(thing_name, prefix)
