"""AWS IoT Core client-side limits (protocol spec §5.3, §5.4, §5.7), checked before sending.

IoT Core silently discards or rejects what breaks these limits (and may close the connection),
so the SDK checks them locally and raises :class:`~device_sdk.LimitExceededError` with the
offending value instead. The publish rate is the exception: the token bucket *waits* rather
than drops, because IoT Core would discard the excess.
"""

from __future__ import annotations

import asyncio
import dataclasses

from device_sdk._clock import Clock, SystemClock
from device_sdk._exceptions import LimitExceededError

__all__ = [
    "IOT_CORE_LIMITS",
    "Limits",
    "TokenBucket",
    "counted_topic",
    "validate_payload",
    "validate_publish_topic",
    "validate_topic_filter",
]

_RULES_PREFIX = "$aws/rules/"
_EPSILON = 1e-9  # float dust must not turn into sleeps shorter than the clock's resolution
_MIN_SLEEP_S = 1e-4
_SHARE_PREFIX = "$share/"


def counted_topic(topic: str) -> str:
    """The part of a topic or filter that IoT Core's size and level limits apply to.

    ``$aws/rules/<rule>/`` (Basic Ingest) and ``$share/<name>/`` (shared subscriptions) are
    not counted.
    """
    if topic.startswith(_RULES_PREFIX):
        parts = topic.split("/", 3)
        return parts[3] if len(parts) == 4 else ""  # noqa: PLR2004
    if topic.startswith(_SHARE_PREFIX):
        parts = topic.split("/", 2)
        return parts[2] if len(parts) == 3 else ""  # noqa: PLR2004
    return topic


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The limits enforced on the client side. Defaults are IoT Core's fixed quotas.

    Attributes:
        max_topic_bytes: UTF-8 bytes of a topic or filter (after the uncounted prefixes).
        max_topic_levels: Levels of a topic or filter, i.e. slashes + 1.
        max_payload_bytes: Payload bytes of one PUBLISH (128 KB).
        max_subscriptions: Distinct topic filters per connection.
        max_filters_per_subscribe: Topic filters in one SUBSCRIBE packet.
        publishes_per_second: Outbound PUBLISH rate; the excess waits.
        publish_burst: Token-bucket capacity (defaults to one second's worth).
    """

    max_topic_bytes: int = 256
    max_topic_levels: int = 8
    max_payload_bytes: int = 128 * 1024
    max_subscriptions: int = 50
    max_filters_per_subscribe: int = 8
    publishes_per_second: float = 100.0
    publish_burst: float | None = None

    def validate_publish_topic(self, topic: str) -> None:
        """Check a topic name used in PUBLISH.

        Raises:
            LimitExceededError: Empty, wildcard, too long or too many levels.
        """
        if not topic:
            raise LimitExceededError("publish topic must not be empty", limit="topic_empty")
        if "+" in topic or "#" in topic:
            raise LimitExceededError(
                f"publish topic {topic!r} contains a wildcard ('+' or '#')",
                limit="wildcard_in_topic",
                value=topic,
            )
        if "\x00" in topic:
            raise LimitExceededError(f"topic {topic!r} contains NUL", limit="topic_nul")
        self._check_size_and_levels(topic)

    def validate_topic_filter(self, topic_filter: str) -> None:
        """Check a SUBSCRIBE topic filter (wildcards allowed where MQTT allows them).

        Raises:
            LimitExceededError: Malformed wildcard, too long or too many levels.
        """
        if not topic_filter:
            raise LimitExceededError("topic filter must not be empty", limit="topic_empty")
        if "\x00" in topic_filter:
            raise LimitExceededError(f"filter {topic_filter!r} contains NUL", limit="topic_nul")
        body = counted_topic(topic_filter)
        if topic_filter.startswith(_SHARE_PREFIX):
            share = topic_filter.split("/", 2)[1]
            if not share or "+" in share or "#" in share or not body:
                raise LimitExceededError(
                    f"malformed shared subscription {topic_filter!r}",
                    limit="filter_syntax",
                    value=topic_filter,
                )
        levels = body.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise LimitExceededError(
                    f"filter {topic_filter!r}: '#' must be alone in the last level",
                    limit="filter_syntax",
                    value=topic_filter,
                )
            if "+" in level and level != "+":
                raise LimitExceededError(
                    f"filter {topic_filter!r}: '+' must be alone in its level",
                    limit="filter_syntax",
                    value=topic_filter,
                )
        self._check_size_and_levels(topic_filter)

    def validate_payload(self, payload: bytes) -> None:
        """Check the payload size.

        Raises:
            LimitExceededError: The payload is larger than ``max_payload_bytes``.
        """
        if len(payload) > self.max_payload_bytes:
            raise LimitExceededError(
                f"payload of {len(payload)} bytes exceeds the {self.max_payload_bytes}-byte limit",
                limit="payload_bytes",
                value=len(payload),
                maximum=self.max_payload_bytes,
            )

    def validate_subscription_count(self, count: int) -> None:
        """Check the number of distinct filters a connection would hold.

        Raises:
            LimitExceededError: More than ``max_subscriptions``.
        """
        if count > self.max_subscriptions:
            raise LimitExceededError(
                f"{count} subscriptions exceed the {self.max_subscriptions} per connection limit",
                limit="subscriptions",
                value=count,
                maximum=self.max_subscriptions,
            )

    def new_publish_bucket(self, clock: Clock | None = None) -> TokenBucket:
        """A token bucket enforcing ``publishes_per_second``."""
        return TokenBucket(self.publishes_per_second, self.publish_burst, clock=clock)

    def _check_size_and_levels(self, topic: str) -> None:
        body = counted_topic(topic)
        size = len(body.encode())
        if size > self.max_topic_bytes:
            raise LimitExceededError(
                f"topic {topic[:64]!r}... is {size} bytes, more than {self.max_topic_bytes}",
                limit="topic_bytes",
                value=size,
                maximum=self.max_topic_bytes,
            )
        levels = body.count("/") + 1
        # AWS's reserved topics are exempt (the Commands reply topics have 9 levels).
        reserved = topic.startswith("$aws/") and not topic.startswith("$aws/rules/")
        if levels > self.max_topic_levels and not reserved:
            raise LimitExceededError(
                f"topic {topic!r} has {levels} levels, more than {self.max_topic_levels}",
                limit="topic_levels",
                value=levels,
                maximum=self.max_topic_levels,
            )


IOT_CORE_LIMITS = Limits()


def validate_publish_topic(topic: str) -> None:
    """Check a publish topic against IoT Core's limits (see :meth:`Limits.validate_publish_topic`)."""  # noqa: E501
    IOT_CORE_LIMITS.validate_publish_topic(topic)


def validate_topic_filter(topic_filter: str) -> None:
    """Check a topic filter against IoT Core's limits (see :meth:`Limits.validate_topic_filter`)."""
    IOT_CORE_LIMITS.validate_topic_filter(topic_filter)


def validate_payload(payload: bytes) -> None:
    """Check a payload against IoT Core's 128 KB limit."""
    IOT_CORE_LIMITS.validate_payload(payload)


class TokenBucket:
    """A token bucket whose :meth:`acquire` waits for a token instead of failing.

    Waiters are served first come, first served.
    """

    def __init__(
        self, rate: float, capacity: float | None = None, *, clock: Clock | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._capacity = capacity if capacity is not None else max(rate, 1.0)
        self._clock = clock or SystemClock()
        self._tokens = self._capacity
        self._stamp = self._clock.now()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    def _refill(self) -> None:
        now = self._clock.now()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if available now (and nobody is waiting); never waits."""
        if self._lock.locked():
            return False
        self._refill()
        if self._tokens + _EPSILON >= tokens:
            self._tokens -= tokens
            return True
        return False

    async def acquire(self, tokens: float = 1.0) -> None:
        """Take ``tokens``, sleeping until the bucket has refilled enough."""
        if tokens > self._capacity:
            raise ValueError(f"cannot acquire {tokens} tokens from a bucket of {self._capacity}")
        if self.try_acquire(tokens):
            return
        async with self._lock:
            while True:
                self._refill()
                if self._tokens + _EPSILON >= tokens:
                    self._tokens -= tokens
                    return
                delay = max((tokens - self._tokens) / self._rate, _MIN_SLEEP_S)
                self.waited_s += delay
                await self._clock.sleep(delay)
