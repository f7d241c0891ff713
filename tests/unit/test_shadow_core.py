"""Shadow update validation table and worked sequence (spec §2.3, §2.12)."""

import json
from typing import Any

import pytest

from cloud_stubs.shadow import (
    ARRAY_NULL_MESSAGE,
    MAX_STATE_BYTES,
    ShadowDocument,
    ShadowOutcome,
    document_from_state,
    handle_delete,
    handle_get,
    handle_update,
)

NOW = 1_700_000_000


def _payload(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def update(doc, body, now=NOW, shadow_name=None) -> ShadowOutcome:
    return handle_update(doc, _payload(body), thing_name="T", shadow_name=shadow_name, now=now)


def get(doc, body=b"", now=NOW, shadow_name=None) -> ShadowOutcome:
    return handle_get(doc, _payload(body), thing_name="T", shadow_name=shadow_name, now=now)


def delete(doc, body=b"", now=NOW, shadow_name=None) -> ShadowOutcome:
    return handle_delete(doc, _payload(body), thing_name="T", shadow_name=shadow_name, now=now)


def topics(outcome: ShadowOutcome) -> list[str]:
    return [m.topic_suffix for m in outcome.messages]


def only(outcome: ShadowOutcome) -> dict[str, Any]:
    assert len(outcome.messages) == 1
    return outcome.messages[0].payload


def msg(outcome: ShadowOutcome, suffix: str) -> dict[str, Any]:
    found = [m.payload for m in outcome.messages if m.topic_suffix == suffix]
    assert len(found) == 1, topics(outcome)
    return found[0]


def existing(state: dict[str, Any], version: int = 1, now: int = NOW - 100) -> ShadowDocument:
    return document_from_state(state, version=version, now=now)


# --------------------------------------------------------------------------- §2.3 table


def nested(depth: int) -> dict[str, Any]:
    """A section whose container depth is ``depth`` (the section object is level 1)."""
    value: Any = 1
    for index in range(depth):
        value = {f"k{index}": value}
    return value  # type: ignore[no-any-return]


REJECTIONS = [
    # (id, stored doc, payload, code, message, token echoed)
    ("not-json", None, b"{not json", 400, "Invalid JSON", None),
    ("not-object", None, b"[1, 2]", 400, "Invalid JSON", None),
    ("nan", None, b'{"state": {"desired": {"a": NaN}}}', 400, "Invalid JSON", None),
    ("overflow", None, b'{"state": {"desired": {"a": 1e999}}}', 400, "Invalid JSON", None),
    (
        "non-utf8",
        None,
        b'{"state": {"desired": {"a": "\xff"}}}',
        415,
        "Unsupported documented encoding; supported encoding is UTF-8",
        None,
    ),
    ("token-type", None, {"clientToken": 5, "state": {}}, 400, "Invalid clientToken", None),
    (
        "token-too-long",
        None,
        {"clientToken": "x" * 65, "state": {}},
        400,
        "Invalid clientToken",
        "x" * 65,
    ),
    (
        "token-too-many-bytes",
        None,
        {"clientToken": "é" * 33, "state": {}},
        400,
        "Invalid clientToken",
        "é" * 33,
    ),
    ("state-missing", None, {"clientToken": "t"}, 400, "Missing required node: state", "t"),
    ("empty-payload", None, b"", 400, "Missing required node: state", None),
    ("state-number", None, {"state": 5}, 400, "State node must be an object", None),
    ("state-array", None, {"state": []}, 400, "State node must be an object", None),
    (
        "state-delta",
        None,
        {"state": {"delta": {"a": 1}}, "clientToken": "t"},
        400,
        "State contains an invalid node: 'delta'",
        "t",
    ),
    (
        "state-other",
        None,
        {"state": {"desired": {}, "x": 1}},
        400,
        "State contains an invalid node: 'x'",
        None,
    ),
    ("desired-type", None, {"state": {"desired": 5}}, 400, "Desired node must be an object", None),
    (
        "reported-type",
        None,
        {"state": {"reported": [1]}},
        400,
        "Reported node must be an object",
        None,
    ),
    (
        "too-deep",
        None,
        {"state": {"desired": nested(7)}},
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        None,
    ),
    (
        "too-deep-array",
        None,
        {"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": [1]}}}}}}}},
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        None,
    ),
    ("version-string", None, {"state": {}, "version": "1"}, 400, "Invalid version", None),
    ("version-negative", None, {"state": {}, "version": -1}, 400, "Invalid version", None),
    ("version-float", None, {"state": {}, "version": 1.5}, 400, "Invalid version", None),
    ("version-bool", None, {"state": {}, "version": True}, 400, "Invalid version", None),
    (
        "version-conflict",
        "stored-v10",
        {"state": {}, "version": 9, "clientToken": "t"},
        409,
        "Version conflict",
        "t",
    ),
    (
        "version-ahead",
        "stored-v10",
        {"state": {}, "version": 11},
        409,
        "Version conflict",
        None,
    ),
    ("array-null", None, {"state": {"desired": {"a": [1, None]}}}, 400, ARRAY_NULL_MESSAGE, None),
    (
        "nested-array-null",
        None,
        {"state": {"reported": {"a": {"b": [[None]]}}}},
        400,
        ARRAY_NULL_MESSAGE,
        None,
    ),
    (
        "too-large",
        None,
        {"state": {"desired": {"a": "x" * MAX_STATE_BYTES}}},
        413,
        "The payload exceeds the maximum size allowed",
        None,
    ),
    # Order of the checks (§2.3 "apply in this order").
    ("token-before-state", None, {"clientToken": 1}, 400, "Invalid clientToken", None),
    (
        "node-before-depth",
        None,
        {"state": {"desired": nested(9), "bad": 1}},
        400,
        "State contains an invalid node: 'bad'",
        None,
    ),
    (
        "depth-before-version",
        None,
        {"state": {"desired": nested(9)}, "version": "x"},
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        None,
    ),
    (
        "version-before-array",
        None,
        {"state": {"desired": {"a": [None]}}, "version": "x"},
        400,
        "Invalid version",
        None,
    ),
    (
        "conflict-before-array",
        "stored-v10",
        {"state": {"desired": {"a": [None]}}, "version": 3},
        409,
        "Version conflict",
        None,
    ),
    (
        "array-before-size",
        None,
        {"state": {"desired": {"a": [None], "b": "x" * MAX_STATE_BYTES}}},
        400,
        ARRAY_NULL_MESSAGE,
        None,
    ),
]


