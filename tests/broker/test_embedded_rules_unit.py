"""Pure IoT broker rules used by the embedded broker (no network)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_stubs.broker._embedded_iot import (
    DisconnectReason,
    FilterTrie,
    clamp_keep_alive,
    connected_event,
    disconnected_event,
    filter_problem,
    has_lifecycle_events,
    keep_alive_deadline,
    topic_matches,
    topic_problem,
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),
        ("a/#", "a", False),  # IoT Core deviation from MQTT
        ("a/#", "a/", True),
        ("a/#", "a/b/c", True),
        ("a/+/#", "a/b", False),
        ("a/+/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$aws/things/T/shadow/get", False),
        ("+/things/T/shadow/get", "$aws/things/T/shadow/get", False),
        ("$aws/#", "$aws/things/T/shadow/get", True),
        ("$aws/things/+/shadow/get", "$aws/things/T/shadow/get", True),
        ("$aws/things/T/shadow/get/+", "$aws/things/T/shadow/get/accepted", True),
        ("$aws/things/T/shadow/get/+", "$aws/things/T/shadow/get", False),
        ("$aws/things/T/shadow/#", "$aws/things/T/shadow/name/n/update/delta", True),
        ("+", "$SYS", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "ok"),
    [
        ("a/#", True),
        ("#", True),
        ("+/+", True),
        ("a/#/b", False),
        ("a/b#", False),
        ("a/b+", False),
        ("", False),
        ("a/" * 7 + "a", True),
        ("a/" * 8 + "a", False),
        ("x" * 256, True),
        ("x" * 257, False),
        ("$aws/rules/rule/" + "a/" * 7 + "a", True),  # Basic Ingest prefix not counted
    ],
)
def test_filter_problem(topic_filter: str, ok: bool) -> None:
    assert (filter_problem(topic_filter) is None) is ok


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("a/b", True),
        ("a/+", False),
        ("a/#", False),
        ("", False),
        ("a\x00", False),
        ("é" * 128, True),
    ],
)
def test_topic_problem(topic: str, ok: bool) -> None:
    assert (topic_problem(topic) is None) is ok


@pytest.mark.parametrize(
    ("requested", "used"),
    [(0, 1200), (1, 30), (29, 30), (30, 30), (600, 600), (1200, 1200), (1201, 1200)],
)
def test_keep_alive_clamp(requested: int, used: int) -> None:
    assert clamp_keep_alive(requested) == used
    assert keep_alive_deadline(used) == int(used * 1.5)


def test_lifecycle_payloads() -> None:
    assert not has_lifecycle_events("a+b")
    assert not has_lifecycle_events("a#")
    assert has_lifecycle_events("T1")
    common = {
        "client_id": "T1",
        "timestamp_ms": 1_700_000_000_123,
        "session_identifier": "s",
        "principal_identifier": "p",
        "version_number": 3,
    }
    assert json.loads(connected_event(ip_address="10.0.0.1", **common)) == {  # type: ignore[arg-type]
        "clientId": "T1",
        "timestamp": 1_700_000_000_123,
        "eventType": "connected",
        "sessionIdentifier": "s",
        "principalIdentifier": "p",
        "ipAddress": "10.0.0.1",
        "versionNumber": 3,
    }
    gone = json.loads(disconnected_event(reason=DisconnectReason.CONNECTION_LOST, **common))  # type: ignore[arg-type]
    assert gone["eventType"] == "disconnected"
    assert gone["disconnectReason"] == "CONNECTION_LOST"
    assert gone["clientInitiatedDisconnect"] is False
    assert "ipAddress" not in gone


_LEVEL = st.sampled_from(["a", "b", "", "$aws", "$x"])
_TOPICS = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join)
_FILTERS = st.builds(
    lambda levels, last: "/".join([*levels, *last]),
    st.lists(st.one_of(_LEVEL, st.just("+")), max_size=3),
    st.sampled_from([[], ["#"], ["+"], ["a"]]),
).filter(lambda f: f != "" and filter_problem(f) is None)


@given(st.sets(_FILTERS, max_size=12), st.lists(_TOPICS, max_size=8), st.data())
def test_filter_trie_agrees_with_topic_matches(
    filters: set[str], topics: list[str], data: st.DataObject
) -> None:
    trie = FilterTrie()
    for f in filters:
        trie.add(f)
    removed = data.draw(st.sets(st.sampled_from(sorted(filters)))) if filters else set()
    for f in removed:
        trie.discard(f)
    kept = filters - removed
    assert len(trie) == len(kept)
    for topic in topics:
        assert sorted(trie.match(topic)) == sorted(f for f in kept if topic_matches(f, topic))
    for f in kept:
        trie.discard(f)
    assert len(trie) == 0
    assert trie._root.children == {}
