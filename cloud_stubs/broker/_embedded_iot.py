"""AWS IoT Core message-broker rules the embedded broker applies (pure code, no I/O).

Topic matching and validation, limits, keep-alive clamping, disconnect reasons and the presence
(lifecycle) event payloads, as described in ``iot_core_protocol.md`` §5.
"""

from __future__ import annotations

import enum
import functools
import json
import math

__all__ = [
    "MAX_CLIENT_ID_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "DisconnectReason",
    "FilterTrie",
    "clamp_keep_alive",
    "connected_event",
    "disconnected_event",
    "filter_problem",
    "has_lifecycle_events",
    "keep_alive_deadline",
    "presence_topic",
    "topic_matches",
    "topic_problem",
]

#: IoT Core payload limit (128 KB); larger publishes are rejected.
MAX_PAYLOAD_BYTES = 128 * 1024
#: Client ids longer than this (UTF-8 bytes) are rejected.
MAX_CLIENT_ID_BYTES = 128
#: Topic names and filters longer than this (UTF-8 bytes) are rejected.
MAX_TOPIC_BYTES = 256
#: At most this many ``/`` in a topic or filter (8 levels).
MAX_TOPIC_SLASHES = 7
#: Subscriptions one connection may hold.
MAX_SUBSCRIPTIONS_PER_CONNECTION = 50
#: Keep-alive bounds (seconds); 0 and values above the maximum become the maximum.
KEEP_ALIVE_MIN = 30
KEEP_ALIVE_MAX = 1200

_BASIC_INGEST = "$aws/rules/"


class DisconnectReason(enum.StrEnum):
    """``disconnectReason`` values of IoT Core's disconnect lifecycle event."""

    AUTH_ERROR = "AUTH_ERROR"
    CLIENT_ERROR = "CLIENT_ERROR"
    CLIENT_INITIATED_DISCONNECT = "CLIENT_INITIATED_DISCONNECT"
    CONNECTION_LOST = "CONNECTION_LOST"
    DUPLICATE_CLIENTID = "DUPLICATE_CLIENTID"
    FORBIDDEN_ACCESS = "FORBIDDEN_ACCESS"
    MQTT_KEEP_ALIVE_TIMEOUT = "MQTT_KEEP_ALIVE_TIMEOUT"
    SERVER_INITIATED_DISCONNECT = "SERVER_INITIATED_DISCONNECT"


def _counted_part(topic: str) -> str:
    """The part of a topic the length limits apply to (Basic Ingest's prefix is not counted)."""
    if topic.startswith(_BASIC_INGEST):
        rest = topic[len(_BASIC_INGEST) :]
        _rule, sep, tail = rest.partition("/")
        return tail if sep else ""
    return topic


