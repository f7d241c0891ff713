"""Pure JSON rules of the Device Shadow service: merge, metadata, delta and limits.

Everything here works on plain JSON values (``dict``/``list``/``str``/``int``/``float``/
``bool``/``None`` as produced by :func:`json.loads`) and never mutates its inputs.

Stored-state invariants maintained by :func:`merge_section` (and relied on by the tests):

* no ``null`` member anywhere in a stored object;
* no empty object as the value of an object member (empty objects are pruned
  recursively, see :func:`clean_value`); array elements are never removed;
* the metadata tree mirrors the state tree: object -> object with the same keys,
  array -> array of per-element metadata, any other value -> ``{"timestamp": T}``.
"""

import json
import math
from collections.abc import Mapping
from typing import Any, Final

JsonObject = dict[str, Any]
"""A JSON object as produced by :func:`json.loads`."""

MAX_NESTING_DEPTH: Final = 6
"""Maximum container depth of a ``desired``/``reported`` section (spec §2.9).

[U] The service's error text says "maximum is 6" while the quota page says 8. The
reconciled reading used here: the section object itself is level 1, so
``desired.a.b.c.d.e.f = 1`` (6 nested objects) is accepted and one more object level is
rejected. Arrays count as a level like objects do (uncertain as well). The counting rule
lives only in :func:`nesting_depth`.
"""

MAX_STATE_BYTES: Final = 8192
"""Maximum size of the merged state (spec §2.9); see :func:`state_size`."""


def json_equal(left: Any, right: Any) -> bool:
    """Compare two JSON values with JSON semantics.

    Numbers compare numerically (``1 == 1.0``) but booleans are not numbers
    (``true != 1``), objects compare key-wise and arrays element-wise.

    Args:
        left: A JSON value.
        right: A JSON value.

    Returns:
        True when both values denote the same JSON value.
    """
    if isinstance(left, dict):
        return (
            isinstance(right, dict)
            and left.keys() == right.keys()
            and all(json_equal(value, right[key]) for key, value in left.items())
        )
    if isinstance(left, list):
        return (
            isinstance(right, list)
            and len(left) == len(right)
            and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
        )
    if isinstance(right, (dict, list)):
        return False
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return bool(left == right)


def clean_value(value: Any) -> Any:
    """Return ``value`` with null members removed and empty objects pruned, recursively.

    [U] Whether the service prunes objects emptied by null-deletion is undocumented
    (spec §2.4); this emulator prunes every object member whose value is (or becomes) an
    empty object, which is closest to "null deletes a field" and keeps deltas free of
    empty objects. Array elements are kept as they are (only their null *members* go),
    so array lengths never change. A top-level empty object stays an empty object.

    Args:
        value: A JSON value.

    Returns:
        The cleaned copy.
    """
    if isinstance(value, dict):
        result: JsonObject = {}
        for key, member in value.items():
            if member is None:
                continue
            cleaned = clean_value(member)
            if isinstance(cleaned, dict) and not cleaned:
                continue
            result[key] = cleaned
        return result
    if isinstance(value, list):
        return [clean_value(element) for element in value]
    return value


def metadata_for(value: Any, timestamp: int) -> Any:
    """Build the metadata tree of ``value`` with every leaf stamped ``timestamp``.

    Objects map to objects with the same keys, arrays to arrays of per-element metadata
    and every other value (``null`` included) to ``{"timestamp": timestamp}``.

    Args:
        value: A JSON value.
        timestamp: Epoch seconds.

    Returns:
        The metadata tree.
    """
    if isinstance(value, dict):
        return {key: metadata_for(member, timestamp) for key, member in value.items()}
    if isinstance(value, list):
        return [metadata_for(element, timestamp) for element in value]
    return {"timestamp": timestamp}


def _merge_into(
    state: JsonObject, metadata: JsonObject, patch: Mapping[str, Any], now: int
) -> None:
    """Merge ``patch`` into the (already copied) ``state``/``metadata`` pair in place."""
    for key, value in patch.items():
        current = state.get(key)
        if value is None:
            state.pop(key, None)
            metadata.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            sub_metadata = metadata.get(key)
            if not isinstance(sub_metadata, dict):
                sub_metadata = metadata_for(current, now)
            _merge_into(current, sub_metadata, value, now)
            if current:
                metadata[key] = sub_metadata
            else:
                state.pop(key)
                metadata.pop(key, None)
        else:
            cleaned = clean_value(value)
            if isinstance(cleaned, dict) and not cleaned:
                state.pop(key, None)
                metadata.pop(key, None)
            else:
                state[key] = cleaned
                metadata[key] = metadata_for(cleaned, now)


def copy_json(value: Any) -> Any:
    """Deep-copy a JSON value (faster than :func:`copy.deepcopy` for plain JSON)."""
    if isinstance(value, dict):
        return {key: copy_json(member) for key, member in value.items()}
    if isinstance(value, list):
        return [copy_json(element) for element in value]
    return value


