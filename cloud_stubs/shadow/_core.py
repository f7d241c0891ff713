"""Sans-I/O Device Shadow engine: request validation, versions and response messages.

The engine is a set of pure functions over an immutable :class:`ShadowDocument`. An I/O
shell (MQTT + persistence) drives it like this::

    outcome = handle_request(doc, topic.operation, payload,
                             thing_name=topic.thing_name,
                             shadow_name=topic.shadow_name, now=int(time.time()))
    if outcome.changed:
        store(outcome.document.to_json())
    for suffix, body in outcome.messages:
        publish(topic.response_topic(suffix), json.dumps(body))

Nothing here reads the clock, does I/O or raises on bad input: every request yields
exactly one accepted or rejected message (plus ``update/delta`` and
``update/documents`` after an accepted update). Section numbers refer to
``docs/iot_core_protocol.md``.
"""

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from cloud_stubs.shadow._merge import (
    MAX_NESTING_DEPTH,
    MAX_STATE_BYTES,
    JsonObject,
    array_contains_null,
    compute_delta,
    copy_json,
    merge_section,
    metadata_for,
    nesting_depth,
    parse_json,
    project_metadata,
    state_size,
)
from cloud_stubs.shadow._topics import ShadowOperation

MAX_CLIENT_TOKEN_BYTES: Final = 64
"""Maximum UTF-8 length of ``clientToken`` (spec §2.9)."""

DELETED_VERSION_RETENTION_SECONDS: Final = 48 * 3600
"""How long a deleted shadow's version counter is remembered (spec §2.7).

A shadow re-created within this time continues the counter (delete reported N, the
next update gets N+2); after it, the first update gets version 1 again.
"""

VERSION_CHECKED_ON_CREATE: Final = False
"""Whether ``version`` is compared when an update creates the shadow.

[U] Undocumented (spec §2.7/§8). Chosen: ignored when the shadow does not exist, because
there is no "latest version" to match; the type check (``Invalid version``) still applies.
"""

STRICT_GET_DELETE_PAYLOAD: Final = False
"""Whether get/delete reject payloads that are not JSON objects.

[U] The docs say the delete payload is ignored except ``clientToken`` and get takes an
empty payload (spec §2.1). Chosen: lenient. Any payload is accepted; a string
``clientToken`` in a JSON object payload is echoed, anything else is ignored. With
``True`` the update rules for ``Invalid JSON``/``Invalid clientToken`` would apply.
"""

ARRAY_NULL_MESSAGE: Final = "Arrays may not contain null values"
"""[U] Message of the 400 for an array containing ``null`` (text undocumented, spec §2.3)."""

CODES_WITHOUT_TIMESTAMP: Final = frozenset({404, 409})
"""Error codes whose body carries no ``timestamp`` (observed 404, documented 409 example).

[U] Whether every 400 carries a timestamp is not certain; here all other codes do.
"""

_SECTIONS: Final = ("desired", "reported")


