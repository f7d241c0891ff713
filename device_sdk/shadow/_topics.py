"""Device Shadow topic builders (protocol spec §2.1), in one place.

``shadow_topics("robot-1").update_delta`` replaces format strings spread across modules.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["ShadowTopics", "shadow_topics"]

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_SHADOW_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,64}")


@dataclasses.dataclass(frozen=True, slots=True)
class ShadowTopics:
    """The topics of one classic (``shadow_name=None``) or named shadow.

    Attributes:
        thing_name: 1-128 characters of ``[a-zA-Z0-9:_-]``.
        shadow_name: 1-64 characters of ``[a-zA-Z0-9:_-]``, or ``None`` (classic shadow).
    """

    thing_name: str
    shadow_name: str | None = None

    def __post_init__(self) -> None:
        if _THING_NAME.fullmatch(self.thing_name) is None:
            raise ValueError(f"invalid thing name {self.thing_name!r}")
        if self.shadow_name is not None and _SHADOW_NAME.fullmatch(self.shadow_name) is None:
            raise ValueError(
                f"invalid shadow name {self.shadow_name!r}: 1-64 characters of [a-zA-Z0-9:_-]"
            )

    @property
    def prefix(self) -> str:
        """``$aws/things/T/shadow`` or ``$aws/things/T/shadow/name/N``."""
        base = f"$aws/things/{self.thing_name}/shadow"
        return base if self.shadow_name is None else f"{base}/name/{self.shadow_name}"

    @property
    def get(self) -> str:
        """GetThingShadow request topic."""
        return f"{self.prefix}/get"

    @property
    def update(self) -> str:
        """UpdateThingShadow request topic."""
        return f"{self.prefix}/update"

    @property
    def delete(self) -> str:
        """DeleteThingShadow request topic."""
        return f"{self.prefix}/delete"

    @property
    def update_delta(self) -> str:
        """Where the service publishes ``desired - reported`` after an update."""
        return f"{self.prefix}/update/delta"

    @property
    def update_documents(self) -> str:
        """Where the service publishes previous/current snapshots after an update."""
        return f"{self.prefix}/update/documents"

    @property
    def label(self) -> str:
        """``T`` or ``T/N``, for log lines."""
        if self.shadow_name is None:
            return self.thing_name
        return f"{self.thing_name}/{self.shadow_name}"


def shadow_topics(thing_name: str, shadow_name: str | None = None) -> ShadowTopics:
    """The topics of ``thing_name``'s classic shadow, or of its named shadow ``shadow_name``.

    Raises:
        ValueError: A name breaks IoT Core's naming rules.
    """
    return ShadowTopics(thing_name, shadow_name)
