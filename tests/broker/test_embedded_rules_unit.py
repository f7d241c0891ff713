"""Pure IoT broker rules used by the embedded broker (no network)."""

from __future__ import annotations

import json

import pytest

from cloud_stubs.broker._embedded_iot import (
    DisconnectReason,
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