@dataclass(frozen=True, slots=True)
class ShadowDocument:
    """Stored state of one shadow (classic or named); immutable, JSON-serializable.

    Attributes:
        exists: False before the first update and after a delete.
        version: When ``exists``: the document version. Otherwise the last version
            number consumed: 0 for a never-created shadow, N+1 after deleting version N
            (the delete consumes one version, spec §2.7).
        desired: Desired section; ``{}`` means absent.
        reported: Reported section; ``{}`` means absent.
        desired_metadata: Per-leaf ``{"timestamp": T}`` tree mirroring ``desired``.
        reported_metadata: Per-leaf ``{"timestamp": T}`` tree mirroring ``reported``.
        deleted_at: Epoch seconds of the last delete, ``None`` if never deleted.
    """

    exists: bool = False
    version: int = 0
    desired: JsonObject = field(default_factory=dict)
    reported: JsonObject = field(default_factory=dict)
    desired_metadata: JsonObject = field(default_factory=dict)
    reported_metadata: JsonObject = field(default_factory=dict)
    deleted_at: int | None = None

    def state(self) -> JsonObject:
        """Return ``{"desired"?, "reported"?}`` (empty sections omitted), as a copy."""
        result: JsonObject = {}
        if self.desired:
            result["desired"] = copy_json(self.desired)
        if self.reported:
            result["reported"] = copy_json(self.reported)
        return result

    def metadata(self) -> JsonObject:
        """Return the full metadata ``{"desired"?, "reported"?}``, as a copy."""
        result: JsonObject = {}
        if self.desired:
            result["desired"] = copy_json(self.desired_metadata)
        if self.reported:
            result["reported"] = copy_json(self.reported_metadata)
        return result

    def delta(self) -> JsonObject:
        """Return the current delta (``{}`` when none)."""
        return compute_delta(self.desired, self.reported)

    def snapshot(self) -> JsonObject:
        """Return the ``update/documents`` snapshot: state, metadata and version."""
        return {"state": self.state(), "metadata": self.metadata(), "version": self.version}

    def to_json(self) -> str:
        """Serialize for persistence; inverse of :meth:`from_json`."""
        return json.dumps(
            {
                "exists": self.exists,
                "version": self.version,
                "desired": self.desired,
                "reported": self.reported,
                "metadata": {"desired": self.desired_metadata, "reported": self.reported_metadata},
                "deletedAt": self.deleted_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "ShadowDocument":
        """Load a document written by :meth:`to_json`.

        Args:
            text: The serialized document.

        Returns:
            The document.

        Raises:
            ValueError: ``text`` is not a serialized document.
        """
        data = json.loads(text)
        try:
            metadata = data["metadata"]
            doc = cls(
                exists=data["exists"],
                version=data["version"],
                desired=data["desired"],
                reported=data["reported"],
                desired_metadata=metadata["desired"],
                reported_metadata=metadata["reported"],
                deleted_at=data["deletedAt"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a serialized shadow document: {exc!r}") from exc
        if not isinstance(doc.exists, bool) or type(doc.version) is not int:
            raise ValueError("not a serialized shadow document: bad exists/version")
        return doc


class ShadowMessage(NamedTuple):
    """One message to publish.

    Attributes:
        topic_suffix: Relative to the shadow prefix, e.g. ``"update/accepted"``; build the
            full topic with :meth:`ShadowRequestTopic.response_topic` or
            :func:`shadow_topic`.
        payload: The JSON body (the caller owns it; it shares nothing with the document).
    """

    topic_suffix: str
    payload: JsonObject


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """Result of one request.

    Attributes:
        document: The document after the request (the input one, or an empty
            document when the input was ``None``, if nothing changed).
        messages: What to publish, in order: ``<op>/accepted`` or ``<op>/rejected``;
            for an accepted update then ``update/delta`` (when the delta is non-empty)
            and ``update/documents``.
        accepted: Whether the request was accepted.
        changed: Whether ``document`` differs from the input and must be persisted.
    """

    document: ShadowDocument
    messages: tuple[ShadowMessage, ...]
    accepted: bool
    changed: bool


class _RejectedError(Exception):
    """Internal control flow: a validation step failed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error_body(code: int, message: str, now: int, token: str | None) -> JsonObject:
    body: JsonObject = {"code": code, "message": message}
    if code not in CODES_WITHOUT_TIMESTAMP:
        body["timestamp"] = now
    if token is not None:
        body["clientToken"] = token
    return body


def _with_token(body: JsonObject, token: str | None) -> JsonObject:
    if token is not None:
        body["clientToken"] = token
    return body


def _echo_token(request: Any) -> str | None:
    """Return the token to echo: the request's ``clientToken`` if it is a string."""
    if isinstance(request, dict):
        token = request.get("clientToken")
        if isinstance(token, str):
            return token
    return None


def _decode(payload: bytes, *, empty_as_object: bool) -> Any:
    """Parse a request payload; raise :class:`_RejectedError` for 415/400."""
    if empty_as_object and not payload.strip():
        return {}
    try:
        return parse_json(payload)
    except UnicodeDecodeError as exc:
        # [D] 415 exists for non-UTF-8 payloads (developer guide error list).
        raise _RejectedError(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from exc
    except ValueError as exc:
        raise _RejectedError(400, "Invalid JSON") from exc


def _check_token(request: JsonObject) -> None:
    if "clientToken" not in request:
        return
    token = request["clientToken"]
    if (
        not isinstance(token, str)
        or len(token.encode("utf-8", "surrogatepass")) > MAX_CLIENT_TOKEN_BYTES
    ):
        raise _RejectedError(400, "Invalid clientToken")


def _validate_update(request: Any, doc: ShadowDocument) -> JsonObject | None:
    """Apply the §2.3 checks that do not need the merge; return ``state`` (or None)."""
    if not isinstance(request, dict):
        raise _RejectedError(400, "Invalid JSON")
    _check_token(request)
    if "state" not in request:
        raise _RejectedError(400, "Missing required node: state")
    state = request["state"]
    if state is not None and not isinstance(state, dict):
        raise _RejectedError(400, "State node must be an object")
    if state is not None:
        for key in state:
            if key not in _SECTIONS:
                raise _RejectedError(400, f"State contains an invalid node: '{key}'")
        for section in _SECTIONS:
            value = state.get(section)
            if section in state and value is not None and not isinstance(value, dict):
                raise _RejectedError(400, f"{section.capitalize()} node must be an object")
        if any(nesting_depth(state.get(section)) > MAX_NESTING_DEPTH for section in _SECTIONS):
            raise _RejectedError(
                400, f"JSON contains too many levels of nesting; maximum is {MAX_NESTING_DEPTH}"
            )
    if "version" in request:
        version = request["version"]
        if type(version) is not int or version < 0:
            raise _RejectedError(400, "Invalid version")
        if (doc.exists or VERSION_CHECKED_ON_CREATE) and version != doc.version:
            raise _RejectedError(409, "Version conflict")
    if state is not None and any(array_contains_null(state.get(s)) for s in _SECTIONS):
        raise _RejectedError(400, ARRAY_NULL_MESSAGE)
    return state


def _next_version(doc: ShadowDocument, now: int) -> int:
    if doc.exists:
        return doc.version + 1
    if doc.deleted_at is not None and now - doc.deleted_at >= DELETED_VERSION_RETENTION_SECONDS:
        return 1
    return doc.version + 1


def _apply_state(doc: ShadowDocument, state: JsonObject | None, now: int) -> ShadowDocument:
    """Return the merged document (version/exists untouched)."""
    if state is None:
        return dataclasses.replace(
            doc, desired={}, reported={}, desired_metadata={}, reported_metadata={}
        )
    desired, desired_metadata = _apply_section(
        doc.desired, doc.desired_metadata, state, "desired", now
    )
    reported, reported_metadata = _apply_section(
        doc.reported, doc.reported_metadata, state, "reported", now
    )
    return dataclasses.replace(
        doc,
        desired=desired,
        reported=reported,
        desired_metadata=desired_metadata,
        reported_metadata=reported_metadata,
    )


def _apply_section(
    stored: JsonObject, stored_metadata: JsonObject, state: JsonObject, section: str, now: int
) -> tuple[JsonObject, JsonObject]:
    if section not in state:
        return stored, stored_metadata
    patch = state[section]
    if patch is None:
        return {}, {}
    return merge_section(stored, stored_metadata, patch, now)


def _merge_checked(doc: ShadowDocument, state: JsonObject | None, now: int) -> ShadowDocument:
    """Merge and apply the size limit on the merged result (spec §2.9)."""
    merged = _apply_state(doc, state, now)
    if state is not None and state_size(merged.desired, merged.reported) > MAX_STATE_BYTES:
        raise _RejectedError(413, "The payload exceeds the maximum size allowed")
    return merged


def _rejected(
    doc: ShadowDocument,
    operation: ShadowOperation,
    error: _RejectedError,
    now: int,
    token: str | None,
) -> ShadowOutcome:
    body = _error_body(error.code, error.message, now, token)
    return ShadowOutcome(
        doc, (ShadowMessage(f"{operation}/rejected", body),), accepted=False, changed=False
    )


def handle_update(
    doc: ShadowDocument | None,
    payload: bytes,
    *,
    thing_name: str,
    shadow_name: str | None,
    now: int,
) -> ShadowOutcome:
    """Handle a publish on ``…/shadow[/name/N]/update`` (spec §2.2-§2.9).

    Args:
        doc: The stored document, ``None`` if the shadow was never stored.
        payload: The raw MQTT payload.
        thing_name: Thing name from the topic (unused by the rules; kept for symmetry).
        shadow_name: Shadow name from the topic, ``None`` for the classic shadow.
        now: Epoch seconds.

    Returns:
        The outcome: ``update/accepted`` [+ ``update/delta``] + ``update/documents``,
        or a single ``update/rejected``.
    """
    del thing_name, shadow_name
    current = doc if doc is not None else ShadowDocument()
    token: str | None = None
    try:
        request = _decode(payload, empty_as_object=True)
        token = _echo_token(request)
        state = _validate_update(request, current)
        merged = _merge_checked(current, state, now)
    except _RejectedError as error:
        return _rejected(current, ShadowOperation.UPDATE, error, now, token)

    version = _next_version(current, now)
    new_doc = dataclasses.replace(merged, exists=True, version=version, deleted_at=None)
    accepted: JsonObject = {
        "state": copy_json(state),
        "metadata": metadata_for(state, now),
        "version": version,
        "timestamp": now,
    }
    messages = [ShadowMessage("update/accepted", _with_token(accepted, token))]
    delta = new_doc.delta()
    if delta:
        # [U] Published after every accepted update leaving a non-empty delta, even one
        # that touched no delta key (GG behaviour, spec §2.6); always the whole delta.
        delta_body: JsonObject = {
            "version": version,
            "timestamp": now,
            "state": delta,
            "metadata": project_metadata(delta, new_doc.desired_metadata),
        }
        messages.append(ShadowMessage("update/delta", _with_token(delta_body, token)))
    documents: JsonObject = {
        "previous": current.snapshot() if current.exists else None,
        "current": new_doc.snapshot(),
        "timestamp": now,
    }
    messages.append(ShadowMessage("update/documents", _with_token(documents, token)))
    return ShadowOutcome(new_doc, tuple(messages), accepted=True, changed=True)


def _read_only_token(payload: bytes) -> str | None:
    """Token handling for get/delete; raises only when :data:`STRICT_GET_DELETE_PAYLOAD`."""
    if not STRICT_GET_DELETE_PAYLOAD:
        try:
            return _echo_token(parse_json(payload)) if payload.strip() else None
        except ValueError:
            return None
    request = _decode(payload, empty_as_object=True)
    if not isinstance(request, dict):
        raise _RejectedError(400, "Invalid JSON")
    _check_token(request)
    return _echo_token(request)


def _not_found(thing_name: str, shadow_name: str | None) -> _RejectedError:
    name = thing_name if shadow_name is None else shadow_name
    return _RejectedError(404, f"No shadow exists with name: '{name}'")


def handle_get(
    doc: ShadowDocument | None,
    payload: bytes,
    *,
    thing_name: str,
    shadow_name: str | None,
    now: int,
) -> ShadowOutcome:
    """Handle a publish on ``…/get``: full state + delta (when non-empty) + metadata.

    Args:
        doc: The stored document, ``None`` if the shadow was never stored.
        payload: The raw MQTT payload (only ``clientToken`` matters).
        thing_name: Thing name (used in the 404 text of the classic shadow).
        shadow_name: Shadow name (used in the 404 text), ``None`` for classic.
        now: Epoch seconds.

    Returns:
        ``get/accepted`` or ``get/rejected`` (404 when missing); never changes the doc.
    """
    current = doc if doc is not None else ShadowDocument()
    token: str | None = None
    try:
        token = _read_only_token(payload)
        if not current.exists:
            raise _not_found(thing_name, shadow_name)
    except _RejectedError as error:
        return _rejected(current, ShadowOperation.GET, error, now, token)
    state = current.state()
    delta = current.delta()
    if delta:
        state["delta"] = delta
    body: JsonObject = {
        "state": state,
        "metadata": current.metadata(),
        "version": current.version,
        "timestamp": now,
    }
    return ShadowOutcome(
        current,
        (ShadowMessage("get/accepted", _with_token(body, token)),),
        accepted=True,
        changed=False,
    )


def handle_delete(
    doc: ShadowDocument | None,
    payload: bytes,
    *,
    thing_name: str,
    shadow_name: str | None,
    now: int,
) -> ShadowOutcome:
    """Handle a publish on ``…/delete``: report version N, remember N+1 (spec §2.7).

    Args:
        doc: The stored document, ``None`` if the shadow was never stored.
        payload: The raw MQTT payload (only ``clientToken`` matters).
        thing_name: Thing name (used in the 404 text of the classic shadow).
        shadow_name: Shadow name (used in the 404 text), ``None`` for classic.
        now: Epoch seconds.

    Returns:
        ``delete/accepted`` ``{"version": N, "timestamp": T[, "clientToken"]}`` with a
        non-existent document whose ``version`` is N+1, or ``delete/rejected``.
    """
    current = doc if doc is not None else ShadowDocument()
    token: str | None = None
    try:
        token = _read_only_token(payload)
        if not current.exists:
            raise _not_found(thing_name, shadow_name)
    except _RejectedError as error:
        return _rejected(current, ShadowOperation.DELETE, error, now, token)
    deleted = ShadowDocument(exists=False, version=current.version + 1, deleted_at=now)
    body: JsonObject = {"version": current.version, "timestamp": now}
    return ShadowOutcome(
        deleted,
        (ShadowMessage("delete/accepted", _with_token(body, token)),),
        accepted=True,
        changed=True,
    )


def handle_request(
    doc: ShadowDocument | None,
    operation: ShadowOperation,
    payload: bytes,
    *,
    thing_name: str,
    shadow_name: str | None,
    now: int,
) -> ShadowOutcome:
    """Dispatch to :func:`handle_get`, :func:`handle_update` or :func:`handle_delete`.

    Args:
        doc: The stored document, ``None`` if the shadow was never stored.
        operation: The request operation (from :func:`parse_shadow_topic`).
        payload: The raw MQTT payload.
        thing_name: Thing name from the topic.
        shadow_name: Shadow name from the topic, ``None`` for classic.
        now: Epoch seconds.

    Returns:
        The handler's outcome.
    """
    handler = {
        ShadowOperation.GET: handle_get,
        ShadowOperation.UPDATE: handle_update,
        ShadowOperation.DELETE: handle_delete,
    }[operation]
    return handler(doc, payload, thing_name=thing_name, shadow_name=shadow_name, now=now)


def document_from_state(state: Mapping[str, Any], *, version: int, now: int) -> ShadowDocument:
    """Build an existing document from a ``{"desired"?, "reported"?}`` state (test/seed helper).

    Args:
        state: The state; nulls and empty objects are removed.
        version: The document version.
        now: Timestamp for every leaf.

    Returns:
        The document.
    """
    desired, desired_metadata = merge_section({}, {}, state.get("desired") or {}, now)
    reported, reported_metadata = merge_section({}, {}, state.get("reported") or {}, now)
    return ShadowDocument(
        exists=True,
        version=version,
        desired=desired,
        reported=reported,
        desired_metadata=desired_metadata,
        reported_metadata=reported_metadata,
    )