def merge_section(
    stored: Mapping[str, Any],
    stored_metadata: Mapping[str, Any],
    patch: Mapping[str, Any],
    now: int,
) -> tuple[JsonObject, JsonObject]:
    """Merge one ``desired``/``reported`` patch into a stored section and its metadata.

    Implements spec §2.4 (nulls delete, objects merge recursively, arrays and scalars
    replace wholesale) and §2.5 (only written leaves get ``now``; untouched leaves keep
    their timestamps; deleted leaves lose their metadata), then prunes empty objects
    (:func:`clean_value`).

    Args:
        stored: The stored section (``{}`` when absent).
        stored_metadata: The stored metadata of that section.
        patch: The request's section object.
        now: Epoch seconds of the update.

    Returns:
        ``(new_section, new_metadata)``; both are ``{}`` when the section became empty.
    """
    state: JsonObject = copy_json(dict(stored))
    metadata: JsonObject = copy_json(dict(stored_metadata))
    _merge_into(state, metadata, patch, now)
    return state, metadata


def merge(stored: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> JsonObject:
    """Merge a shadow section patch into a stored section (spec §2.4), without metadata.

    ``null`` deletes a key (no error when absent), objects merge recursively, everything
    else (arrays, scalars, type changes) replaces the stored value with the patch value
    minus its null members. Empty objects are pruned (see :func:`clean_value`).

    Args:
        stored: The stored object (``None`` means empty).
        patch: The patch object.

    Returns:
        A new merged object; the inputs are not modified.
    """
    state, _ = merge_section(stored or {}, {}, patch, 0)
    return state


def compute_delta(
    desired: Mapping[str, Any] | None, reported: Mapping[str, Any] | None
) -> JsonObject:
    """Compute the shadow delta: what ``desired`` asks for that ``reported`` lacks (spec §2.6).

    Recursive for objects only; arrays and scalars compare as whole values with
    :func:`json_equal`; a type mismatch yields the whole desired value; keys only in
    ``reported`` never appear; the result never contains empty objects.

    Args:
        desired: The desired section (``None``/empty means no delta).
        reported: The reported section (``None`` means absent).

    Returns:
        The delta object, ``{}`` when there is no difference.
    """
    result: JsonObject = {}
    if not desired:
        return result
    reported = reported or {}
    for key, wanted in desired.items():
        if isinstance(wanted, dict):
            actual = reported.get(key)
            sub = compute_delta(wanted, actual if isinstance(actual, dict) else None)
            if sub:
                result[key] = sub
        elif key not in reported or not json_equal(wanted, reported[key]):
            result[key] = copy_json(wanted)
    return result


def project_metadata(delta: Mapping[str, Any], metadata: Mapping[str, Any]) -> JsonObject:
    """Return the part of ``metadata`` that covers exactly the leaves of ``delta``.

    Used for the delta metadata: the desired metadata of the delta's leaves (spec §2.6).

    Args:
        delta: A delta object (a sub-tree of the desired section).
        metadata: The desired metadata.

    Returns:
        The projected metadata tree.
    """
    result: JsonObject = {}
    for key, value in delta.items():
        sub = metadata.get(key)
        if isinstance(value, dict) and isinstance(sub, dict):
            result[key] = project_metadata(value, sub)
        elif sub is not None:
            result[key] = copy_json(sub)
    return result


def nesting_depth(value: Any) -> int:
    """Return the container depth of ``value`` (iteratively, so any depth is safe).

    A scalar has depth 0, ``{}``/``[]`` depth 1, ``{"a": {"b": 1}}`` depth 2.
    See :data:`MAX_NESTING_DEPTH` for how the limit is applied.

    Args:
        value: A JSON value.

    Returns:
        The depth.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth + 1)
            stack.extend((member, depth + 1) for member in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth + 1)
            stack.extend((element, depth + 1) for element in node)
    return deepest


def array_contains_null(value: Any) -> bool:
    """Return True if any array inside ``value`` has a ``null`` element (spec §2.9).

    Nulls that are members of objects nested in arrays are not array elements and do
    not count (they are removed like any other null member).

    Args:
        value: A JSON value.

    Returns:
        Whether a null array element exists.
    """
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            if any(element is None for element in node):
                return True
            stack.extend(node)
    return False


def state_size(desired: Mapping[str, Any], reported: Mapping[str, Any]) -> int:
    """Return the size in bytes that counts against :data:`MAX_STATE_BYTES`.

    [U] The exact accounting is undocumented; this counts the UTF-8 length of the
    merged ``{"desired":…,"reported":…}`` object (empty sections omitted) serialized
    compactly, metadata excluded.

    Args:
        desired: The merged desired section.
        reported: The merged reported section.

    Returns:
        The size in bytes.
    """
    state: JsonObject = {}
    if desired:
        state["desired"] = desired
    if reported:
        state["reported"] = reported
    text = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _finite_float(text: str) -> float:
    """Parse a JSON number into a float, refusing values that overflow to infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _reject_constant(name: str) -> Any:
    """Refuse the non-JSON constants ``NaN``/``Infinity`` that :mod:`json` accepts."""
    raise ValueError(f"invalid JSON constant: {name}")


def parse_json(payload: bytes | str) -> Any:
    """Parse a strict JSON document.

    Args:
        payload: UTF-8 bytes or text.

    Returns:
        The parsed value.

    Raises:
        UnicodeDecodeError: ``payload`` is not valid UTF-8.
        ValueError: ``payload`` is not valid JSON (including ``NaN``, ``Infinity``,
            numbers that overflow a float, and nesting deep enough to exhaust the
            recursion limit).
    """
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply to parse") from exc
