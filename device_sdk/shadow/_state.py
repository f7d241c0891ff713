"""Sans-I/O core of :class:`~device_sdk.shadow.ShadowSync`: the device's local shadow copy.

Pure code, no awaits: merge rules for patches, how a ``get`` answer, a delta event and an
accepted update change the local copy, and its JSON form. The server-only rules (version
assignment, delta computation) stay in ``cloud_stubs``; the device takes versions and deltas
from the service.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from device_sdk.shadow._model import ShadowDelta, ShadowDocument

__all__ = ["FORMAT", "LocalShadow", "combine_patches", "merge_state"]

FORMAT = 1
"""Version of the persisted JSON layout."""


def merge_state(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with ``patch`` applied the way the shadow service merges a section (§2.4).

    ``None`` deletes a key, objects merge recursively (an object replaces a non-object),
    anything else (arrays included) replaces the stored value. Objects left empty are pruned,
    so the result never holds ``None`` or ``{}``.
    """
    out = copy.deepcopy(dict(stored))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            current = out.get(key)
            merged = merge_state(current if isinstance(current, Mapping) else {}, value)
            if merged:
                out[key] = merged
            else:
                out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def combine_patches(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any] | None:
    """One patch with the effect of applying ``first`` then ``second``, or ``None``.

    ``None`` when no single patch has that effect: ``first`` deletes a key or sets it to a
    non-object, and ``second`` then sets it to an object (one patch cannot say "replace
    with this object"; the service would merge it into an object it stores).
    """
    out = copy.deepcopy(dict(first))
    for key, value in second.items():
        if isinstance(value, Mapping) and key in out:
            before = out[key]
            if not isinstance(before, Mapping):
                return None
            merged = combine_patches(before, value)
            if merged is None:
                return None
            out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclasses.dataclass
class LocalShadow:
    """The device's copy of its shadow.

    Attributes:
        desired: Last known desired section.
        reported: Reported section as the device knows it (pending patches applied).
        version: Last known document version (0: unknown, or the shadow does not exist).
        pending: Reported patches not yet accepted by the service, oldest first (combined into
            one whenever a single patch has the same effect, which is nearly always).
        error_reported: Whether an error field is currently reported (so it gets cleared).
    """

    desired: dict[str, Any] = dataclasses.field(default_factory=dict)
    reported: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: int = 0
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error_reported: bool = False

    def apply_document(self, doc: ShadowDocument | None) -> dict[str, Any]:
        """Take the service's document (``None``: no shadow); return the delta to deliver.

        Pending reported patches stay pending and are re-applied on top. When the shadow does
        not exist, the device's whole reported state becomes pending, so it is recreated.
        """
        if doc is None:
            self.desired = {}
            self.version = 0
            if self.reported:
                self.restore_pending(self.reported)
            return {}
        self.desired = copy.deepcopy(doc.desired)
        reported = doc.reported
        for patch in self.pending:
            reported = merge_state(reported, patch)
        self.reported = reported
        self.version = doc.version
        return copy.deepcopy(doc.delta)

    def is_stale(self, event: ShadowDelta) -> bool:
        """Whether ``event`` describes a version the local copy already reflects."""
        return event.version <= self.version

    def follows(self, event: ShadowDelta) -> bool:
        """Whether ``event`` is the very next version (no unseen update in between)."""
        return self.version > 0 and event.version == self.version + 1

    def apply_delta(self, event: ShadowDelta) -> dict[str, Any]:
        """Take a fresh delta event (see :meth:`follows`); return the delta to deliver."""
        self.desired = merge_state(self.desired, event.state)
        self.version = event.version
        return copy.deepcopy(event.state)

    def add_pending(self, patch: Mapping[str, Any]) -> None:
        """The device changed its reported state: apply locally, remember to send it."""
        self.reported = merge_state(self.reported, patch)
        self._append(patch)

    def _append(self, patch: Mapping[str, Any]) -> None:
        combined = combine_patches(self.pending[-1], patch) if self.pending else None
        if combined is None:
            self.pending.append(copy.deepcopy(dict(patch)))
        else:
            self.pending[-1] = combined

    def take_pending(self) -> dict[str, Any]:
        """Detach the oldest pending patch for sending (see :meth:`restore_pending`)."""
        return self.pending.pop(0) if self.pending else {}

    def restore_pending(self, sent: Mapping[str, Any]) -> None:
        """Sending ``sent`` failed: put it back before anything added meanwhile."""
        rest, self.pending = self.pending, [copy.deepcopy(dict(sent))]
        for patch in rest:
            self._append(patch)

    def to_json(self, *, thing_name: str, shadow_name: str | None) -> dict[str, Any]:
        """The persisted form."""
        return {
            "format": FORMAT,
            "thing_name": thing_name,
            "shadow_name": shadow_name,
            "desired": self.desired,
            "reported": self.reported,
            "version": self.version,
            "pending": self.pending,
            "error_reported": self.error_reported,
        }

    @classmethod
    def from_json(cls, data: Any, *, thing_name: str, shadow_name: str | None) -> LocalShadow:
        """Parse the persisted form.

        Raises:
            ValueError: Not this layout, or the copy of another shadow.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a local shadow copy (format 1)")
        if data.get("thing_name") != thing_name or data.get("shadow_name") != shadow_name:
            raise ValueError(
                f"local copy belongs to {data.get('thing_name')!r}/{data.get('shadow_name')!r}"
            )
        sections = (data.get("desired"), data.get("reported"))
        pending = data.get("pending")
        version = data.get("version")
        if (
            not all(isinstance(s, dict) for s in sections)
            or not isinstance(pending, list)
            or not all(isinstance(p, dict) for p in pending)
            or not isinstance(version, int)
        ):
            raise ValueError("local shadow copy has malformed fields")
        return cls(
            desired=data["desired"],
            reported=data["reported"],
            version=version,
            pending=data["pending"],
            error_reported=bool(data.get("error_reported", False)),
        )
