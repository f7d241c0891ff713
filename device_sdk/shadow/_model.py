"""Pydantic models of the Device Shadow wire payloads (protocol spec §2.8), parsed once.

Timestamps are timezone-aware UTC datetimes (the service sends epoch seconds). JSON ``null``
is meaningful in shadow updates (it deletes a key, or a whole section), so request bodies are
built from plain mappings where ``None`` is sent as ``null``; see
:meth:`ShadowClient.update <device_sdk.shadow.ShadowClient.update>`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel

__all__ = [
    "ShadowDeleteResult",
    "ShadowDelta",
    "ShadowDocument",
    "ShadowDocuments",
    "ShadowMetadata",
    "ShadowSnapshot",
    "ShadowState",
    "ShadowUpdateResult",
]


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class ShadowState(_Wire):
    """``state`` of a shadow document: each section is ``None`` when absent (or ``null``).

    Attributes:
        desired: What the application wants.
        reported: What the device reported.
        delta: ``desired - reported`` (only in ``get`` answers, when non-empty).
    """

    desired: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None


class ShadowMetadata(_Wire):
    """Per-leaf ``{"timestamp": epoch_s}`` trees mirroring ``desired`` and ``reported``."""

    desired: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None


class ShadowDocument(_Wire):
    """A whole shadow, as ``get`` returns it (``…/get/accepted``).

    Attributes:
        state: Desired, reported and delta sections.
        metadata: Per-leaf timestamps.
        version: Document version (increments on every accepted update).
        timestamp: When the service answered.
        client_token: The request's token.
    """

    state: ShadowState = pydantic.Field(default_factory=ShadowState)
    metadata: ShadowMetadata = pydantic.Field(default_factory=ShadowMetadata)
    version: int
    timestamp: datetime | None = None
    client_token: str | None = None

    @property
    def desired(self) -> dict[str, Any]:
        """``state.desired`` or ``{}``."""
        return self.state.desired or {}

    @property
    def reported(self) -> dict[str, Any]:
        """``state.reported`` or ``{}``."""
        return self.state.reported or {}

    @property
    def delta(self) -> dict[str, Any]:
        """``state.delta`` or ``{}``."""
        return self.state.delta or {}


class ShadowUpdateResult(_Wire):
    """An accepted update (``…/update/accepted``): the request's state echoed, new version.

    A section the request set to ``null`` is ``None`` here and listed in
    ``state.model_fields_set``.
    """

    state: ShadowState = pydantic.Field(default_factory=ShadowState)
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    version: int
    timestamp: datetime | None = None
    client_token: str | None = None


class ShadowDeleteResult(_Wire):
    """An accepted delete: the version of the deleted document."""

    version: int
    timestamp: datetime | None = None
    client_token: str | None = None


class ShadowDelta(_Wire):
    """An ``…/update/delta`` event: the complete current ``desired - reported``.

    Attributes:
        state: The delta itself (no ``desired`` wrapper).
        metadata: The desired metadata of the delta's leaves.
        version: The document version that has this delta.
        timestamp: When the service published it.
        client_token: Token of the update that caused it, if it had one.
    """

    state: dict[str, Any]
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    version: int
    timestamp: datetime | None = None
    client_token: str | None = None


class ShadowSnapshot(_Wire):
    """One side of an ``…/update/documents`` event."""

    state: ShadowState = pydantic.Field(default_factory=ShadowState)
    metadata: ShadowMetadata = pydantic.Field(default_factory=ShadowMetadata)
    version: int


class ShadowDocuments(_Wire):
    """An ``…/update/documents`` event: the document before and after an accepted update.

    Attributes:
        previous: ``None`` when the update created the shadow.
        current: The document after the update.
        timestamp: When the service published it.
        client_token: Token of the update, if it had one.
    """

    previous: ShadowSnapshot | None = None
    current: ShadowSnapshot
    timestamp: datetime | None = None
    client_token: str | None = None