@pytest.mark.parametrize(
    ("stored", "body", "code", "message", "token"),
    [row[1:] for row in REJECTIONS],
    ids=[row[0] for row in REJECTIONS],
)
def test_update_validation_table(stored, body, code, message, token) -> None:
    doc = existing({"reported": {"x": 1}}, version=10) if stored else None
    outcome = update(doc, body)
    assert topics(outcome) == ["update/rejected"]
    assert not outcome.accepted
    assert not outcome.changed
    expected: dict[str, Any] = {"code": code, "message": message}
    if code not in {404, 409}:
        expected["timestamp"] = NOW
    if token is not None:
        expected["clientToken"] = token
    assert only(outcome) == expected
    if doc is not None:
        assert outcome.document is doc


def test_nesting_limit_boundary_is_accepted() -> None:
    outcome = update(None, {"state": {"desired": nested(6), "reported": {"a": [[1], {"b": 2}]}}})
    assert outcome.accepted


def test_token_of_64_bytes_is_accepted() -> None:
    outcome = update(None, {"state": {}, "clientToken": "x" * 64})
    assert outcome.accepted
    assert msg(outcome, "update/accepted")["clientToken"] == "x" * 64


def test_size_limit_counts_merged_state_not_request() -> None:
    doc = update(None, {"state": {"desired": {"a": "x" * (MAX_STATE_BYTES - 100)}}}).document
    outcome = update(doc, {"state": {"reported": {"b": "y" * 200}}})
    assert only(outcome)["code"] == 413
    assert outcome.document is doc
    # Shrinking the stored state with a large request is fine.
    outcome = update(doc, {"state": {"desired": {"a": None}, "reported": {"b": "y" * 1000}}})
    assert outcome.accepted


def test_size_limit_boundary() -> None:
    # {"desired":{"a":"…"}} is 20 bytes of overhead.
    fits = update(None, {"state": {"desired": {"a": "x" * (MAX_STATE_BYTES - 20)}}})
    assert fits.accepted
    too_big = update(None, {"state": {"desired": {"a": "x" * (MAX_STATE_BYTES - 19)}}})
    assert only(too_big)["code"] == 413


def test_unknown_top_level_fields_are_ignored() -> None:
    assert update(None, {"state": {"desired": {"a": 1}}, "foo": [None], "metadata": 5}).accepted


# --------------------------------------------------------------------------- §2.12


def test_worked_sequence() -> None:
    t = iter(range(NOW, NOW + 100))
    outcome = get(None, now=next(t))
    assert topics(outcome) == ["get/rejected"]
    assert only(outcome) == {"code": 404, "message": "No shadow exists with name: 'T'"}

    outcome = update(outcome.document, {"state": {"reported": {"foo": 1}}}, now=next(t))
    assert topics(outcome) == ["update/accepted", "update/documents"]
    assert msg(outcome, "update/accepted")["version"] == 1
    assert msg(outcome, "update/documents")["previous"] is None

    now = next(t)
    outcome = update(outcome.document, {"state": {"desired": {"foo": 2}}}, now=now)
    assert topics(outcome) == ["update/accepted", "update/delta", "update/documents"]
    assert msg(outcome, "update/accepted")["version"] == 2
    assert msg(outcome, "update/delta") == {
        "version": 2,
        "timestamp": now,
        "state": {"foo": 2},
        "metadata": {"foo": {"timestamp": now}},
    }

    outcome = update(outcome.document, {"state": {"reported": {"foo": 2}}}, now=next(t))
    assert topics(outcome) == ["update/accepted", "update/documents"]
    assert msg(outcome, "update/accepted")["version"] == 3

    outcome = update(outcome.document, {"state": {"desired": {"foo": None}}}, now=next(t))
    assert topics(outcome) == ["update/accepted", "update/documents"]
    assert msg(outcome, "update/accepted")["version"] == 4
    assert msg(outcome, "update/documents")["current"]["state"] == {"reported": {"foo": 2}}

    now = next(t)
    outcome = delete(outcome.document, now=now)
    assert topics(outcome) == ["delete/accepted"]
    assert only(outcome) == {"version": 4, "timestamp": now}
    outcome = get(outcome.document, now=next(t))
    assert only(outcome) == {"code": 404, "message": "No shadow exists with name: 'T'"}
