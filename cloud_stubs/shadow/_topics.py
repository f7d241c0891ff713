"""Shadow MQTT topic grammar: parse request topics, build response topics (spec §2.1).

Request topics are ``$aws/things/{thing}/shadow/{op}`` (classic shadow) and
``$aws/things/{thing}/shadow/name/{shadow}/{op}`` (named shadow) with ``op`` one of
``get``, ``update``, ``delete``. Everything else, including the service's own response
topics (``…/update/accepted``, ``…/update/delta``, …), is not a request.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_SHADOW_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,64}")


def is_valid_thing_name(name: str) -> bool:
    """Return True for a valid thing name: 1-128 characters of ``[a-zA-Z0-9:_-]``."""
    return _THING_NAME.fullmatch(name) is not None


def is_valid_shadow_name(name: str) -> bool:
    """Return True for a valid named-shadow name: 1-64 characters of ``[a-zA-Z0-9:_-]``.

    ``$``-prefixed names (admitted by the API model, reserved by AWS) are refused.
    """
    return _SHADOW_NAME.fullmatch(name) is not None


class ShadowOperation(StrEnum):
    """A shadow request operation; the value is the topic segment."""

    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


def shadow_prefix(thing_name: str, shadow_name: str | None = None) -> str:
    """Return the topic prefix of a classic (``shadow_name=None``) or named shadow.

    Args:
        thing_name: The thing name.
        shadow_name: The shadow name, ``None`` for the classic shadow.

    Returns:
        ``$aws/things/T/shadow`` or ``$aws/things/T/shadow/name/N``.
    """
    if shadow_name is None:
        return f"$aws/things/{thing_name}/shadow"
    return f"$aws/things/{thing_name}/shadow/name/{shadow_name}"


def shadow_topic(thing_name: str, shadow_name: str | None, suffix: str) -> str:
    """Return ``shadow_prefix(thing_name, shadow_name) + "/" + suffix``.

    Args:
        thing_name: The thing name.
        shadow_name: The shadow name, ``None`` for the classic shadow.
        suffix: E.g. ``"update/accepted"`` (a :class:`ShadowMessage` topic suffix).

    Returns:
        The full topic.
    """
    return f"{shadow_prefix(thing_name, shadow_name)}/{suffix}"


@dataclass(frozen=True, slots=True)
class ShadowRequestTopic:
    """A parsed shadow request topic.

    Attributes:
        thing_name: The thing name (validated).
        shadow_name: The shadow name (validated), ``None`` for the classic shadow.
        operation: The requested operation.
    """

    thing_name: str
    shadow_name: str | None
    operation: ShadowOperation

    @property
    def prefix(self) -> str:
        """The shadow's topic prefix."""
        return shadow_prefix(self.thing_name, self.shadow_name)

    def response_topic(self, suffix: str) -> str:
        """Return the full topic for a response suffix such as ``"get/accepted"``."""
        return shadow_topic(self.thing_name, self.shadow_name, suffix)


def parse_shadow_topic(topic: str) -> ShadowRequestTopic | None:
    """Parse a shadow request topic.

    Args:
        topic: An MQTT topic name.

    Returns:
        The parsed request, or ``None`` when ``topic`` is not a shadow request topic
        (another service, a response/delta/documents topic, an unknown operation, or an
        invalid thing/shadow name).
    """
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "shadow":  # noqa: PLR2004
        return None
    thing_name = parts[2]
    rest = parts[4:]
    shadow_name: str | None = None
    if len(rest) == 3 and rest[0] == "name":  # noqa: PLR2004
        shadow_name = rest[1]
        rest = rest[2:]
        if not is_valid_shadow_name(shadow_name):
            return None
    if len(rest) != 1 or not is_valid_thing_name(thing_name):
        return None
    try:
        operation = ShadowOperation(rest[0])
    except ValueError:
        return None
    return ShadowRequestTopic(thing_name, shadow_name, operation)
