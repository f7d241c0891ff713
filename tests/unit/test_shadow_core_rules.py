"""Shadow merge, metadata, delta, versions and payload shapes (spec §2.4-§2.8)."""

import json
from typing import Any

import pytest

from cloud_stubs.shadow import (
    DELETED_VERSION_RETENTION_SECONDS,
    ShadowDocument,
    ShadowOperation,
    ShadowOutcome,
    compute_delta,
    document_from_state,
    handle_delete,
    handle_get,
    handle_request,
    handle_update,
    json_equal,
    merge,
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


# --------------------------------------------------------------------------- §2.4 merge


def test_null_deletes_key_and_missing_key_is_fine() -> None:
    doc = existing({"desired": {"a": 1, "b": 2}})
    outcome = update(doc, {"state": {"desired": {"a": None, "zzz": None}}})
    assert outcome.document.desired == {"b": 2}


def test_section_null_deletes_section() -> None:
    doc = existing({"desired": {"a": 1}, "reported": {"b": 2}})
    outcome = update(doc, {"state": {"desired": None}})
    assert outcome.document.state() == {"reported": {"b": 2}}
    assert msg(outcome, "update/accepted")["metadata"] == {"desired": {"timestamp": NOW}}
    assert msg(outcome, "update/accepted")["state"] == {"desired": None}


def test_state_null_clears_everything_but_shadow_exists() -> None:
    doc = existing({"desired": {"a": 1}, "reported": {"b": 2}}, version=3)
    outcome = update(doc, {"state": None, "clientToken": "t"})
    accepted = msg(outcome, "update/accepted")
    assert accepted == {
        "state": None,
        "metadata": {"timestamp": NOW},
        "version": 4,
        "timestamp": NOW,
        "clientToken": "t",
    }
    assert outcome.document.exists
    assert outcome.document.state() == {}
    assert only(get(outcome.document))["state"] == {}
    assert msg(update(outcome.document, {"state": {}}), "update/accepted")["version"] == 5


def test_empty_state_is_an_accepted_noop_update() -> None:
    doc = existing({"desired": {"a": 1}, "reported": {"a": 1}}, version=7)
    outcome = update(doc, {"state": {}})
    assert topics(outcome) == ["update/accepted", "update/documents"]
    assert msg(outcome, "update/accepted") == {
        "state": {},
        "metadata": {},
        "version": 8,
        "timestamp": NOW,
    }
    assert outcome.document.state() == doc.state()
    assert outcome.document.metadata() == doc.metadata()


def test_arrays_and_type_changes_replace_wholesale() -> None:
    doc = existing({"desired": {"list": [1, 2, 3], "obj": {"x": 1}, "n": 1}})
    outcome = update(doc, {"state": {"desired": {"list": [4], "obj": 5, "n": {"y": None, "z": 1}}}})
    assert outcome.document.desired == {"list": [4], "obj": 5, "n": {"z": 1}}


def test_objects_merge_recursively() -> None:
    doc = existing({"reported": {"a": {"x": 1, "y": {"p": 1}}}})
    outcome = update(doc, {"state": {"reported": {"a": {"y": {"q": 2}, "z": 3}}}})
    assert outcome.document.reported == {"a": {"x": 1, "y": {"p": 1, "q": 2}, "z": 3}}


def test_emptied_section_and_intermediate_objects_are_pruned() -> None:
    doc = existing({"desired": {"a": {"x": 1}}, "reported": {"r": 1}})
    outcome = update(doc, {"state": {"desired": {"a": {"x": None}}}})
    assert outcome.document.state() == {"reported": {"r": 1}}
    assert outcome.document.metadata() == {"reported": {"r": {"timestamp": NOW - 100}}}
    assert "desired" not in only(get(outcome.document))["state"]


def test_explicit_empty_object_value_is_not_stored() -> None:
    outcome = update(None, {"state": {"desired": {"a": {}, "b": {"c": {}}, "d": 1}}})
    assert outcome.document.desired == {"d": 1}


def test_merge_function() -> None:
    stored = {"a": {"x": 1, "y": 2}, "b": [1], "c": 1}
    patch = {"a": {"x": None}, "b": None, "c": {"d": None}, "e": "new"}
    assert merge(stored, patch) == {"a": {"y": 2}, "e": "new"}
    assert stored == {"a": {"x": 1, "y": 2}, "b": [1], "c": 1}
    assert merge(None, {"a": None}) == {}


# --------------------------------------------------------------------------- §2.5 metadata


def test_per_leaf_timestamps_survive_unrelated_updates() -> None:
    doc = update(None, {"state": {"reported": {"a": 1, "b": {"c": 2}}}}, now=NOW).document
    doc = update(doc, {"state": {"reported": {"b": {"d": 3}}}}, now=NOW + 5).document
    doc = update(doc, {"state": {"desired": {"a": 1}}}, now=NOW + 9).document
    assert only(get(doc, now=NOW + 20))["metadata"] == {
        "desired": {"a": {"timestamp": NOW + 9}},
        "reported": {
            "a": {"timestamp": NOW},
            "b": {"c": {"timestamp": NOW}, "d": {"timestamp": NOW + 5}},
        },
    }


def test_array_metadata_is_a_list_of_element_metadata() -> None:
    outcome = update(None, {"state": {"reported": {"arr": [1, {"x": "y"}, [2]]}}})
    assert outcome.document.reported_metadata == {
        "arr": [{"timestamp": NOW}, {"x": {"timestamp": NOW}}, [{"timestamp": NOW}]]
    }


def test_accepted_metadata_covers_only_request_leaves_including_nulls() -> None:
    doc = existing({"desired": {"keep": 1, "old": 2}})
    outcome = update(doc, {"state": {"desired": {"color": "RED", "old": None}}, "clientToken": "c"})
    assert msg(outcome, "update/accepted") == {
        "state": {"desired": {"color": "RED", "old": None}},
        "metadata": {"desired": {"color": {"timestamp": NOW}, "old": {"timestamp": NOW}}},
        "version": 2,
        "timestamp": NOW,
        "clientToken": "c",
    }


# --------------------------------------------------------------------------- §2.6 delta


def test_delta_documented_nested_example() -> None:
    desired = {"lights": {"color": {"r": 255, "g": 255, "b": 255}}, "only_desired": 1}
    reported = {"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "only_reported": 2}
    assert compute_delta(desired, reported) == {
        "lights": {"color": {"g": 255}},
        "only_desired": 1,
    }


@pytest.mark.parametrize(
    ("desired", "reported", "delta"),
    [
        ({}, {"a": 1}, {}),
        (None, None, {}),
        ({"a": 1}, None, {"a": 1}),
        ({"a": 1}, {"a": 1.0}, {}),
        ({"a": True}, {"a": 1}, {"a": True}),
        ({"a": 1}, {"a": True}, {"a": 1}),
        ({"a": False}, {"a": 0}, {"a": False}),
        ({"a": [1, 2]}, {"a": [1, 2]}, {}),
        ({"a": [1, 2]}, {"a": [2, 1]}, {"a": [1, 2]}),
        ({"a": [True]}, {"a": [1]}, {"a": [True]}),
        ({"a": {"x": 1}}, {"a": 5}, {"a": {"x": 1}}),
        ({"a": 5}, {"a": {"x": 1}}, {"a": 5}),
        ({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}}, {}),
        ({"a": "1"}, {"a": 1}, {"a": "1"}),
        ({"a": {"x": {}}}, {}, {}),
    ],
)
def test_compute_delta(desired, reported, delta) -> None:
    assert compute_delta(desired, reported) == delta


def test_json_equal_bool_is_not_number() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal([1], {"0": 1})


def test_delta_published_after_reported_only_update_creating_difference() -> None:
    doc = existing({"desired": {"a": 1}, "reported": {"a": 1}})
    outcome = update(doc, {"state": {"reported": {"a": 2}}, "clientToken": "c"})
    assert topics(outcome) == ["update/accepted", "update/delta", "update/documents"]
    delta = msg(outcome, "update/delta")
    assert delta["state"] == {"a": 1}
    assert delta["metadata"] == {"a": {"timestamp": NOW - 100}}
    assert delta["clientToken"] == "c"


def test_delta_carries_whole_delta_even_for_unrelated_update() -> None:
    doc = existing({"desired": {"a": 1, "b": 2}})
    outcome = update(doc, {"state": {"reported": {"unrelated": True}}})
    assert msg(outcome, "update/delta")["state"] == {"a": 1, "b": 2}


def test_no_delta_when_desired_key_removed_by_null() -> None:
    doc = existing({"desired": {"a": 1}, "reported": {"a": 2}})
    outcome = update(doc, {"state": {"desired": {"a": None}}})
    assert "update/delta" not in topics(outcome)


def test_delta_metadata_is_desired_metadata_of_delta_leaves() -> None:
    doc = update(None, {"state": {"desired": {"a": {"x": 1, "y": 2}, "b": [1]}}}, now=NOW).document
    doc = update(doc, {"state": {"desired": {"a": {"y": 3}}}}, now=NOW + 1).document
    outcome = update(doc, {"state": {"reported": {"a": {"x": 1}}}}, now=NOW + 2)
    assert msg(outcome, "update/delta") == {
        "version": 3,
        "timestamp": NOW + 2,
        "state": {"a": {"y": 3}, "b": [1]},
        "metadata": {"a": {"y": {"timestamp": NOW + 1}}, "b": [{"timestamp": NOW}]},
    }


def test_nested_equal_objects_produce_no_empty_delta_objects() -> None:
    doc = existing({"desired": {"a": {"x": 1}}, "reported": {"a": {"x": 1, "y": 2}}})
    assert "delta" not in only(get(doc))["state"]


# --------------------------------------------------------------------------- §2.7 versions


def test_version_must_equal_current() -> None:
    doc = existing({"reported": {"a": 1}}, version=10)
    assert msg(update(doc, {"state": {}, "version": 10}), "update/accepted")["version"] == 11
    assert only(update(doc, {"state": {}, "version": 9})) == {
        "code": 409,
        "message": "Version conflict",
    }


def test_version_ignored_when_creating() -> None:
    outcome = update(None, {"state": {"reported": {"a": 1}}, "version": 42})
    assert msg(outcome, "update/accepted")["version"] == 1


def test_delete_consumes_one_version() -> None:
    doc = existing({"reported": {"a": 1}}, version=8)
    outcome = delete(doc, now=NOW)
    assert only(outcome) == {"version": 8, "timestamp": NOW}
    assert not outcome.document.exists
    assert outcome.document.version == 9
    assert outcome.document.state() == {}
    recreated = update(outcome.document, {"state": {"reported": {"b": 1}}}, now=NOW + 10)
    assert msg(recreated, "update/accepted")["version"] == 10
    assert msg(recreated, "update/documents")["previous"] is None
    assert recreated.document.state() == {"reported": {"b": 1}}


def test_version_restarts_after_retention() -> None:
    deleted = delete(existing({"reported": {"a": 1}}, version=8), now=NOW).document
    later = NOW + DELETED_VERSION_RETENTION_SECONDS
    assert msg(update(deleted, {"state": {}}, now=later), "update/accepted")["version"] == 1
    assert msg(update(deleted, {"state": {}}, now=later - 1), "update/accepted")["version"] == 10


def test_get_and_rejections_do_not_change_version() -> None:
    doc = existing({"reported": {"a": 1}}, version=5)
    assert get(doc).document is doc
    assert not get(doc).changed
    assert update(doc, b"garbage").document is doc


# --------------------------------------------------------------------------- §2.8 shapes


def test_get_accepted_shape() -> None:
    doc = update(None, {"state": {"reported": {"color": "GREEN"}}}, now=NOW).document
    doc = update(doc, {"state": {"desired": {"color": "RED", "on": True}}}, now=NOW + 10).document
    outcome = get(doc, {"clientToken": "tok"}, now=NOW + 20)
    assert topics(outcome) == ["get/accepted"]
    assert only(outcome) == {
        "state": {
            "desired": {"color": "RED", "on": True},
            "reported": {"color": "GREEN"},
            "delta": {"color": "RED", "on": True},
        },
        "metadata": {
            "desired": {"color": {"timestamp": NOW + 10}, "on": {"timestamp": NOW + 10}},
            "reported": {"color": {"timestamp": NOW}},
        },
        "version": 2,
        "timestamp": NOW + 20,
        "clientToken": "tok",
    }


def test_documents_shape() -> None:
    doc = update(None, {"state": {"reported": {"a": 1}}}, now=NOW).document
    outcome = update(doc, {"state": {"desired": {"a": 2}}, "clientToken": "c"}, now=NOW + 1)
    assert msg(outcome, "update/documents") == {
        "previous": {
            "state": {"reported": {"a": 1}},
            "metadata": {"reported": {"a": {"timestamp": NOW}}},
            "version": 1,
        },
        "current": {
            "state": {"desired": {"a": 2}, "reported": {"a": 1}},
            "metadata": {
                "desired": {"a": {"timestamp": NOW + 1}},
                "reported": {"a": {"timestamp": NOW}},
            },
            "version": 2,
        },
        "timestamp": NOW + 1,
        "clientToken": "c",
    }


def test_client_token_echoed_on_404s_and_delete() -> None:
    assert only(get(None, {"clientToken": "g"})) == {
        "code": 404,
        "message": "No shadow exists with name: 'T'",
        "clientToken": "g",
    }
    assert only(delete(None, {"clientToken": "d"}))["clientToken"] == "d"
    doc = existing({"reported": {"a": 1}})
    assert only(delete(doc, {"clientToken": "d2"})) == {
        "version": 1,
        "timestamp": NOW,
        "clientToken": "d2",
    }


def test_get_and_delete_payload_is_lenient() -> None:
    doc = existing({"reported": {"a": 1}})
    for payload in (b"", b"garbage", b"\xff", b"[1]", b'{"clientToken": 5}', b"   "):
        outcome = get(doc, payload)
        assert topics(outcome) == ["get/accepted"]
        assert "clientToken" not in only(outcome)
    assert topics(delete(doc, b"\x00\x01")) == ["delete/accepted"]


def test_named_shadow_404_uses_shadow_name() -> None:
    outcome = get(None, shadow_name="cfg")
    assert only(outcome)["message"] == "No shadow exists with name: 'cfg'"
    outcome = delete(None, shadow_name="cfg")
    assert only(outcome)["message"] == "No shadow exists with name: 'cfg'"


def test_handle_request_dispatch() -> None:
    outcome = handle_request(
        None,
        ShadowOperation.UPDATE,
        b'{"state":{"desired":{"a":1}}}',
        thing_name="T",
        shadow_name="n",
        now=NOW,
    )
    assert outcome.accepted
    outcome = handle_request(
        outcome.document, ShadowOperation.GET, b"", thing_name="T", shadow_name="n", now=NOW
    )
    assert topics(outcome) == ["get/accepted"]
    outcome = handle_request(
        outcome.document, ShadowOperation.DELETE, b"", thing_name="T", shadow_name="n", now=NOW
    )
    assert topics(outcome) == ["delete/accepted"]


def test_messages_share_nothing_with_document() -> None:
    outcome = update(None, {"state": {"desired": {"a": {"b": 1}}}})
    for message in outcome.messages:
        message.payload.clear()
    current = only(get(outcome.document))
    assert current["state"]["desired"] == {"a": {"b": 1}}


# --------------------------------------------------------------------------- persistence


def test_document_json_round_trip() -> None:
    doc = update(None, {"state": {"desired": {"a": [1, {"b": 2}]}, "reported": {"c": 1}}}).document
    deleted = delete(doc, now=NOW + 1).document
    for value in (doc, deleted, ShadowDocument()):
        assert ShadowDocument.from_json(value.to_json()) == value


@pytest.mark.parametrize("text", ["{}", '{"exists": 1}', "[]"])
def test_document_from_json_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a serialized shadow document"):
        ShadowDocument.from_json(text)