def _limits_problem(topic: str) -> str | None:
    counted = _counted_part(topic)
    if len(counted.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"longer than {MAX_TOPIC_BYTES} bytes"
    reserved = topic.startswith("$aws/") and not topic.startswith("$aws/rules/")
    if not reserved and counted.count("/") > MAX_TOPIC_SLASHES:  # AWS's reserved topics exempt
        return f"more than {MAX_TOPIC_SLASHES} slashes"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` may not be published to, or None when it may (policy aside)."""
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcard in a topic name"
    if "\x00" in topic:
        return "NUL character in a topic name"
    return _limits_problem(topic)


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` may not be subscribed to, or None when it may (policy aside)."""
    if not topic_filter:
        return "empty topic filter"
    if "\x00" in topic_filter:
        return "NUL character in a topic filter"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be alone in the last level"
        if "+" in level and level != "+":
            return "'+' must be alone in its level"
    return _limits_problem(topic_filter)


@functools.lru_cache(maxsize=8192)
def _filter_levels(topic_filter: str) -> tuple[str, ...]:
    return tuple(topic_filter.split("/"))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """IoT Core topic matching.

    As MQTT, except that ``a/#`` does not match ``a`` itself (IoT Core deviates from the MQTT
    specification there). A filter whose first level is a wildcard never matches a topic that
    starts with ``$`` [MQTT-4.7.2-1].
    """
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    levels = _filter_levels(topic_filter)
    parts = topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            # ``a/#`` needs at least one more level (``a/`` counts: its last level is empty).
            return len(parts) > index or index == 0
        if index >= len(parts):
            return False
        if level not in ("+", parts[index]):
            return False
    return len(parts) == len(levels)


class _Node:
    __slots__ = ("children", "topic_filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.topic_filter: str | None = None


class FilterTrie:
    """A set of topic filters that finds the ones matching a topic without trying each.

    Same rules as :func:`topic_matches`: ``a/#`` needs at least one level below ``a``, and
    a leading wildcard does not match a ``$`` topic.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._root = _Node()
        self._size = 0

    def __len__(self) -> int:
        """Number of filters."""
        return self._size

    def add(self, topic_filter: str) -> None:
        """Add a filter (no-op when present)."""
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        if node.topic_filter is None:
            node.topic_filter = topic_filter
            self._size += 1

    def discard(self, topic_filter: str) -> None:
        """Remove a filter (no-op when absent) and prune empty branches."""
        levels = topic_filter.split("/")
        path = [self._root]
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        if path[-1].topic_filter is None:
            return
        path[-1].topic_filter = None
        self._size -= 1
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.children or node.topic_filter is not None:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def clear(self) -> None:
        """Remove every filter."""
        self._root = _Node()
        self._size = 0

    def match(self, topic: str) -> list[str]:
        """The filters matching ``topic``."""
        parts = topic.split("/")
        out: list[str] = []
        self._walk(self._root, parts, 0, topic.startswith("$"), out)
        return out

    def _walk(
        self, node: _Node, parts: list[str], index: int, dollar: bool, out: list[str]
    ) -> None:
        if index == len(parts):
            if node.topic_filter is not None:
                out.append(node.topic_filter)
            return
        if not (dollar and index == 0):
            rest = node.children.get("#")
            if rest is not None and rest.topic_filter is not None:
                out.append(rest.topic_filter)
            one = node.children.get("+")
            if one is not None:
                self._walk(one, parts, index + 1, dollar, out)
        exact = node.children.get(parts[index])
        if exact is not None:
            self._walk(exact, parts, index + 1, dollar, out)


def clamp_keep_alive(
    requested: int, *, low: int = KEEP_ALIVE_MIN, high: int = KEEP_ALIVE_MAX
) -> int:
    """The keep-alive IoT Core uses: 0 or above ``high`` gives ``high``, below ``low`` ``low``."""
    if requested <= 0 or requested > high:
        return high
    return max(requested, low)


def keep_alive_deadline(keep_alive: int) -> int:
    """Seconds of silence after which the connection is closed (1.5 times the keep-alive)."""
    return math.ceil(keep_alive * 1.5)


def has_lifecycle_events(client_id: str) -> bool:
    """Client ids containing ``#`` or ``+`` get no lifecycle events."""
    return "#" not in client_id and "+" not in client_id


def presence_topic(event: str, client_id: str) -> str:
    """``$aws/events/presence/<event>/<clientId>``."""
    return f"$aws/events/presence/{event}/{client_id}"


def _dump(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def connected_event(
    *,
    client_id: str,
    timestamp_ms: int,
    session_identifier: str,
    principal_identifier: str,
    ip_address: str,
    version_number: int,
) -> bytes:
    """Payload of ``$aws/events/presence/connected/<clientId>``."""
    return _dump(
        {
            "clientId": client_id,
            "timestamp": timestamp_ms,
            "eventType": "connected",
            "sessionIdentifier": session_identifier,
            "principalIdentifier": principal_identifier,
            "ipAddress": ip_address,
            "versionNumber": version_number,
        }
    )


def disconnected_event(
    *,
    client_id: str,
    timestamp_ms: int,
    session_identifier: str,
    principal_identifier: str,
    reason: DisconnectReason,
    version_number: int,
) -> bytes:
    """Payload of ``$aws/events/presence/disconnected/<clientId>``."""
    return _dump(
        {
            "clientId": client_id,
            "timestamp": timestamp_ms,
            "eventType": "disconnected",
            "clientInitiatedDisconnect": reason is DisconnectReason.CLIENT_INITIATED_DISCONNECT,
            "sessionIdentifier": session_identifier,
            "principalIdentifier": principal_identifier,
            "disconnectReason": str(reason),
            "versionNumber": version_number,
        }
    )
